"""IBN tables' protocols (issue 8): Table 1's appearance transforms, the CycleGAN Monet set, styled folders'
labels, GTA5's split, final vs best metrics, the segmentation validation cadence."""
from __future__ import annotations

import fixtures_datasets as fx
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torchvision import tv_tensors

import ibnnet.models  # noqa: F401  (registers the IBN models with timm)
from ibnnet.config.schema import AugmentConfig, DatasetSpec
from ibnnet.data.transforms.appearance import ALL_APPEARANCES, apply_appearance_float
from ibnnet.data.transforms.pipeline import build_transform

# ---------------------------------------------------------------- IBN Table 1: appearance transforms


def _bright_image(size: int, seed: int = 0) -> tv_tensors.Image:
    """A smooth photo-like image with highlights near 255, so clipping at 255 matters."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 10, 10, generator=g)
    img = F.interpolate(base, size=(size + size // 8, size + size // 4), mode="bicubic", align_corners=False)[0]
    return tv_tensors.Image((img.clamp(0, 1) * 215 + 40).round().to(torch.uint8))


def _network_input(img, kind: str, size: int) -> torch.Tensor:
    spec = OmegaConf.structured(DatasetSpec(appearance=kind))
    aug = OmegaConf.structured(AugmentConfig(image_size=size, eval_resize=size + size // 8))
    x, _ = build_transform(spec, "imagenet", aug, train=False)(img, 0)
    # what the network sees: uint8 hand-overs are normalised on the device, float ones already are
    from ibnnet.data.transforms.pipeline import normalize_batch
    return normalize_batch(x.as_subclass(torch.Tensor)[None])[0]


def test_unclipped_appearance_is_an_exact_affine_map_of_the_network_input():
    img = _bright_image(64)
    x = _network_input(img, "none", 64)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    for kind, gain in (("std1.5", 1.5), ("rgb+50", 1.0), ("r+50", 1.0)):
        y = _network_input(img, kind, 64)
        # y = gain * x + c per channel, exactly (to float rounding): what the stem IN of IBN-b cancels
        c = (y - gain * x).flatten(1)
        assert (c.max(1).values - c.min(1).values).max() < 1e-5, kind
        if kind == "rgb+50":
            assert torch.allclose(c[:, 0], 50 / 255 / std.flatten(), atol=1e-5)
        if kind == "r+50":
            assert torch.allclose(c[:, 0], torch.tensor([50 / 255 / 0.229, 0.0, 0.0]), atol=1e-5)
    # std1.5's mean is that of the pixels the network sees: the channel means are unchanged
    assert torch.allclose(_network_input(img, "std1.5", 64).mean((1, 2)), x.mean((1, 2)), atol=1e-5)
    # the clipped variant saturates the highlights: not affine any more
    c = (_network_input(img, "std1.5_clip", 64) - 1.5 * x).flatten(1)
    assert (c.max(1).values - c.min(1).values).max() > 0.1
    assert set(ALL_APPEARANCES) == {"none", "rgb+50", "r+50", "std1.5", "rgb+50_clip", "r+50_clip", "std1.5_clip"}


def test_apply_appearance_float_values_and_errors():
    x = torch.tensor([[0.2, 0.4], [0.0, 1.0], [0.5, 0.5]]).reshape(3, 1, 2)
    out = apply_appearance_float(x, "std1.5", scale=1.0)
    assert torch.allclose(out.flatten(), torch.tensor([0.15, 0.45, -0.25, 1.25, 0.5, 0.5]))  # unclipped
    assert torch.allclose(apply_appearance_float(x * 255, "r+50"), x * 255 + torch.tensor([50.0, 0, 0]).view(3, 1, 1))
    batch = torch.stack([x, 2 * x])
    assert torch.allclose(apply_appearance_float(batch, "std1.5", 1.0)[1], apply_appearance_float(2 * x, "std1.5", 1.0))
    with pytest.raises(ValueError, match="not an unclipped appearance"):
        apply_appearance_float(x, "std1.5_clip")
    with pytest.raises(TypeError, match="float"):
        apply_appearance_float((x * 255).to(torch.uint8), "std1.5")


@torch.no_grad()
def test_ibn_b_is_invariant_to_std_x1_5_and_resnet50_is_not():
    """IBN Table 1: IBN-Net50-b under std x1.5 equals its origin numbers ("0.00/0.00")."""
    img = _bright_image(64, seed=3)
    inputs = {k: _network_input(img, k, 64)[None] for k in ("none", "std1.5", "std1.5_clip")}
    change = {}
    for name in ("resnet50_ibn_b", "resnet50_bn"):
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=10).eval()
        ref = model(inputs["none"])
        for kind in ("std1.5", "std1.5_clip"):
            change[name, kind] = float((model(inputs[kind]) - ref).norm() / ref.norm())
    print(change)
    # What is left for IBN-b comes from conv1's zero padding at the image border (64 px: 2 of 32 rows).
    assert change["resnet50_ibn_b", "std1.5"] < 0.08
    assert change["resnet50_bn", "std1.5"] > 5 * change["resnet50_ibn_b", "std1.5"]
    # the uint8 clipped variant breaks the invariance
    assert change["resnet50_ibn_b", "std1.5_clip"] > 1.5 * change["resnet50_ibn_b", "std1.5"]


# ---------------------------------------------------------------- styled folders: labels by folder name


def _styled_spec(root, classes_root=None):
    from ibnnet.config.schema import DataConfig
    spec = OmegaConf.structured(DatasetSpec(name="monet", dataset="image_folder", root=str(root), split="val",
                                            classes_root=None if classes_root is None else str(classes_root)))
    return spec, OmegaConf.structured(DataConfig())


def test_styled_folder_labels_follow_the_real_val_by_folder_name(tmp_path):
    from ibnnet.data.registry import build_dataset
    wnids = ["n01", "n02", "n03", "n04"]
    fx.write_imagenet(tmp_path / "real", "val", wnids, per_class=1)
    fx.write_imagenet(tmp_path / "styled", "val", ["n01", "n03", "n04"], per_class=2)  # n02 missing
    spec, data = _styled_spec(tmp_path / "styled", tmp_path / "real" / "val")
    ds = build_dataset(spec, tmp_path, data)
    labels = {p.split("/")[-2]: y for p, y in ds.samples}
    assert labels == {"n01": 0, "n03": 2, "n04": 3}  # not shifted by the missing n02
    assert ds.num_classes == 4 and len(ds) == 6
    # without the reference the old behaviour shows the bug: n03 would get label 1
    spec_no_ref, _ = _styled_spec(tmp_path / "styled")
    assert {p.split("/")[-2]: y for p, y in build_dataset(spec_no_ref, tmp_path, data).samples}["n03"] == 1

    fx.write_imagenet(tmp_path / "styled", "val", ["n99", "n98"], per_class=1)  # extra class folders
    with pytest.raises(ValueError, match=r"not in the reference .*real/val.*\['n98', 'n99'\]"):
        build_dataset(spec, tmp_path, data)


def test_evaluate_styled_maps_labels_to_the_real_val(tmp_path):
    """``ibnnet evaluate --styled DIR`` gives the styled set the first eval set's classes as reference."""
    from ibnnet.commands.evaluate import styled_eval_spec
    from ibnnet.config import compose
    cfg = compose("configs/imagenet.yaml", [f"paths.data={tmp_path}"])
    spec = styled_eval_spec(cfg, str(tmp_path / "styled"))
    assert spec["dataset"] == "image_folder" and spec["root"] == str(tmp_path / "styled")
    assert spec["classes_root"] == str(tmp_path / "imagenet" / "val")


