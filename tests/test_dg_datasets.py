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
from torchvision.transforms.v2 import functional as TF

from ibnnet.data.datasets.bdd100k import BDD100K
from ibnnet.data.tools.check import check_dataset
from ibnnet.data.datasets.mapillary import V12_TO_TRAIN_ID, MapillaryVistas, robustnet_eval_geometry
from ibnnet.data.labels import CITYSCAPES_CLASSES
from ibnnet.data.registry import class_subsets
from ibnnet.data.datasets.synthia import SYNTHIA13, SYNTHIA16, SynthiaRandCityscapes
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



def pil_resize(arr: np.ndarray, w: int, h: int, resample) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize((w, h), resample))


def test_mapillary_geometry_is_robustnets_pixel_by_pixel(tmp_path):
    """RobustNet's ResizeHeight + CenterCropPad on PIL images, against ours on the decoded tensors. A 50x36
    image evaluated at 40: int(w / h * 40) = 55 where round() would give 56; the centre crop starts at
    int(round((55 - 40) / 2)) = 8. Labels: PIL's NEAREST, equal pixel for pixel. Images: PIL's BICUBIC, within
    2 grey levels: both resize in two separable passes rounded to uint8, with fixed-point weights of another
    precision (PIL 22 bits, torch's uint8 kernel fewer), so a first-pass value may round the other way by one
    level; the second pass weighs it by at most 1.25 (the sum of |w| of the a = -0.5 cubic) and the final
    rounding adds up to one more: under 2.25."""
    write_mapillary(tmp_path, "v1.2", {"validation": 1}, size=(50, 36))
    (raw_image, raw_mask), (image, mask) = MapillaryVistas(tmp_path, "val", eval_size=0)[0], \
        MapillaryVistas(tmp_path, "val", eval_size=40)[0]
    assert (int(50 / 36 * 40), round(50 / 36 * 40)) == (55, 56)
    x1 = int(round((55 - 40) / 2))
    ref_mask = pil_resize(raw_mask.numpy(), 55, 40, Image.NEAREST)
    assert np.array_equal(mask.numpy(), ref_mask[:, x1:x1 + 40])
    ref_image = pil_resize(raw_image.permute(1, 2, 0).numpy(), 55, 40, Image.BICUBIC)[:, x1:x1 + 40]
    diff = np.abs(image.permute(1, 2, 0).numpy().astype(int) - ref_image.astype(int))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.02
    # torch's plain `nearest` (floor(k * in / out)) picks other source pixels on this fixture
    nearest = TF.resize(raw_mask[None], [40, 55], interpolation=TF.InterpolationMode.NEAREST)[0].numpy()
    assert (nearest != ref_mask).sum() > 0

    # a portrait image: resized the same way (22x40 -> 8x16: int(8.8), not 9), then padded evenly to 16x16,
    # the image with 0 and the label with 255 (RobustNet pads the label with 0 and crops off-centre)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 22, 3), dtype=np.uint8)
    lab = rng.integers(0, 19, (40, 22), dtype=np.uint8)
    out_img, out_lab = robustnet_eval_geometry(torch.from_numpy(img).permute(2, 0, 1), torch.from_numpy(lab), 16)
    assert np.array_equal(out_lab[:, 4:12].numpy(), pil_resize(lab, 8, 16, Image.NEAREST))
    assert (out_lab[:, :4] == 255).all() and (out_lab[:, 12:] == 255).all()
    diff = np.abs(out_img[:, :, 4:12].permute(1, 2, 0).numpy().astype(int) -
                  pil_resize(img, 8, 16, Image.BICUBIC).astype(int))
    assert diff.max() <= 2 and (out_img[:, :, :4] == 0).all() and (out_img[:, :, 12:] == 0).all()

# The classes of the SYNTHIA-RAND-CITYSCAPES README, by id. The mapping of RobustNet (datasets/synthia.py), DACS
# and DAFormer (tools/convert_datasets/synthia.py) sends each one that is a Cityscapes class to that class's
# train id (pedestrian: person) and the others to ignore; the expected labels below follow from the names alone.
SYNTHIA_README_CLASSES = {
    0: "void", 1: "sky", 2: "building", 3: "road", 4: "sidewalk", 5: "fence", 6: "vegetation", 7: "pole", 8: "car",
    9: "traffic sign", 10: "pedestrian", 11: "bicycle", 12: "motorcycle", 13: "parking-slot", 14: "road-work",
    15: "traffic light", 16: "terrain", 17: "rider", 18: "truck", 19: "bus", 20: "train", 21: "wall",
    22: "lanemarking"}


def test_synthia_maps_every_readme_class_to_cityscapes_pixel_by_pixel(tmp_path):
    """16-bit 3-channel GT/LABELS as released (class id in channel 0, instance ids above 255 in channel 1),
    every id 0..22 present; terrain, truck and train (16, 18, 20) are classes, not ignored."""
    write_synthia(tmp_path, n=3)
    ds = SynthiaRandCityscapes(tmp_path)
    assert len(ds) == 3
    lut = np.full(65536, 255)
    for class_id, name in SYNTHIA_README_CLASSES.items():
        name = "person" if name == "pedestrian" else name
        if name in CITYSCAPES_CLASSES:
            lut[class_id] = CITYSCAPES_CLASSES.index(name)
    assert (lut[16], lut[18], lut[20]) == (9, 14, 16) and (lut[:23] != 255).sum() == 19
    for i in range(3):
        ids = np.resize(np.roll(np.arange(23), i), 40).reshape(5, 8)
        assert set(np.unique(ids)) == set(range(23))
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


