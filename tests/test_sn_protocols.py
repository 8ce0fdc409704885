"""The SN paper's protocols: Table 2's rows and batch-average inference, Table 5's fine-tuning setting,
PCA lighting, and the segmentation heads (auxiliary loss, norms that follow ``model.norm``)."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fixtures_datasets import rgb, write_jpeg
from torch import nn
from torchvision import tv_tensors

from ibnnet.config import compose, to_plain
from ibnnet.config.schema import AugmentConfig, DatasetSpec
from ibnnet.experiments.grid import load_experiment

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------- SN Table 2 rows
def _table2_cells(scale):
    """Every cell at `full`; at the other scales (whose overrides must not undo the rows' settings) one per row."""
    exp = load_experiment("sn_table2", scale)
    if scale == "full":
        return exp.configs()
    cells = [c for c in exp.cells if c.labels["setting"] in ("8x32", "8x1")]
    return [(c, exp.compose_cell(c)) for c in cells]


@pytest.mark.parametrize("scale", ["full", "ghost", "reduced"])
def test_sn_table2_gives_sn_tweaks_to_the_sn_row_only(scale):
    configs = _table2_cells(scale)
    assert len(configs) == 28 if scale == "full" else {c.labels["norm"] for c, _ in configs} == {
        "BN", "GN", "SN", "IN", "LN"}
    for cell, cfg in configs:
        norm, setting = cell.labels["norm"], cell.labels["setting"]
        assert cfg.data.augment.pca_lighting == 0.1, cell.name       # "the same as (He et al., 2016)", every row
        assert cfg.model.name == "resnet50_sn"
        if norm == "SN":
            # the official code of the released model: last_gamma, Dropout(0.5), batch average over 200 batches
            assert cfg.model.zero_init_last is True and cfg.model.drop_rate == 0.5, cell.name
            assert cfg.trainer.batch_average_batches == (0 if setting == "8x1" else 200), cell.name
            assert cfg.model.sn_using_bn is (setting != "8x1")
        else:
            # appendix C.1: "all γ's are initialized as 1", no dropout, no batch average
            assert cfg.model.zero_init_last is False and cfg.model.drop_rate == 0.0, cell.name
            assert cfg.trainer.batch_average_batches == 0, cell.name
            assert cfg.model.norm == norm.lower()


def test_sn_table2_bn_row_builds_a_network_without_sn_tweaks():
    from ibnnet.tasks.common import build_model
    exp = load_experiment("sn_table2", "full")
    cells = {c.name: c for c in exp.cells}
    small = ("model.name=resnet18_sn",)   # the rows' model flags on a smaller network of the same family
    bn = build_model(exp.compose_cell(cells["norm=BN_setting=8x32"], small).model, num_classes=10, with_weights=False)
    sn = build_model(exp.compose_cell(cells["norm=SN_setting=8x32"], small).model, num_classes=10, with_weights=False)
    assert bn.drop_rate == 0.0 and sn.drop_rate == 0.5
    bn_weights = [m.weight.detach() for m in bn.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn_weights and all(torch.equal(w, torch.ones_like(w)) for w in bn_weights)
    assert float(sn.layer1[0].bn2.weight.detach().abs().max()) == 0.0   # zero-initialised last gamma (SN row only)


# --------------------------------------------------------------------------------------- PCA lighting
def _augment(**kw):
    from omegaconf import OmegaConf
    a = OmegaConf.structured(AugmentConfig)
    for k, v in kw.items():
        a[k] = v
    return a


def test_pca_lighting_is_off_by_default_and_only_in_imagenet_training():
    from omegaconf import OmegaConf

    from ibnnet.data.transforms.pipeline import PCALighting, build_transform
    spec = OmegaConf.structured(DatasetSpec)
    assert AugmentConfig().pca_lighting == 0.0
    has = lambda t: any(isinstance(s, PCALighting) for s in t.transforms)  # noqa: E731
    assert not has(build_transform(spec, "imagenet", _augment(), train=True))
    assert has(build_transform(spec, "imagenet", _augment(pca_lighting=0.1), train=True))
    assert not has(build_transform(spec, "imagenet", _augment(pca_lighting=0.1), train=False))
    with pytest.raises(ValueError, match="pca_lighting"):
        PCALighting(-0.1)


def test_pca_lighting_adds_one_rgb_offset_along_the_eigenvectors_deterministically():
    from ibnnet.data.transforms.pipeline import PCALighting
    t = PCALighting(0.1)
    image = tv_tensors.Image(torch.rand(3, 9, 7))
    torch.manual_seed(3)
    out1 = t(image)
    torch.manual_seed(3)
    out2 = t(image)
    assert torch.equal(out1, out2)                                   # deterministic under a seed
    diff = (out1 - image).as_subclass(torch.Tensor)
    offset = diff[:, 0, 0]
    assert torch.allclose(diff, offset.view(3, 1, 1).expand_as(diff), atol=1e-6)   # one offset per image
    torch.manual_seed(3)
    alpha = torch.randn(3) * 0.1
    vec, val = torch.tensor(PCALighting.EIGVEC), torch.tensor(PCALighting.EIGVAL)
    assert torch.allclose(offset, vec @ (alpha * val), atol=1e-6)
    # coordinates in the eigenbasis are alpha_i * eigval_i (the eigenvectors are orthonormal)
    assert torch.allclose(vec.T @ offset, alpha * val, atol=1e-3)
    assert 0 < offset.abs().max() < 0.2
    # uint8 input: converted to [0, 1] first, then offset
    u8 = tv_tensors.Image(torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8))
    torch.manual_seed(3)
    out = t(u8).as_subclass(torch.Tensor)
    assert out.dtype == torch.float32
    assert torch.allclose(out, u8.as_subclass(torch.Tensor) / 255.0 + offset.view(3, 1, 1), atol=1e-6)


def test_pca_lighting_in_the_pipeline_shifts_each_normalised_channel_by_offset_over_std():
    from omegaconf import OmegaConf
    from timm.data import IMAGENET_DEFAULT_STD

    from ibnnet.data.transforms.pipeline import PCALighting, build_transform, normalize_batch
    spec = OmegaConf.structured(DatasetSpec)
    image = tv_tensors.Image(torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8))
    plain = build_transform(spec, "imagenet", _augment(image_size=16), train=True)
    lit = build_transform(spec, "imagenet", _augment(image_size=16, pca_lighting=0.1), train=True)
    torch.manual_seed(0)
    a = normalize_batch(plain(image).as_subclass(torch.Tensor)[None])[0]   # uint8: normalised on the device
    torch.manual_seed(0)
    b = lit(image).as_subclass(torch.Tensor)     # same crop and flip: lighting draws after them
    per_channel = (b - a).flatten(1)
    assert torch.allclose(per_channel, per_channel[:, :1].expand_as(per_channel), atol=1e-5)
    offset = per_channel[:, 0] * torch.tensor(IMAGENET_DEFAULT_STD)
    vec, val = torch.tensor(PCALighting.EIGVEC), torch.tensor(PCALighting.EIGVAL)
    alpha = (vec.T @ offset) / val
    assert offset.abs().max() > 0 and alpha.abs().max() < 0.6     # a plausible N(0, 0.1) draw


