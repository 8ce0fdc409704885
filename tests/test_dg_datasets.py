"""The domain-generalization targets (BDD100K, Mapillary Vistas v1.2/v2.0, SYNTHIA-RAND-CITYSCAPES) on fixtures
in their real on-disk formats, their `ibnnet data check`, SYNTHIA's 16/13-class mIoU, and the GTA5 -> three
targets experiment run end to end."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_datasets import (
    rgb,
    write_bdd100k,
    write_cityscapes,
    write_gta5,
    write_mapillary,
    write_split_mat,
    write_synthia,
)
from PIL import Image

from ibnnet.data.datasets.bdd100k import BDD100K
from ibnnet.data.tools.check import check_dataset
from ibnnet.data.datasets.mapillary import V12_TO_TRAIN_ID, MapillaryVistas, robustnet_eval_geometry
from ibnnet.data.registry import class_subsets
from ibnnet.data.datasets.synthia import SYNTHIA13, SYNTHIA16, SYNTHIA_TO_TRAIN_ID, SynthiaRandCityscapes
from ibnnet.errors import DataError, DataNotFoundError
from ibnnet.tasks.metrics import segmentation_scores, subset_miou


def test_bdd100k_reads_train_ids_and_ignores_everything_else(tmp_path):
    write_bdd100k(tmp_path, {"train": 3, "val": 2})
    ds = BDD100K(tmp_path, "val")
    assert len(ds) == 2 and len(BDD100K(tmp_path, "train")) == 3
    for i, (image_path, label_path) in enumerate(ds.samples):
        image, mask = ds[i]
        raw = np.asarray(Image.open(label_path))
        expected = np.where(raw < 19, raw, 255)          # 19 is not a train id: ignored, never a class
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 5, 8)
        assert np.array_equal(mask.numpy(), expected) and (raw == 19).any()
    # a missing mask is an error naming it; the test split has no labels
    Path(ds.samples[0][1]).unlink()
    with pytest.raises(DataNotFoundError, match=r"1 of 2 BDD100K val images have no label file.*masks/val"):
        BDD100K(tmp_path, "val")
    (tmp_path / "images" / "10k" / "test").mkdir()
    Image.fromarray(rgb(5, 8, 0)).save(tmp_path / "images" / "10k" / "test" / "t.jpg")
    assert (BDD100K(tmp_path, "test")[0][1] == 255).all()
    with pytest.raises(DataNotFoundError, match="images/10k/train"):
        BDD100K(tmp_path / "nowhere", "train")


@pytest.mark.parametrize("version", ["v1.2", "v2.0"])
def test_mapillary_maps_the_v12_class_ids_to_cityscapes_pixel_by_pixel(tmp_path, version):
    write_mapillary(tmp_path, version)
    ds = MapillaryVistas(tmp_path, "val", eval_size=0)
    assert ds.version == version and len(ds) == 2 and len(MapillaryVistas(tmp_path, "train")) == 2
    lut = np.full(256, 255)
    for class_id, (train_id, _) in V12_TO_TRAIN_ID.items():
        lut[class_id] = train_id
    for i, (_, label_path) in enumerate(ds.samples):
        assert "/v1.2/labels/" in label_path if version == "v2.0" else "/labels/" in label_path
        ids = np.asarray(Image.open(label_path))               # palette INDICES, 0..65
        assert set(np.unique(ids)) == set(range(66))
        assert np.array_equal(ds[i][1].numpy(), lut[ids])
    # every Cityscapes class has a source class; 41 of the 66 classes are ignored
    assert sorted({t for t, _ in V12_TO_TRAIN_ID.values()}) == list(range(19)) and len(V12_TO_TRAIN_ID) == 25
    # a v2.0 config in a v1.2 place is refused (its class ids mean other classes)
    cfg = tmp_path / ("config.json" if version == "v1.2" else "config_v1.2.json")
    cfg.write_text((tmp_path / "config_v2.0.json").read_text() if version == "v2.0" else
                   '{"labels": [' + ",".join(['{"name": "x"}'] * 124) + "]}")
    with pytest.raises(DataError, match="124 classes"):
        MapillaryVistas(tmp_path, "val")


def test_mapillary_evaluates_at_robustnets_size(tmp_path):
    write_mapillary(tmp_path, "v1.2", size=(12, 9))
    assert MapillaryVistas(tmp_path, "val").eval_size == 1536 and MapillaryVistas(tmp_path, "train").eval_size == 0
    image, mask = MapillaryVistas(tmp_path, "val", eval_size=18)[0]
    assert tuple(image.shape) == (3, 18, 18) and tuple(mask.shape) == (18, 18)   # 9x12 -> 18x24 -> centre 18x18
    # labels are resized with nearest neighbour: no id appears that the resized-from label did not have
    raw = MapillaryVistas(tmp_path, "val", eval_size=0)[0][1]
    assert set(mask.unique().tolist()) <= set(raw.unique().tolist())
    # a portrait image is padded at the sides: image with 0, label with 255 (ignored)
    img, lab = robustnet_eval_geometry(torch.full((3, 12, 6), 7, dtype=torch.uint8),
                                       torch.zeros(12, 6, dtype=torch.uint8), 8)
    assert tuple(img.shape) == (3, 8, 8) and (img[:, :, 0] == 0).all() and (img[:, :, 3] == 7).all()
    assert (lab[:, 0] == 255).all() and (lab[:, 3] == 0).all()


def test_synthia_reads_the_class_id_channel_of_its_16_bit_labels(tmp_path):
    write_synthia(tmp_path, n=3)
    ds = SynthiaRandCityscapes(tmp_path)
    assert len(ds) == 3
    lut = np.full(65536, 255)
    for k, v in SYNTHIA_TO_TRAIN_ID.items():
        lut[k] = v
    for i in range(3):
        ids = np.resize(np.roll(np.arange(23), i), 40).reshape(5, 8)
        assert np.array_equal(ds[i][1].numpy(), lut[ids])
    # PIL would have read these 16-bit labels as 8-bit RGB: the reader must not go through PIL
    assert Image.open(ds.samples[0][1]).mode == "RGB"
    # splits come from lists; without one, split='train' says what to do
    with pytest.raises(DataNotFoundError, match="train.txt"):
        SynthiaRandCityscapes(tmp_path, "train")
    (tmp_path / "train.txt").write_text("0\nRGB/0000002.png\n")
    assert [Path(p).name for p, _ in SynthiaRandCityscapes(tmp_path, "train").samples] == ["0000000.png", "0000002.png"]
    # an 8-bit file where a 16-bit label belongs is an error naming it
    Image.fromarray(np.zeros((5, 8), np.uint8)).save(tmp_path / "GT" / "LABELS" / "0000001.png")
    with pytest.raises(DataError, match="0000001.png.*16-bit"):
        ds[1]


def test_synthia_is_reported_over_its_16_and_13_classes():
    assert len(SYNTHIA16) == 16 and len(SYNTHIA13) == 13
    assert {9, 14, 16} & set(SYNTHIA16) == set() and {3, 4, 5} & set(SYNTHIA13) == set()
    assert class_subsets("synthia") == {"miou16": SYNTHIA16, "miou13": SYNTHIA13} and class_subsets("bdd100k") == {}
    cm = torch.zeros(19, 19, dtype=torch.long)
    for c in SYNTHIA16:
        cm[c, c] = 3                   # IoU 100 for every SYNTHIA class ...
    cm[0, 0], cm[0, 1] = 1, 1          # ... but road: 1 / (1 + 1 + 0) = 50 %, sidewalk: 3 / (3 + 1) = 75 %
    cm[3, 3], cm[3, 9] = 0, 2          # wall never right (0 %); terrain predicted though SYNTHIA has none
    iou = segmentation_scores(cm)["iou"]
    assert subset_miou(iou, SYNTHIA16).item() == pytest.approx((50 + 75 + 0 + 13 * 100) / 16)
    assert subset_miou(iou, SYNTHIA13).item() == pytest.approx((50 + 75 + 11 * 100) / 13)
    # the 19-class mean counts the predicted-only terrain as a class: not comparable, hence the subsets
    assert segmentation_scores(cm)["miou"].item() < subset_miou(iou, SYNTHIA16).item()


def test_data_check_knows_each_layout_and_says_what_to_fix(tmp_path):
    write_bdd100k(tmp_path / "bdd")
    write_mapillary(tmp_path / "map", "v2.0")
    write_synthia(tmp_path / "syn")
    # the BDD fixture holds a 19, which is not a train id: reported with the file
    report = check_dataset("bdd100k", tmp_path / "bdd")
    assert not report.ok and "values 19 are not bdd100k label ids" in str(report)
    assert report.counts == {"train": 3, "val": 2} and "official 7000" in str(report)
    assert check_dataset("mapillary", tmp_path / "map").ok
    assert check_dataset("synthia", tmp_path / "syn").ok
    # a missing labels folder: the reader's message says what to unpack
    for p in (tmp_path / "map" / "validation" / "v1.2" / "labels").iterdir():
        p.unlink()
    (tmp_path / "map" / "validation" / "v1.2" / "labels").rmdir()
    report = check_dataset("mapillary", tmp_path / "map")
    assert not report.ok and "validation labels not found" in str(report) and "unpack" in str(report)
    # an 8-bit label where SYNTHIA has 16-bit ones
    Image.fromarray(np.zeros((5, 8), np.uint8)).save(tmp_path / "syn" / "GT" / "LABELS" / "0000001.png")
    report = check_dataset("synthia", tmp_path / "syn")
    assert not report.ok and "0000001.png" in str(report) and "16-bit" in str(report)


def test_gta5_to_three_targets_runs_end_to_end(tmp_path):
    """experiments/dg_gta5_multitarget.yaml, its SN cell on fixtures: Cityscapes, BDD100K and Mapillary
    evaluated, a SYNTHIA set added through data.val reports miou16/miou13, the table renders."""
    from test_paper_experiments import run_cell, tiny

    from ibnnet.results.table import write_table
    root = tmp_path / "data"
    write_cityscapes(root / "cityscapes", splits={"train": {"aachen": 1}, "val": {"frankfurt": 2}}, size=(64, 32))
    write_gta5(root / "gta5", n=6, size=(64, 32))
    write_split_mat(root / "gta5", train=[1, 2, 3, 4], val=[5, 6], test=[])
    write_bdd100k(root / "bdd100k", {"val": 2}, size=(48, 32))
    write_mapillary(root / "mapillary", "v1.2", {"validation": 2}, size=(48, 36))
    write_synthia(root / "synthia", n=2, size=(48, 32))
    overrides = tiny(tmp_path, root, seg=True) + (
        "data.train.resize=null",
        "data.val=[{name: cityscapes, dataset: cityscapes, split: val}, {name: bdd100k, dataset: bdd100k, split: val},"
        " {name: mapillary, dataset: mapillary, split: val, eval_size: 40}, {name: synthia, dataset: synthia, "
        "split: all}, {name: extra, dataset: bdd100k, split: val, root: " + str(tmp_path / "absent") +
        ", optional: true}]")
    exp, metrics = run_cell("dg_gta5_multitarget", "model=SN", overrides, "reduced")
    evals = metrics["metrics"]
    assert set(evals) == {"cityscapes", "bdd100k", "mapillary", "synthia"}   # the absent optional set skipped
    assert {"miou16", "miou13"} <= set(evals["synthia"]) and "miou16" not in evals["bdd100k"]
    assert all(0 <= evals[n]["miou"] <= 100 for n in evals)
    # mapillary was evaluated at the requested square size: 40 x 40 pixels per image, minus ignored ones
    assert sum(map(sum, evals["mapillary"]["confmat"])) <= 2 * 40 * 40
    md = write_table(exp, tmp_path / "results", overrides)["markdown"].read_text()
    assert "→ BDD100K" in md and "(pending)" in md
    # RobustNet's IBN-Net row (IBN-b's placement in their code) sits on our IBN-Net50-b row, nowhere else
    (ibn_b,) = [line for line in md.splitlines() if line.startswith("| IBN-Net50-b")]
    assert all(v in ibn_b for v in ("33.85", "32.30", "37.75")) and md.count("33.85") == 1


def test_sn_vs_ibn_dg_runs_its_sn_cell_and_draws_where_sn_chose_in(tmp_path):
    """experiments/sn_vs_ibn_dg.yaml, its SN cell on fixtures with the SN paper's segmentation protocol (DeepLab
    v2 head, auxiliary loss 0.4): the table renders, and `analyze sn-weights sn_vs_ibn_dg --ibn-placement` draws
    each SN layer's IN importance beside IBN-a's and IBN-b's IN, from that run's checkpoint."""
    from helpers import cli
    from test_paper_experiments import run_cell, tiny

    from ibnnet.results.table import write_table
    root = tmp_path / "data"
    write_cityscapes(root / "cityscapes", splits={"train": {"aachen": 1}, "val": {"frankfurt": 1}}, size=(64, 32))
    write_gta5(root / "gta5", n=4, size=(64, 32))
    write_split_mat(root / "gta5", train=[1, 2], val=[3, 4], test=[])
    write_bdd100k(root / "bdd100k", {"val": 1}, size=(48, 32))
    write_mapillary(root / "mapillary", "v1.2", {"validation": 1}, size=(48, 36))
    overrides = tiny(tmp_path, root, seg=True) + ("data.train.resize=null", "data.val.2.eval_size=40")
    exp, metrics = run_cell("sn_vs_ibn_dg", "model=SN", overrides, "reduced")
    assert set(metrics["metrics"]) == {"cityscapes", "bdd100k", "mapillary"}
    (_, cfg, folder), = [t for t in exp.folders(overrides) if t[0].name == "model=SN"]
    assert (cfg.segmentation.head, cfg.segmentation.aux_weight, cfg.model.norm) == ("deeplabv2", 0.4, "sn")
    paths = write_table(exp, tmp_path / "results", overrides)
    assert "| SN |" in paths["markdown"].read_text() and paths["plot"].stat().st_size > 1000

    # where the GTA5-trained SN chose IN, next to IBN-a's and IBN-b's IN, found through the experiment
    cli("analyze", "sn-weights", "sn_vs_ibn_dg", "--scale", "reduced", "--cells", "model=SN", "--ibn-placement",
        "--out", tmp_path / "fig", *overrides)
    rows = list(csv.DictReader((tmp_path / "fig" / "placement_SN.csv").open()))
    assert len(rows) == 53 and (tmp_path / "fig" / "placement_SN.png").stat().st_size > 1000
    ibn_a = [r["layer"] for r in rows if r["IBN-a"]]
    assert ibn_a == [f"layer{s}.{b}.bn1" for s, n in ((1, 3), (2, 4), (3, 6)) for b in range(n)]
    assert [(r["layer"], r["IBN-b"]) for r in rows if r["IBN-b"]] == [
        ("bn1", "IN"), ("layer1.2.bn3", "IN after this block's sum"), ("layer2.3.bn3", "IN after this block's sum")]
    sd = torch.load(folder.checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    for r in rows:   # the plotted values are the softmax of the checkpoint's SN weights
        for stat in ("mean", "var"):
            logits = sd[f"net.backbone.{r['layer']}.{stat}_weight"].double()
            assert float(r[f"in_{stat}"]) == pytest.approx(torch.softmax(logits, 0)[0].item(), abs=1e-6)


@pytest.mark.parametrize("name", ["dg_gta5_multitarget", "sn_vs_ibn_dg"])
def test_the_dg_experiments_dry_run(name):
    from helpers import cli
    out = cli("sweep", name, "--dry-run")
    assert "4 cells" in out and "model=SN" in out and "model.norm=sn" in out and "GPU-hours" in out