# ---------------------------------------------------------------- GTA5 without its split


def test_gta5_without_split_stops_with_where_to_get_it(tmp_path):
    from ibnnet.config.schema import DataConfig
    from ibnnet.data.datasets.gta5 import GTA5, SPLIT_URL
    from ibnnet.data.registry import build_dataset
    fx.write_gta5(tmp_path, n=4)
    spec = OmegaConf.structured(DatasetSpec(name="gta5", dataset="gta5", root=str(tmp_path), split="train"))
    data = OmegaConf.structured(DataConfig())
    assert data.gta5_allow_no_split is False
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(spec, tmp_path, data)
    msg = str(err.value)
    assert SPLIT_URL in msg and str(tmp_path / "split.mat") in msg and "gta5_allow_no_split" in msg
    assert SPLIT_URL == "https://download.visinf.tu-darmstadt.de/data/from_games/code/read_mapping.zip"
    with pytest.raises(FileNotFoundError, match="read_mapping.zip"):
        GTA5(tmp_path, "val")
    # explicit ad-hoc use: every frame, with a warning that says train and test overlap
    data.gta5_allow_no_split = True
    with pytest.warns(UserWarning, match="train and test overlap"):
        assert len(build_dataset(spec, tmp_path, data)) == 4
    assert len(GTA5(tmp_path, "all")) == 4  # split=all never needs the split
    fx.write_split_mat(tmp_path, train=[1, 2, 3], val=[4], test=[])
    data.gta5_allow_no_split = False
    assert len(build_dataset(spec, tmp_path, data)) == 3


