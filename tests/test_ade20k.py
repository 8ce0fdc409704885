"""ADE20K (ADEChallengeData2016) on a fixture in its real on-disk format: the reader against the official
label mapping pixel by pixel, `ibnnet data check ade20k`, SN Table 5's ADE20K cells (protocol, dry run, one
cell end to end) and SN Fig. 9 through `ibnnet analyze sn-weights --by-dataset`."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_datasets import rgb, write_jpeg
from PIL import Image

from ibnnet.data.datasets.ade20k import ADE20K, ADE20K_CLASSES, ade20k_lut
from ibnnet.data.tools.check import check_dataset
from ibnnet.errors import DataNotFoundError
from ibnnet.experiments.grid import load_experiment

REPO = Path(__file__).resolve().parents[1]
# every byte value: 0 (other), the 150 classes, and 151..255, which the release never holds
ALL_VALUES = np.arange(256, dtype=np.uint8)


def write_ade20k(root: Path, splits: dict[str, int] | None = None, size: tuple[int, int] = (32, 24)) -> None:
    """``images/{training,validation}/ADE_*.jpg`` and 8-bit grayscale ``annotations/.../ADE_*.png``; the label
    values run over 0..150 (each image a different roll, so that every class occurs)."""
    w, h = size
    for split, n in (splits or {"train": 3, "val": 2}).items():
        folder, prefix = {"train": ("training", "ADE_train"), "val": ("validation", "ADE_val")}[split]
        for i in range(n):
            name = f"{prefix}_{i + 1:08d}"
            write_jpeg(root / "images" / folder / f"{name}.jpg", rgb(h, w, i))
            label = np.resize(np.roll(np.arange(151, dtype=np.uint8), 37 * i), h * w).reshape(h, w)
            path = root / "annotations" / folder / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(label).save(path)   # 2-D uint8: mode "L", as the release's


def official_train_ids(raw: np.ndarray) -> np.ndarray:
    """CSAILVision/semantic-segmentation-pytorch: ``segm - 1``, so 0 ("other") becomes -1 and is not scored;
    in our uint8 masks that is the ignore index 255. Values above 150 are no class."""
    out = raw.astype(np.int64) - 1
    out[(raw == 0) | (raw > 150)] = 255
    return out


def test_reader_maps_the_150_classes_pixel_by_pixel(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    write_ade20k(root, {"train": 3, "val": 2})
    # one label with every byte value, 151..255 included (16 x 16 = 256 pixels)
    write_jpeg(root / "images" / "training" / "ADE_train_00000009.jpg", rgb(16, 16, 9))
    Image.fromarray(ALL_VALUES.reshape(16, 16)).save(root / "annotations" / "training" / "ADE_train_00000009.png")
    train, val = ADE20K(root, "train"), ADE20K(root, "val")
    assert (len(train), len(val)) == (4, 2) and train.num_classes == 150 and len(train.classes) == 150
    assert (ADE20K_CLASSES[0], ADE20K_CLASSES[2], ADE20K_CLASSES[12], ADE20K_CLASSES[149]) == (
        "wall", "sky", "person", "flag")   # objectInfo150 order: label value k is ADE20K_CLASSES[k - 1]
    for ds in (train, val):
        for i, (image_path, label_path) in enumerate(ds.samples):
            image, mask = ds[i]
            raw = np.asarray(Image.open(label_path))
            assert image.dtype == torch.uint8 and image.shape[0] == 3 and mask.dtype == torch.uint8
            assert tuple(image.shape[-2:]) == raw.shape == tuple(mask.shape)
            assert np.array_equal(mask.numpy().astype(np.int64), official_train_ids(raw)), label_path
    # the lookup table itself: k -> k - 1 for 1..150, everything else ignored
    assert np.array_equal(ade20k_lut().astype(np.int64), official_train_ids(ALL_VALUES))
    # the whole value range reached the reader: class 149 ("flag") and the ignored 151..255 both occur
    _, mask = train[[Path(p).stem for p, _ in train.samples].index("ADE_train_00000009")]
    assert set(mask.unique().tolist()) == set(range(150)) | {255}


def test_reader_says_which_folder_is_missing_and_how_to_check(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    with pytest.raises(DataNotFoundError) as e:
        ADE20K(root, "val")
    message = str(e.value)
    assert "\n" not in message and str(root / "images" / "validation") in message
    assert f"ibnnet data check ade20k {root}" in message
    write_ade20k(root, {"val": 2})
    (root / "annotations" / "validation" / "ADE_val_00000002.png").unlink()
    with pytest.raises(DataNotFoundError, match=r"1 of 2 ADE20K val images have no label file.*ADE_val_00000002"
                                                r"\.png.*ibnnet data check ade20k"):
        ADE20K(root, "val")
    with pytest.raises(ValueError, match="split"):
        ADE20K(root, "test")


def test_data_check_ade20k_counts_and_names_every_broken_file(tmp_path):
    from helpers import cli
    good = tmp_path / "good"
    write_ade20k(good, {"train": 3, "val": 2})
    report = check_dataset("ade20k", good)
    assert report.ok, report.render()
    assert report.counts == {"train": 3, "train_labels": 3, "val": 2, "val_labels": 2}
    assert any("official 20210" in w for w in report.warnings)   # a reduced copy: a warning, not a problem
    out = cli("data", "check", "ade20k", good)
    assert "ade20k at" in out and "OK" in out and "(official 2000)" in out

    bad = tmp_path / "bad"
    write_ade20k(bad, {"train": 5, "val": 1})
    lab = bad / "annotations" / "training"
    (lab / "ADE_train_00000001.png").unlink()                                             # missing label
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(lab / "ADE_train_00000042.png")   # label without image
    Image.fromarray(np.full((24, 32), 200, np.uint8)).save(lab / "ADE_train_00000002.png")   # value above 150
    Image.fromarray(np.zeros((24, 32), np.uint16)).save(lab / "ADE_train_00000003.png")  # 16-bit label
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(lab / "ADE_train_00000004.png")  # RGB label
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(lab / "ADE_train_00000005.png")  # wrong size
    report = check_dataset("ade20k", bad)
    assert not report.ok
    problems = "\n".join(report.problems)
    assert f"missing label {lab / 'ADE_train_00000001.png'}" in problems
    assert f"label without image: {lab / 'ADE_train_00000042.png'}" in problems
    assert f"{lab / 'ADE_train_00000002.png'}: values 200 above 150" in problems
    assert f"{lab / 'ADE_train_00000003.png'}: mode 'I;16'" in problems
    assert f"{lab / 'ADE_train_00000004.png'}: mode 'RGB'" in problems
    assert f"size mismatch: {lab / 'ADE_train_00000005.png'} is 10x10, image ADE_train_00000005.jpg is 32x24" \
        in problems
    assert len(report.problems) == 6
    assert any("re-extract" in h for h in report.hints)
    # a root without the release: each missing folder named, and where to get it
    report = check_dataset("ade20k", tmp_path / "bad" / "images")
    assert not report.ok and any("ADEChallengeData2016.zip" in h for h in report.hints)


def test_sn_table5_ade20k_cells_are_appendix_e():
    from ibnnet.data.datasets.ade20k import NUM_ADE20K_CLASSES
    source = {"SyncBN": "norm=BN_setting=8x32", "GN": "norm=GN_setting=8x32", "SN": "norm=SN_setting=8x2"}
    for scale in ("full", "ghost", "reduced"):
        exp = load_experiment("sn_table5", scale)
        cells = {c.labels["norm"]: cfg for c, cfg in exp.configs() if c.labels.get("dataset") == "ADE20K"}
        assert set(cells) == {"SyncBN", "GN", "SN"}
        for norm, cfg in cells.items():
            # "SyncBN and GN adopt the pretrained models on ImageNet ... we use SN (8, 2) in ImageNet"
            assert cfg.model.pretrained_file == f"run:sn_table2/{source[norm]}@{scale}"
            assert cfg.model.norm == {"SyncBN": "syncbn", "GN": "gn", "SN": "sn"}[norm]
            assert (cfg.segmentation.head, cfg.segmentation.output_stride, cfg.segmentation.aux_weight) == (
                "deeplabv2", 8, 0.4)
            assert cfg.optim.schedule == "poly" and cfg.optim.poly_power == 0.9
            assert cfg.optim.lr == 0.02   # the paper's software's ADE20K setting (the paper gives none)
            # "2 samples per GPU for ADE20K"; "the actual "batchsize" is 16"
            assert cfg.trainer.devices * cfg.data.batch_size == 16
            # "we resize each image to 450 x 450": the whole image, no random rescaling or crop
            assert cfg.data.train.dataset == "ade20k" and list(cfg.data.train.resize) == [450, 450]
            assert list(cfg.data.augment.crop_size) == [450, 450]
            assert list(cfg.data.augment.scale_range) == list(cfg.data.augment.aspect_range) == [1.0, 1.0]
            val = {v.name: v for v in cfg.data.val}
            assert set(val) == {"ade20k_single", "ade20k_multi"}
            assert all(v.dataset == "ade20k" and v.split == "val" and list(v.scales) == [1.0] and not v.flip
                       for v in val.values())
            # "multi-scale testing with input_size = {300, 400, 500, 600}"; single-scale at the training size
            assert list(val["ade20k_multi"].sizes) == [300, 400, 500, 600] and list(val["ade20k_single"].sizes) == [450]
            assert cfg.data.eval_batch_size == 1
            # SN sec. 3: "When applying SN in test, BN uses batch average after training"
            assert (cfg.trainer.batch_average_batches > 0) == (norm == "SN")
            if scale == "reduced":
                assert 0 < cfg.trainer.max_steps < 100000 and cfg.trainer.devices == 4
            else:   # "train for 100, 000 iterations" on 8 GPUs
                assert cfg.trainer.max_steps == 100000 and cfg.trainer.devices == 8 and cfg.data.batch_size == 2
                assert cfg.trainer.max_epochs * (20210 // 16) > 100000   # the iterations end the run
        # the Cityscapes cells keep their protocol (the ADE20K settings are the ADE20K cells' only)
        city = {c.labels["norm"]: cfg for c, cfg in exp.configs() if "dataset" not in c.labels}
        assert all(cfg.data.train.dataset == "cityscapes" and cfg.trainer.max_steps == -1 for cfg in city.values())
    # the paper's numbers, sec. 4.3 / Table 5
    paper = {(e["norm"], e["eval"]): e["miou"] for e in exp.paper if e.get("dataset") == "ADE20K"}
    assert paper == {("SyncBN", "ade20k_single"): 36.4, ("SyncBN", "ade20k_multi"): 37.7,
                     ("GN", "ade20k_single"): 35.7, ("GN", "ade20k_multi"): 36.3,
                     ("SN", "ade20k_single"): 38.7, ("SN", "ade20k_multi"): 39.2}
    assert NUM_ADE20K_CLASSES == 150


def test_seg_ade20k_data_config_matches_the_table_cells():
    from ibnnet.config.loader import compose
    cfg = compose(REPO / "configs" / "segmentation.yaml", ["data=seg_ade20k", "trainer.max_steps=100000"])
    (_, cell), = [(c, k) for c, k in load_experiment("sn_table5", "full").configs()
                  if c.name == "norm=SN_dataset=ADE20K"]
    for key in ("train", "val", "augment", "eval_batch_size", "batch_size"):
        assert cfg.data[key] == cell.data[key], key


def test_test_sizes_are_validated():
    from ibnnet.config import ConfigError
    from ibnnet.config.loader import compose
    base = REPO / "configs" / "segmentation.yaml"
    with pytest.raises(ConfigError, match=r"data\.val\[0\]\.sizes.*replaces `scales`"):
        compose(base, ["data=seg_ade20k", "data.val.0.scales=[1.0,1.5]"])
    with pytest.raises(ConfigError, match=r"data\.val\[1\]\.sizes"):
        compose(base, ["data=seg_ade20k", "data.val.1.sizes=[]"])


def test_the_ade20k_cells_dry_run():
    from helpers import cli
    out = cli("sweep", "sn_table5", "--dry-run", "--scale", "full")
    assert "6 cells" in out
    for norm in ("SyncBN", "GN", "SN"):
        assert f"norm={norm}_dataset=ADE20K" in out
    assert "trainer.max_steps=100000" in out


def test_ade20k_sn_cell_runs_end_to_end_and_draws_fig9(tmp_path):
    """The ADE20K SN cell of sn_table5 on the fixture (tiny sizes), its table, and SN Fig. 9 from its checkpoint
    beside a Cityscapes-labelled SN ResNet-50: 53 SN layers each, the values the checkpoint's softmaxes."""
    import timm
    from helpers import cli
    from test_paper_experiments import run_cell, tiny

    from ibnnet.results.table import write_table
    root = tmp_path / "data"
    write_ade20k(root / "ade20k", {"train": 2, "val": 2}, size=(40, 30))
    # small test sizes (by index: the Cityscapes cells of the file stay valid and keep their own sets)
    overrides = tiny(tmp_path, root, seg=True) + (
        "model.pretrained_file=null", "trainer.max_steps=-1", "data.train.resize=[40,40]",
        "data.val.0.sizes=[40]", "data.val.1.sizes=[32,48]", "data.val.1.scales=[1.0]")
    exp, metrics = run_cell("sn_table5", "norm=SN_dataset=ADE20K", overrides, "reduced")
    evals = metrics["metrics"]
    assert set(evals) == {"ade20k_single", "ade20k_multi"}
    # 150 classes, scored at the labels' own size (the test sizes resize the image only): 2 images of 40 x 30
    for name in evals:
        confmat = np.array(evals[name]["confmat"])
        assert confmat.shape == (150, 150) and 0 < confmat.sum() <= 2 * 40 * 30 and 0 <= evals[name]["miou"] <= 100
    (_, cfg, folder), = [t for t in exp.folders(overrides) if t[0].name == "norm=SN_dataset=ADE20K"]
    assert cfg.trainer.batch_average_batches > 0
    md = write_table(exp, tmp_path / "results", overrides)["markdown"].read_text()
    assert "ADE20K multi-scale, val" in md and "38.70" in md and "39.20" in md

    # SN Fig. 9: the ADE20K run (found through the experiment) and a Cityscapes SN ResNet-50
    city = timm.create_model("resnet50_sn", num_classes=0)
    with torch.no_grad():
        for name, p in city.named_parameters():
            if name.endswith("_weight") and p.numel() == 3:
                p.copy_(torch.randn(3))
    torch.save(city.state_dict(), tmp_path / "city.pth")
    out = cli("analyze", "sn-weights", "sn_table5", "--scale", "reduced", "--cells", "norm=SN", "--by-dataset",
              "--checkpoint", f"Cityscapes={tmp_path / 'city.pth'}", "--out", tmp_path / "fig9", *overrides)
    assert "ADE20K: 54 SN layers" in out   # the backbone's 53 and the auxiliary head's
    rows = list(csv.DictReader((tmp_path / "fig9" / "datasets.csv").open()))
    assert [sum(r["dataset"] == d for r in rows) for d in ("ADE20K", "Cityscapes")] == [53, 53]
    assert (tmp_path / "fig9" / "datasets.png").stat().st_size > 10000
    sd = torch.load(folder.checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    for r in rows:
        source = sd if r["dataset"] == "ADE20K" else {f"net.backbone.{k}": v for k, v in city.state_dict().items()}
        for stat in ("mean", "var"):
            w = torch.softmax(source[f"net.backbone.{r['layer']}.{stat}_weight"].double(), 0)
            assert [float(r[f"{stat}_{b}"]) for b in ("IN", "LN", "BN")] == pytest.approx(w.tolist(), abs=1e-6)


def test_a_scale_can_patch_the_cells_its_overrides_do_not_fit(tmp_path):
    """grid.py: `scales.<name>.patches` apply after the cells' own overrides (sn_table5's reduced ADE20K cells),
    and name only axes the file has."""
    import textwrap

    from ibnnet.config import ConfigError
    path = tmp_path / "patched.yaml"

    def write(match: str) -> None:
        path.write_text(textwrap.dedent(f"""
            base: {REPO / "configs" / "demo.yaml"}
            scales:
              small:
                gpu_hours: 1
                overrides: {{trainer.max_epochs: 3}}
                patches: [{{match: {match}, set: {{trainer.max_epochs: 2}}}}]
            grid:
              model:
                A: {{model.name: resnet18_bn}}
                B: {{model.name: resnet18_bn, trainer.max_epochs: 7}}
            """))
    write("{model: B}")
    epochs = {c.name: cfg.trainer.max_epochs for c, cfg in load_experiment(path, "small").configs()}
    assert epochs == {"model=A": 3, "model=B": 2}   # B's own 7 replaced by the scale's patch, A untouched
    write("{dataset: X}")
    with pytest.raises(ConfigError, match=r"scales\.small\.patches names unknown axes \['dataset'\]"):
        load_experiment(path, "small")