# --------------------------------------------------------------------------------------- batch average
WNIDS = ["n01440764", "n01443537"]


@pytest.fixture(scope="module")
def textured_imagenet(tmp_path_factory):
    """Class folders of noise JPEGs (40x32): a centre crop is distinguishable from a random one."""
    root = tmp_path_factory.mktemp("sn_data")
    for split, per_class in (("train", 6), ("val", 2)):
        for c, wnid in enumerate(WNIDS):
            for i in range(per_class):
                write_jpeg(root / "imagenet" / split / wnid / f"{wnid}_{i}.JPEG", rgb(32, 40, seed=100 * c + i))
    return root


def tiny_cls(root: Path, tmp: Path, *extra: str):
    return compose(REPO / "configs" / "imagenet.yaml", [
        f"paths.data={root}", f"paths.runs={tmp / 'runs'}", "model.name=resnet18_sn", "model.pretrained=false",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto", "trainer.max_epochs=1",
        "data.num_workers=0", "data.batch_size=4", "data.augment.image_size=24", "data.augment.eval_resize=28",
        "logger.wandb.enabled=false", "trainer.enable_progress_bar=false", *extra])


def test_batch_average_batches_are_unaugmented_training_images(textured_imagenet, tmp_path):
    from ibnnet.data.datamodule import DataModule
    from ibnnet.data.registry import DATASETS
    from ibnnet.data.transforms.pipeline import TransformedDataset, build_transform
    from ibnnet.runs.callbacks import statistics_loader
    cfg = tiny_cls(textured_imagenet, tmp_path, "data.augment.pca_lighting=0.1")
    dm = DataModule(cfg)
    spec = cfg.data.train
    evaluated = TransformedDataset(dm.raw_train_dataset(),
                                   build_transform(spec, DATASETS[spec.dataset].augment, cfg.data.augment, False))
    eval_images = torch.stack([evaluated[i][0] for i in range(len(evaluated))])
    batches = [x for x, *_ in statistics_loader(dm, seed=0)]
    assert len(batches) == 12 // 4 and all(x.shape == (4, 3, 24, 24) for x in batches)   # per-process batch size
    for x in torch.cat(batches):
        # exactly the evaluation transform (resize 28, centre crop 24; no flip, no lighting) of a training image
        assert any(torch.equal(x, e) for e in eval_images)
    again = [x for x, *_ in statistics_loader(dm, seed=0)]
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    other = [x for x, *_ in statistics_loader(dm, seed=1)]
    assert not all(torch.equal(a, b) for a, b in zip(batches, other))   # shuffled with the seed