# ---------------------------------------------------------------- final and best; validation cadence


def _train(tmp_path, body: str, overrides: list[str]) -> dict:
    import helpers

    from ibnnet.config import compose
    from ibnnet.runs.runner import execute, prepare
    cfg = compose(helpers.config(tmp_path, body), overrides + ["logger.wandb.enabled=false"])
    folder = prepare(cfg)
    metrics = execute(folder.path)
    assert metrics is not None and folder.is_done(), folder.log_tail(30)
    return metrics


def test_metrics_json_records_final_and_best_epoch(tmp_path):
    import helpers
    body = helpers.CLS.replace("num_samples: 96", "num_samples: 16").replace("num_samples: 24", "num_samples: 8")
    m = _train(tmp_path, body, ["trainer.max_epochs=3", "data.augment.image_size=32", "data.augment.eval_resize=32",
                                "model.name=resnet18_bn", "optim.lr=0.05", "trainer.log_every_n_steps=50"])
    best = m["best"]
    assert best["monitor"] == "val/synthetic/top1_err" and best["mode"] == "min"
    assert best["epochs_validated"] == [0, 1, 2] and best["protocol"] == "as configured"
    per = best["per_metric"]
    # the monitored metric's best is the chosen epoch's, and never worse than the final value
    assert per["synthetic"]["top1_err"] == {"value": best["metrics"]["synthetic"]["top1_err"], "epoch": best["epoch"]}
    assert best["metrics"]["synthetic"]["top1_err"] <= m["metrics"]["synthetic"]["top1_err"]
    for name in ("synthetic", "real"):
        for k in ("top1_err", "top5_err"):
            assert per[name][k]["value"] <= m["metrics"][name][k] and 0 <= per[name][k]["epoch"] <= 2
        for k in ("top1_acc", "top5_acc"):
            assert per[name][k]["value"] >= m["metrics"][name][k]
    assert set(best["metrics"]) == set(m["metrics"]) == {"synthetic", "real"}


def test_best_record_survives_a_checkpoint_round_trip():
    import pathlib
    import tempfile

    import helpers

    from ibnnet.config import compose, to_plain
    from ibnnet.tasks import TASKS
    with tempfile.TemporaryDirectory() as d:
        cfg = compose(helpers.config(pathlib.Path(d), helpers.CLS), ["model.name=resnet18_bn"])
    make = lambda: TASKS["classification"](to_plain(cfg), 3, ["synthetic"])  # noqa: E731
    task = make()
    task._update_best({"synthetic": {"top1_err": 40.0, "top5_err": 5.0}}, 0, False)
    task._update_best({"synthetic": {"top1_err": 30.0, "top5_err": 9.0}}, 1, False)
    task._update_best({"synthetic": {"top1_err": 35.0, "top5_err": 1.0}}, 2, False)
    ckpt = {}
    task.on_save_checkpoint(ckpt)
    ckpt = torch.load(_roundtrip(ckpt), weights_only=True)  # checkpoints load with weights_only=True
    resumed = make()
    resumed.on_load_checkpoint(ckpt)
    s = resumed.best_summary()
    assert s["epoch"] == 1 and s["metrics"]["synthetic"]["top1_err"] == 30.0
    assert s["per_metric"]["synthetic"]["top5_err"] == {"value": 1.0, "epoch": 2}
    assert s["epochs_validated"] == [0, 1, 2]