def test_synthia_trained_models_are_scored_over_16_and_13_classes_on_real_targets():
    names = lambda ids: {CITYSCAPES_CLASSES[c] for c in ids}   # noqa: E731
    assert names(SYNTHIA16) == set(CITYSCAPES_CLASSES) - {"terrain", "truck", "train"} and len(SYNTHIA16) == 16
    assert names(SYNTHIA13) == names(SYNTHIA16) - {"wall", "fence", "pole"} and len(SYNTHIA13) == 13
    # by the training set: SYNTHIA-trained models on the real Cityscapes-labelled targets, nowhere else
    for target in ("cityscapes", "bdd100k", "mapillary"):
        assert class_subsets("synthia", target) == {"miou16": SYNTHIA16, "miou13": SYNTHIA13}
        assert class_subsets("gta5", target) == {} and class_subsets(None, target) == {}
    assert class_subsets("synthia", "synthia") == {} and class_subsets("gta5", "synthia") == {}
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
    evaluated, a SYNTHIA set added through data.val is evaluated too; a GTA5-trained model reports no
    miou16/miou13 anywhere (those belong to SYNTHIA-trained models), the table renders."""
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
    assert not any({"miou16", "miou13"} & set(evals[n]) for n in evals)
    assert all(0 <= evals[n]["miou"] <= 100 for n in evals)
    # mapillary was evaluated at the requested square size: 40 x 40 pixels per image, minus ignored ones
    assert sum(map(sum, evals["mapillary"]["confmat"])) <= 2 * 40 * 40
    md = write_table(exp, tmp_path / "results", overrides)["markdown"].read_text()
    assert "→ BDD100K" in md and "(pending)" in md
    # RobustNet's IBN-Net row (IBN-b's placement in their code) sits on our IBN-Net50-b row, nowhere else
    (ibn_b,) = [line for line in md.splitlines() if line.startswith("| IBN-Net50-b")]
    assert all(v in ibn_b for v in ("33.85", "32.30", "37.75")) and md.count("33.85") == 1


def test_synthia_to_three_targets_runs_end_to_end(tmp_path):
    """experiments/dg_synthia_cityscapes.yaml, its SN cell on fixtures: trained on SYNTHIA's 16-bit labels, scored
    with batch-average statistics (SN sec. 3), and every real target reports miou16/miou13, the mean of its
    per-class IoUs over those classes; the table shows mIoU/mIoU-16/mIoU-13 per target."""
    from test_paper_experiments import run_cell, tiny

    from ibnnet.results.table import write_table
    root = tmp_path / "data"
    write_synthia(root / "synthia", n=3, size=(48, 32))
    write_cityscapes(root / "cityscapes", splits={"val": {"frankfurt": 2}}, size=(64, 32))
    write_bdd100k(root / "bdd100k", {"val": 1}, size=(48, 32))
    write_mapillary(root / "mapillary", "v1.2", {"validation": 1}, size=(48, 36))
    overrides = tiny(tmp_path, root, seg=True) + ("data.train.fraction=1.0", "data.val.2.eval_size=40")
    exp, metrics = run_cell("dg_synthia_cityscapes", "model=SN", overrides, "reduced")
    (_, cfg, _), = [t for t in exp.folders(overrides) if t[0].name == "model=SN"]
    assert (cfg.data.train.dataset, cfg.model.norm, cfg.trainer.batch_average_batches) == ("synthia", "sn", 100)
    assert metrics["inference"] == "batch_average"
    evals = metrics["metrics"]
    assert set(evals) == {"cityscapes", "bdd100k", "mapillary"}
    for name, ev in evals.items():
        iou = [ev[f"iou_{c}"] for c in range(19)]
        for key, classes in (("miou16", SYNTHIA16), ("miou13", SYNTHIA13)):
            present = [iou[c] for c in classes if iou[c] == iou[c]]   # NaN: neither in target nor predicted
            assert ev[key] == pytest.approx(sum(present) / len(present)), (name, key)
    md = write_table(exp, tmp_path / "results", overrides)["markdown"].read_text()
    assert "Values: mIoU/mIoU-16/mIoU-13 (%)" in md and "(pending)" in md
    (sn,) = [line for line in md.splitlines() if line.startswith("| SN |")]
    cells = [c.strip() for c in sn.strip("|").split("|")[1:]]
    assert len(cells) == 3 and all(len(c.split("/")) == 3 for c in cells)
    assert cells[0] == "/".join(f"{evals['cityscapes'][k]:.2f}" for k in ("miou", "miou16", "miou13"))

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


@pytest.mark.parametrize("name", ["dg_gta5_multitarget", "sn_vs_ibn_dg", "dg_synthia_cityscapes"])
def test_the_dg_experiments_dry_run(name):
    from helpers import cli
    out = cli("sweep", name, "--dry-run")
    assert "4 cells" in out and "model=SN" in out and "model.norm=sn" in out and "GPU-hours" in out