def test_batch_average_estimate_is_reproducible_and_restores_moving_averages(textured_imagenet, tmp_path):
    from ibnnet.data.datamodule import DataModule
    from ibnnet.layers import SwitchNorm2d
    from ibnnet.runs.callbacks import BatchAverageStats
    from ibnnet.tasks.common import build_model
    cfg = tiny_cls(textured_imagenet, tmp_path)
    net = build_model(cfg.model, num_classes=2, with_weights=False)
    net.device = torch.device("cpu")
    trainer = SimpleNamespace(datamodule=DataModule(cfg), world_size=1, global_rank=0, sanity_checking=False)
    sn = [m for m in net.modules() if isinstance(m, SwitchNorm2d)]
    moving = [m.running_mean.clone() for m in sn]
    callback = BatchAverageStats(2)
    assert callback.estimate(trainer, net) == 2
    first = [m.running_mean.clone() for m in sn]
    assert callback.estimate(trainer, net) == 2
    assert all(torch.equal(a, m.running_mean) for a, m in zip(first, sn))
    assert not all(torch.equal(a, b) for a, b in zip(first, moving))
    # as a callback: estimated for the validation, the moving averages back afterwards
    for m, v in zip(sn, moving):
        m.running_mean.copy_(v)
    callback.active = True
    callback.on_validation_start(trainer, net)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(first, sn))
    callback.on_validation_end(trainer, net)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(moving, sn))


def test_metrics_json_has_both_inference_modes(textured_imagenet, tmp_path):
    from ibnnet.runs.runner import execute, prepare
    cfg = tiny_cls(textured_imagenet, tmp_path, "trainer.batch_average_batches=2", "trainer.limit_train_batches=2")
    folder = prepare(cfg)
    metrics = execute(folder.path)
    on_disk = json.loads(folder.metrics_path.read_text())
    assert on_disk["inference"] == metrics["inference"] == "batch_average"
    assert on_disk["batch_average"] == {"batches": 2, "batches_used": 2,
                                        "loader": "training images, evaluation transform"}
    assert set(on_disk["metrics"]) == set(on_disk["metrics_moving_average"]) == {"val"}
    for res in (on_disk["metrics"]["val"], on_disk["metrics_moving_average"]["val"]):
        assert 0 <= res["top1_err"] <= 100
    # the checkpoint keeps the moving averages (the batch-average estimate is put back after evaluating)
    ckpt = torch.load(folder.checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=True)
    sd = ckpt["state_dict"]
    key = next(k for k in sd if k.endswith("layer1.0.bn1.running_mean"))
    assert float(sd[key].abs().sum()) > 0