def test_best_epoch_follows_trainer_best_metric():
    """The official IBN-Net imagenet.py keeps model_best by top-5 accuracy; the SN code by top-1."""
    import pathlib
    import tempfile

    import helpers

    from ibnnet.config import compose, to_plain
    from ibnnet.runs.callbacks import primary_metric
    from ibnnet.tasks import TASKS
    epochs = [{"synthetic": {"top1_err": 40.0, "top5_err": 9.0}},
              {"synthetic": {"top1_err": 30.0, "top5_err": 8.0}},    # best top-1
              {"synthetic": {"top1_err": 35.0, "top5_err": 6.0}},    # best top-5
              {"synthetic": {"top1_err": 36.0, "top5_err": 6.0}}]    # a tie keeps the first (official `>`)
    chosen = {}
    for metric in (None, "top5_err", "top5_acc"):
        with tempfile.TemporaryDirectory() as d:
            cfg = compose(helpers.config(pathlib.Path(d), helpers.CLS),
                          ["model.name=resnet18_bn"] + ([f"trainer.best_metric={metric}"] if metric else []))
        task = TASKS["classification"](to_plain(cfg), 3, ["synthetic"])
        for epoch, results in enumerate(epochs):
            results = {n: {**r, "top5_acc": 100 - r["top5_err"]} for n, r in results.items()}
            task._update_best(results, epoch, False)
        chosen[metric] = task.best_summary()
        # best.ckpt follows the same metric
        assert primary_metric(cfg) == (f"val/synthetic/{metric or 'top1_err'}", "max" if metric == "top5_acc" else "min")
    assert chosen[None]["epoch"] == 1 and chosen[None]["monitor"] == "val/synthetic/top1_err"
    assert chosen["top5_err"]["epoch"] == chosen["top5_acc"]["epoch"] == 2
    assert chosen["top5_err"]["monitor"] == "val/synthetic/top5_err" and chosen["top5_err"]["mode"] == "min"
    assert chosen["top5_err"]["metrics"]["synthetic"]["top1_err"] == 35.0   # the table shows that epoch's top-1


def test_ibn_tables_choose_best_by_top5_and_sn_tables_by_top1():
    from ibnnet.experiments.grid import load_experiment
    from ibnnet.runs.folder import hashed_content
    for name in ("ibn_table1", "ibn_table2", "ibn_table3", "ibn_table4", "ibn_table5"):
        exp = load_experiment(name, "full")
        assert exp.table["select"] == "best"
        for cell, cfg in exp.configs():
            assert cfg.trainer.best_metric == "top5_err", (name, cell.name)
            assert hashed_content(cfg)["trainer"]["best_metric"] == "top5_err"   # it changes `best`: hashed
    # SN: train_imagenet.py "is_best = prec1 > best_prec1" (top-1); the default stays out of the hash
    for _, cfg in load_experiment("sn_table2", "full").configs():
        assert cfg.trainer.best_metric is None and "best_metric" not in hashed_content(cfg)["trainer"]


def test_best_metric_must_suit_the_task():
    import pathlib
    import tempfile

    import helpers

    from ibnnet.config import ConfigError, compose
    with tempfile.TemporaryDirectory() as d:
        with pytest.raises(ConfigError, match=r"trainer.best_metric='miou': must be one of top1_err, top5_err"):
            compose(helpers.config(pathlib.Path(d), helpers.CLS), ["trainer.best_metric=miou"])
        with pytest.raises(ConfigError, match=r"trainer.best_metric='top5_err'.*did you mean 'miou'|"
                                              r"trainer.best_metric='top5_err': must be one of miou"):
            compose(helpers.config(pathlib.Path(d), helpers.SEG), ["trainer.best_metric=top5_err"])
        with pytest.raises(ConfigError, match="best_metrc"):
            compose(helpers.config(pathlib.Path(d), helpers.CLS), ["trainer.best_metrc=top5_err"])