def test_runs_without_batch_average_report_moving_average_inference():
    from ibnnet.runs.callbacks import evaluate_both_inference_modes
    trainer = SimpleNamespace(callbacks=[])
    assert evaluate_both_inference_modes(trainer, SimpleNamespace(last_val={"val": {}}), None) == {
        "inference": "moving_average"}


def _shipped_cells():
    """(file, scale, cell, config) for every cell of every shipped experiment file at every scale."""
    from ibnnet.config import ConfigError
    for path in sorted((REPO / "experiments").glob("*.yaml")):
        try:
            exp = load_experiment(path)
        except ConfigError as e:
            assert "analysis file" in str(e), e   # ibn_fig5: a figure of trained models, no cells
            continue
        for scale in exp.scales or [None]:
            scaled = load_experiment(path, scale)
            for cell, cfg in scaled.configs():
                yield path.stem, scale, scaled, cell, cfg


def test_every_shipped_sn_cell_uses_batch_average_inference():
    # SN sec. 3 "Inference": "When applying SN in test, BN uses batch average after training without computing
    # moving average". A rule in the config layer, so that no file (present or future) can forget it.
    from ibnnet.config.emulation import effective_norm
    from ibnnet.experiments.grid import _matches
    sn_cells = set()
    for name, scale, exp, cell, cfg in _shipped_cells():
        if effective_norm(cfg.model) != "sn" or cfg.trainer.max_epochs == 0:
            assert cfg.trainer.batch_average_batches == 0, (name, scale, cell.name)
            continue
        sn_cells.add((name, cell.name))
        opted_out = [e["why"] for e in exp.moving_average_inference if _matches(cell.labels, e["match"])]
        if not cfg.model.sn_using_bn:        # SN (8,1): no BN branch, no statistics to estimate
            assert cfg.trainer.batch_average_batches == 0, (name, scale, cell.name)
        elif opted_out:
            assert all(why.strip() for why in opted_out)
        else:   # 200 (the official code's number) unless the file chooses another K
            assert cfg.trainer.batch_average_batches > 0, (name, scale, cell.name)
    # the rule reaches the SN cells outside sn_table2 too (the loop is not vacuous)
    for name, cell in (("sn_table5", "norm=SN"), ("sn_vs_ibn_dg", "model=SN"), ("dg_gta5_multitarget", "model=SN"),
                       ("sn_table2", "norm=SN_setting=8x2")):
        assert any(n == name and c.startswith(cell) for n, c in sn_cells), (name, cell)


def test_segmentation_sn_run_reports_batch_average_inference_by_default(tmp_path):
    # SN Table 5's and the DG files' SN cells: the same inference on a segmentation network (full training
    # images through the evaluation transform, the DeepLab head and auxiliary head in the forward)
    import helpers

    from ibnnet.runs.runner import execute, prepare
    body = helpers.SEG.replace("num_samples: 64", "num_samples: 8").replace("num_samples: 7", "num_samples: 2")
    cfg = compose(helpers.config(tmp_path, body), [
        "model.name=resnet18_sn", "segmentation.head=deeplabv2", "segmentation.aux_weight=0.4",
        "data.batch_size=4", "trainer.max_epochs=1", "logger.wandb.enabled=false"])
    assert cfg.trainer.batch_average_batches == 200
    folder = prepare(cfg)
    metrics = execute(folder.path)
    assert metrics is not None and folder.is_done(), folder.log_tail(30)
    on_disk = json.loads(folder.metrics_path.read_text())
    assert on_disk["inference"] == "batch_average"
    assert on_disk["batch_average"]["batches"] == 200 and on_disk["batch_average"]["batches_used"] == 8 // 4
    assert set(on_disk["metrics"]) == set(on_disk["metrics_moving_average"]) == {"synthetic", "real"}
    assert on_disk["metrics"] != on_disk["metrics_moving_average"]


def _sn_experiment(tmp_path, cell_set: str = "", extra: str = ""):
    import textwrap
    path = tmp_path / "sn_opt_out.yaml"
    path.write_text(textwrap.dedent(f"""
        experiment: sn_opt_out
        base: {REPO / "configs" / "demo.yaml"}
        grid:
          model:
            BN: {{model.name: resnet18_bn}}
            SN: {{model.name: resnet18_sn{cell_set}}}
        """) + textwrap.dedent(extra))
    return load_experiment(path)