def test_run_records_the_best_top5_epoch(tmp_path):
    import helpers
    body = helpers.CLS.replace("num_samples: 96", "num_samples: 16").replace("num_samples: 24", "num_samples: 8")
    m = _train(tmp_path, body, ["trainer.max_epochs=3", "data.augment.image_size=32", "data.augment.eval_resize=32",
                                "model.name=resnet18_bn", "optim.lr=0.05", "trainer.best_metric=top5_err"])
    best = m["best"]
    assert best["monitor"] == "val/synthetic/top5_err" and best["mode"] == "min"
    assert best["epoch"] == best["per_metric"]["synthetic"]["top5_err"]["epoch"]
    assert best["metrics"]["synthetic"]["top5_err"] == best["per_metric"]["synthetic"]["top5_err"]["value"]
    # best.ckpt is the checkpoint of that epoch (ModelCheckpoint monitors the same metric)
    (ckpt,) = (tmp_path / "runs").rglob("best.ckpt")
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] == best["epoch"]


def _roundtrip(obj):
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_segmentation_validates_single_scale_during_training_and_multiscale_at_the_end(tmp_path, monkeypatch):
    import helpers

    from ibnnet.tasks.segmentation import SegmentationTask
    calls = []
    original = SegmentationTask.predict_scores

    def spy(self, x, scales=(1.0,), flip=False, sizes=None):
        assert sizes is None   # no set of this config gives test sizes
        calls.append((self.trainer.state.fn, self.current_epoch, tuple(scales), flip))
        return original(self, x, scales, flip, sizes)
    monkeypatch.setattr(SegmentationTask, "predict_scores", spy)
    body = helpers.SEG.replace("num_samples: 64", "num_samples: 16").replace(
        "domain: synthetic, num_samples: 7}", "domain: synthetic, num_samples: 2, scales: [1.0, 1.5], flip: true}"
    ).replace("num_samples: 7", "num_samples: 2")
    assert "flip: true" in body
    m = _train(tmp_path, body, ["trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2",
                                "data.augment.crop_size=[24,24]", "trainer.log_every_n_steps=50"])
    # training-time validation (epoch index 1 only, every 2 epochs) never ran the multi-scale path
    assert calls and all(fn == "validate" for fn, *_ in calls)
    assert {c[2:] for c in calls} == {((1.0, 1.5), True), ((1.0,), False)}  # final: each set as configured
    best = m["best"]
    assert best["epochs_validated"] == [1] and best["protocol"].startswith("training-time (single-scale")
    assert best["monitor"] == "val/synthetic/miou" and best["mode"] == "max"
    assert set(m["metrics"]) == {"synthetic", "real"} and "miou" in m["metrics"]["synthetic"]


# ---------------------------------------------------------------- the Monet set: CycleGAN's generator

KEYS_FILE = __import__("pathlib").Path(__file__).parent / "data" / "official_keys" / "cyclegan_keys_style_monet_G.txt"