def test_sn_cell_opts_out_of_batch_average_only_with_a_stated_reason(tmp_path):
    from ibnnet.config import ConfigError
    # by default: batch average for the SN cell, nothing for the BN cell
    cells = {c.name: cfg for c, cfg in _sn_experiment(tmp_path).configs()}
    assert cells["model=SN"].trainer.batch_average_batches == 200
    assert cells["model=BN"].trainer.batch_average_batches == 0
    # turned off without a reason: an error naming the cell and the way to state it
    off = ", trainer.batch_average_batches: 0"
    with pytest.raises(ConfigError, match=r"cell model=SN .* moving_average_inference"):
        _sn_experiment(tmp_path, off).configs()
    with pytest.raises(ConfigError, match="model=SN"):   # from the command line, too
        _sn_experiment(tmp_path).configs(("trainer.batch_average_batches=0",))
    # with a reason: allowed
    why = "moving_average_inference: [{match: {model: SN}, why: 'SN appendix A Fig. 5: the moving-average curve'}]\n"
    cells = {c.name: cfg for c, cfg in _sn_experiment(tmp_path, off, why).configs()}
    assert cells["model=SN"].trainer.batch_average_batches == 0
    # a reason must say something, and name cells that exist
    with pytest.raises(ConfigError, match="`why` must state the reason"):
        _sn_experiment(tmp_path, off, "moving_average_inference: [{match: {model: SN}, why: ' '}]\n")
    with pytest.raises(ConfigError, match="matches no cell"):
        _sn_experiment(tmp_path, off, "moving_average_inference: [{match: {model: GN}, why: x}]\n")
    with pytest.raises(ConfigError, match="must be"):
        _sn_experiment(tmp_path, off, "moving_average_inference: [{match: {model: SN}}]\n")
    # nothing to estimate: no BN branch, or no training (the weights are scored with the statistics they hold)
    for setting in (", model.sn_using_bn: false", ", trainer.max_epochs: 0, model.pretrained: true"):
        cells = {c.name: cfg for c, cfg in _sn_experiment(tmp_path, setting).configs()}
        assert cells["model=SN"].trainer.batch_average_batches == 0


def test_batch_average_default_keeps_the_ids_of_runs_without_sn(tmp_path):
    from ibnnet.runs.folder import hashed_content
    cells = {c.name: cfg for c, cfg in _sn_experiment(tmp_path).configs()}
    # the resolved number is hashed (0 for BN, as before the default existed; 200 changes SN's results)
    assert hashed_content(cells["model=BN"])["trainer"]["batch_average_batches"] == 0
    assert hashed_content(cells["model=SN"])["trainer"]["batch_average_batches"] == 200


# --------------------------------------------------------------------------------------- segmentation heads
def seg_task(norm: str, head: str = "fcn", aux_weight: float = 0.4):
    from ibnnet.tasks.segmentation import SegmentationTask
    cfg = compose(REPO / "configs" / "segmentation.yaml", [
        "model.name=resnet18_bn", "model.pretrained=false", f"model.norm={norm}", "model.gn_groups=8",
        f"segmentation.head={head}", f"segmentation.aux_weight={aux_weight}", "data.val=[]"])
    return SegmentationTask(to_plain(cfg), num_classes=5, val_names=[])


@pytest.mark.parametrize("head", ["fcn", "aspp", "deeplabv2"])
def test_heads_follow_model_norm(head):
    from ibnnet.layers import SwitchNorm2d
    task = seg_task("gn", head)
    for part in (task.net.head, task.net.aux_head):
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in part.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in task.net.aux_head.modules())
    if head != "deeplabv2":   # DeepLab-v2's ASPP has no norm layer at all
        assert any(isinstance(m, nn.GroupNorm) for m in task.net.head.modules())
    sn = seg_task("sn", head)
    assert any(isinstance(m, SwitchNorm2d) for m in sn.net.aux_head.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in sn.net.aux_head.modules())
    sync = seg_task("syncbn", head)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in sync.net.aux_head.modules())