def test_generator_has_the_official_style_monet_layout():
    from ibnnet.data.tools.stylize import ResnetGenerator
    expected = dict(line.split(" ", 1) for line in KEYS_FILE.read_text().splitlines())
    ours = {k: str(list(v.shape)).replace(" ", "") for k, v in ResnetGenerator().state_dict().items()}
    assert len(expected) == 48 and ours == expected
    assert expected["model.1.weight"] == "[64,3,7,7]" and expected["model.26.weight"] == "[3,64,7,7]"
    assert sum(p.numel() for p in ResnetGenerator().parameters()) == 11_378_179
    norms = [m for m in ResnetGenerator().modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert len(norms) == 23 and not any(m.affine or m.track_running_stats for m in norms)


def _official_checkpoint(path, seed=0, old_torch=False):
    """A random generator saved as the official latest_net_G.pth (bare state_dict)."""
    from ibnnet.data.tools.stylize import ResnetGenerator
    torch.manual_seed(seed)
    g = ResnetGenerator().eval()
    state = g.state_dict()
    if old_torch:  # PyTorch < 0.4 saved running statistics for every InstanceNorm layer
        for name, m in g.named_modules():
            if isinstance(m, torch.nn.InstanceNorm2d):
                state[f"{name}.running_mean"] = torch.zeros(m.num_features)
                state[f"{name}.running_var"] = torch.ones(m.num_features)
    torch.save(state, path)
    return g


def test_generator_loads_strictly_and_names_mismatches(tmp_path):
    from ibnnet.data.tools.stylize import load_generator
    g = _official_checkpoint(tmp_path / "latest_net_G.pth", old_torch=True)
    loaded = load_generator(tmp_path / "latest_net_G.pth")
    x = torch.rand(1, 3, 16, 20) * 2 - 1
    with torch.no_grad():  # the same ResnetGenerator class (the same ops) with the same weights: bit-identical
        assert torch.equal(loaded(x), g(x))
    state = g.state_dict()
    bad = dict(state)
    del bad["model.26.bias"]
    bad["model.27.weight"] = torch.zeros(3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth.*missing keys: model\.26\.bias; unexpected keys: model\.27\.weight"):
        load_generator(tmp_path / "bad.pth")
    wrong = dict(state, **{"model.1.weight": torch.zeros(32, 3, 7, 7)})
    torch.save(wrong, tmp_path / "ngf32.pth")
    with pytest.raises(ValueError, match=r"ngf32\.pth.*model\.1\.weight: file \(32, 3, 7, 7\) vs model \(64, 3, 7, 7\)"):
        load_generator(tmp_path / "ngf32.pth")
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_generator(tmp_path / "nothere.pth")


def test_stylize_command_writes_a_resumable_styled_copy(tmp_path):
    import os

    from helpers import cli
    from PIL import Image

    from ibnnet.data.tools.stylize import from_generator_output, to_generator_input
    g = _official_checkpoint(tmp_path / "latest_net_G.pth", seed=1)
    src, dst = tmp_path / "val", tmp_path / "monet" / "val"
    fx.write_imagenet(tmp_path, "val", ["n01", "n02"], per_class=2, size=(20, 16))
    fx.write_jpeg(src / "n02" / "odd_size.JPEG", fx.rgb(13, 23, seed=5))  # not a multiple of 4
    arr = fx.rgb(12, 16, seed=7)
    (src / "n03").mkdir()
    Image.fromarray(arr).save(src / "n03" / "a.png")  # lossless, to compare pixel for pixel
    names = sorted(str(p.relative_to(src)) for p in src.rglob("*.*"))

    out = cli("data", "stylize", src, dst, "--weights", tmp_path / "latest_net_G.pth", "--batch-size", 2,
              "--device", "cpu", "--no-progress")
    assert "6 images written, 0 already there, 3 class folders" in out
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*")if p.is_file()) == names  # no temp files left
    for name in names:
        with Image.open(src / name) as a, Image.open(dst / name) as b:
            assert a.size == b.size and b.mode == "RGB"
            assert b.format == ("PNG" if name.endswith(".png") else "JPEG")
    with torch.no_grad():
        expected = from_generator_output(g(to_generator_input(torch.from_numpy(arr).permute(2, 0, 1))[None])[0])
    assert np.array_equal(np.array(Image.open(dst / "n03" / "a.png")), expected.permute(1, 2, 0).numpy())

    # resume: only the missing file is written; the others are not touched
    (dst / "n01" / "n01_1.JPEG").unlink()
    before = {n: os.stat(dst / n).st_mtime_ns for n in names if n != "n01/n01_1.JPEG"}
    out = cli("data", "stylize", src, dst, "--weights", tmp_path / "latest_net_G.pth", "--device", "cpu",
              "--no-progress")
    assert "1 images written, 5 already there" in out
    assert (dst / "n01" / "n01_1.JPEG").is_file()
    assert {n: os.stat(dst / n).st_mtime_ns for n in before} == before

    # the styled copy reads back as an evaluation set with the real val's labels
    from ibnnet.data.registry import build_dataset
    spec, data = _styled_spec(tmp_path / "monet", src)
    assert sorted(y for _, y in build_dataset(spec, tmp_path, data).samples) == [0, 0, 1, 1, 1, 2]


def test_stylize_errors_name_the_problem(tmp_path):
    from ibnnet.data.tools.stylize import plan_folder
    with pytest.raises(FileNotFoundError, match="source folder not found"):
        plan_folder(tmp_path / "none", tmp_path / "out")
    (tmp_path / "flat").mkdir()
    fx.write_jpeg(tmp_path / "flat" / "x.JPEG", fx.rgb(8, 8, seed=0))
    with pytest.raises(FileNotFoundError, match="no class folders"):
        plan_folder(tmp_path / "flat", tmp_path / "out")
    with pytest.raises(ValueError, match="is the source folder"):
        plan_folder(tmp_path / "flat", tmp_path / "flat")


def test_table_select_final_or_best(tmp_path):
    import json
    import textwrap

    from ibnnet.config import ConfigError
    from ibnnet.experiments.grid import load_experiment
    from ibnnet.results.table import write_table

    REPO = __import__("pathlib").Path(__file__).resolve().parents[1]

    def experiment(select: str):
        path = tmp_path / f"sel_{select}.yaml"
        path.write_text(textwrap.dedent(f"""
            experiment: seltest
            base: {REPO / "configs" / "demo.yaml"}
            grid:
              model:
                key: model.name
                values: {{BN: resnet18_bn}}
            table: {{rows: model, columns: eval, metrics: [top1_err, top5_err], select: {select}}}
            paper:
              - {{model: BN, eval: in-domain, top1_err: 24.0, top5_err: 7.0}}
        """))
        return load_experiment(path)
    overrides = (f"paths.runs={tmp_path / 'runs'}",)
    exp = experiment("best")
    (cell, cfg, folder), = exp.folders(overrides)
    folder.write_config(cfg)
    final = {"in-domain": {"top1_err": 30.0, "top5_err": 9.0}, "cross-domain": {"top1_err": 70.0, "top5_err": 40.0}}
    best = {"in-domain": {"top1_err": 25.0, "top5_err": 8.0}, "cross-domain": {"top1_err": 72.0, "top5_err": 41.0}}
    folder.metrics_path.write_text(json.dumps({"metrics": final, "best": {"epoch": 3, "metrics": best}}))
    md = write_table(exp, tmp_path / "results", overrides)["markdown"].read_text()
    assert "| BN | 25.00/8.00 | 24.00/7.00 | +1.00/+1.00 | 72.00/41.00 |" in md and "best validation epoch" in md
    md = write_table(experiment("final"), tmp_path / "results", overrides)["markdown"].read_text()
    assert "| BN | 30.00/9.00 | 24.00/7.00 | +6.00/+2.00 | 70.00/40.00 |" in md and "after the last epoch" in md
    # a run finished before best was recorded: its final numbers
    folder.metrics_path.write_text(json.dumps({"metrics": final}))
    assert "| BN | 30.00/9.00 |" in write_table(exp, tmp_path / "results", overrides)["markdown"].read_text()
    with pytest.raises(ConfigError, match="table.select='last' must be 'final' or 'best'"):
        experiment("last")


def test_style_monet_download_is_cached_and_writes_are_atomic(tmp_path, monkeypatch):
    from ibnnet.data.tools import stylize
    calls = []

    def fake_download(url, dst, progress=True):
        calls.append((url, dst))
        _official_checkpoint(dst)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path = stylize.download_style_monet(progress=False)
    assert path == tmp_path / "hub" / "cyclegan" / "style_monet_pretrained" / "latest_net_G.pth"
    assert calls == [("http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models/style_monet.pth", str(path))]
    assert stylize.download_style_monet(progress=False) == path and len(calls) == 1  # cached
    stylize.load_generator(path)

    # a failure while encoding leaves neither the target nor a temporary file behind
    def broken_save(self, fp, format=None, **kw):
        fp.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(stylize.Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        stylize.save_image_atomic(torch.zeros(3, 8, 8, dtype=torch.uint8), tmp_path / "out" / "a.JPEG")
    assert list((tmp_path / "out").iterdir()) == []