def test_fcn_head_keeps_torchvision_state_dict_layout():
    from torchvision.models.segmentation.fcn import FCNHead
    task = seg_task("bn", "fcn", aux_weight=0.0)
    assert task.net.aux_head is None
    ref = FCNHead(task.net.backbone.num_features, 5).state_dict()
    ours = task.net.head.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}


def test_auxiliary_loss_is_main_plus_weight_times_aux_and_unused_in_evaluation():
    task = seg_task("gn", "deeplabv2", aux_weight=0.4)
    net = task.net
    assert net.aux_head[0].in_channels == 256 and net.aux_head[0].out_channels == 256   # resnet18 layer3 -> 256
    torch.manual_seed(0)
    x = torch.randn(2, 3, 40, 48)
    y = torch.randint(0, 5, (2, 40, 48))
    y[0, :4] = 255                                            # ignore label
    task.eval()                                               # dropout off: the two forwards agree
    main, aux = net.forward_with_aux(x)
    assert main.shape == aux.shape == (2, 5, 40, 48)
    ce = nn.CrossEntropyLoss(ignore_index=255)
    loss, parts = task.training_loss(x, y)   # the same forward_with_aux ops on the same NCHW input as above
    assert torch.allclose(loss, ce(main, y) + 0.4 * ce(aux, y))
    assert torch.allclose(parts["loss_aux"], ce(aux, y)) and not torch.allclose(loss, ce(main, y))
    # evaluation: the main head only
    assert torch.equal(task(x), main)
    assert torch.equal(task.predict_scores(x), main)
    # the aux head's parameters are optimised with the head's
    grouped = {id(p) for g in task.parameter_groups() for p in g["params"]}
    assert all(id(p) in grouped for p in net.aux_head.parameters())
    # without the auxiliary loss, plain cross-entropy
    plain = seg_task("gn", "deeplabv2", aux_weight=0.0).eval()
    loss0, parts0 = plain.training_loss(x, y)
    assert parts0 == {} and torch.allclose(loss0, ce(plain(x), y))


# --------------------------------------------------------------------------------------- SN Table 5
@pytest.mark.parametrize("scale", ["full", "ghost", "reduced"])
def test_sn_table5_is_appendix_e(scale):
    exp = load_experiment("sn_table5", scale)
    # the Cityscapes cells (the ADE20K ones, dataset=ADE20K: tests/test_ade20k.py)
    cells = {c.labels["norm"]: cfg for c, cfg in exp.configs() if "dataset" not in c.labels}
    assert set(cells) == {"SyncBN", "GN", "SN"}
    source = {"SyncBN": "norm=BN_setting=8x32", "GN": "norm=GN_setting=8x32", "SN": "norm=SN_setting=8x2"}
    for norm, cfg in cells.items():
        assert cfg.model.pretrained_file == f"run:sn_table2/{source[norm]}@{scale}"
        assert cfg.model.norm == {"SyncBN": "syncbn", "GN": "gn", "SN": "sn"}[norm]
        assert cfg.segmentation.head == "deeplabv2" and cfg.segmentation.output_stride == 8
        assert cfg.segmentation.aux_weight == 0.4
        assert cfg.optim.schedule == "poly" and cfg.optim.poly_power == 0.9
        assert cfg.trainer.devices * cfg.data.batch_size == 8                     # "the batchsize is 8"
        val = {v.name: v for v in cfg.data.val}
        assert list(val["single"].scales) == [1.0] and not val["single"].flip
        assert list(val["multi"].scales) == [1.0, 1.25, 1.5, 1.75] and not val["multi"].flip
        assert all(v.dataset == "cityscapes" and v.split == "val" for v in val.values())
        if scale == "reduced":
            assert cfg.trainer.max_epochs < 700
        else:   # `full` (and ghost) may not shorten the paper's schedule
            assert cfg.trainer.max_epochs == 700
            assert list(cfg.data.augment.crop_size) == [713, 713]
            assert cfg.trainer.devices == 8 and cfg.data.batch_size == 1           # 1 image per GPU
    assert all("val (paper: test)" in exp.table["eval_labels"][name] for name in ("single", "multi"))
