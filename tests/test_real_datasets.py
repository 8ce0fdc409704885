"""Dataset readers on tiny fixtures written in the real formats (PNG, palette PNG, JPEG, split.mat)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

try:
    import fixtures_datasets as fx
except ImportError:  # tests/ imported as a package
    from tests import fixtures_datasets as fx

from ibnnet.data.transforms.appearance import APPEARANCES, Appearance, apply_appearance
from ibnnet.data.tools.check import CheckReport, check_dataset
from ibnnet.data.datasets.cityscapes import Cityscapes, LabelSizeMismatchWarning
from ibnnet.data.datasets.gta5 import GTA5
from ibnnet.data.datasets.imagenet import ImageNet, fraction_count, select_fraction
from ibnnet.data.labels import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    LABEL_TO_TRAIN_ID,
    colorize,
    label_ids_to_train_ids,
    label_lut,
)

# Written out independently of the package (from the Cityscapes label table) to catch typos there.
EXPECTED_TRAIN_ID = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1, 9: 255, 10: 255, 11: 2, 12: 3,
    13: 4, 14: 255, 15: 255, 16: 255, 17: 5, 18: 255, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 29: 255, 30: 255, 31: 16, 32: 17, 33: 18,
}


def expected_mask(label_path) -> np.ndarray:
    ids = np.asarray(Image.open(label_path))
    return np.vectorize(lambda v: EXPECTED_TRAIN_ID.get(int(v), 255))(ids).astype(np.uint8)


# ---------------------------------------------------------------- labels


@pytest.mark.parametrize("label_id", range(34))
def test_every_cityscapes_label_id_maps(label_id):
    assert LABEL_TO_TRAIN_ID[label_id] == EXPECTED_TRAIN_ID[label_id]
    assert label_lut()[label_id] == EXPECTED_TRAIN_ID[label_id]


def test_lut_ignore_and_license_plate():
    lut = label_lut()
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    assert LABEL_TO_TRAIN_ID[-1] == 255 and set(LABEL_TO_TRAIN_ID) == set(range(-1, 34))
    assert (lut[34:] == 255).all()  # includes 255, i.e. a -1 wrapped into a byte
    assert sorted(int(v) for v in lut if v != 255) == list(range(19))
    assert len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[-1] == "bicycle"
    assert CITYSCAPES_CLASSES[13] == "car" and len(CITYSCAPES_PALETTE) == 19
    assert (label_ids_to_train_ids(np.array([[-1, 7, 300]])) == [[255, 0, 255]]).all()
    assert colorize(np.array([[0, 255]])).tolist() == [[list(CITYSCAPES_PALETTE[0]), [0, 0, 0]]]


# ---------------------------------------------------------------- Cityscapes


@pytest.mark.parametrize("layout", ["official", "nested"])
def test_cityscapes_layouts_and_every_id(tmp_path, layout):
    written = fx.write_cityscapes(tmp_path, layout=layout)
    ds = Cityscapes(tmp_path, "train")
    assert len(ds) == 5 and ds.num_classes == 19
    assert [p for p, _ in ds.samples] == [str(p) for p, _ in written["train"]]
    seen = set()
    for i, (img_path, lab_path) in enumerate(written["train"]):
        image, mask = ds[i]
        assert isinstance(image, tv_tensors.Image) and isinstance(mask, tv_tensors.Mask)
        assert image.dtype == torch.uint8 and image.shape == (3, 5, 8)
        assert mask.dtype == torch.uint8 and mask.shape == (5, 8)
        assert (image.permute(1, 2, 0).numpy() == np.asarray(Image.open(img_path))).all()
        assert (mask.numpy() == expected_mask(lab_path)).all()
        seen |= set(np.unique(np.asarray(Image.open(lab_path))).tolist())
    assert seen == set(fx.ALL_LABEL_VALUES)  # all 34 ids and 255 went through the loader
    assert len(Cityscapes(tmp_path, "val")) == 2


def test_cityscapes_test_split_without_labels_gives_ignore_masks(tmp_path):
    fx.write_cityscapes(tmp_path)  # no gtFine/test written
    image, mask = Cityscapes(tmp_path, "test")[0]
    assert mask.shape == image.shape[-2:] and (mask == 255).all()


def test_cityscapes_missing_folders_and_labels_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        Cityscapes(tmp_path, "train")
    written = fx.write_cityscapes(tmp_path, splits={"train": {"aachen": 2}})
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit.val"):
        Cityscapes(tmp_path, "val")
    written["train"][1][1].unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 2 .*aachen_000001_000020_gtFine_labelIds\.png"):
        Cityscapes(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        Cityscapes(tmp_path, "trainval")


def test_cityscapes_fraction_is_seeded_nested_and_sized(tmp_path):
    fx.write_cityscapes(tmp_path, splits={"train": {"aachen": 10, "bochum": 10}}, size=(8, 5))
    full = Cityscapes(tmp_path, "train")
    sub = {f: Cityscapes(tmp_path, "train", fraction=f).samples for f in (0.1, 0.2, 0.3)}
    assert [len(s) for s in sub.values()] == [2, 4, 6]
    assert sub[0.2] == Cityscapes(tmp_path, "train", fraction=0.2).samples  # deterministic
    assert set(sub[0.1]) <= set(sub[0.2]) <= set(sub[0.3]) <= set(full.samples)
    others = [Cityscapes(tmp_path, "train", fraction=0.3, seed=s).samples for s in range(1, 6)]
    assert any(o != sub[0.3] for o in others)
    with pytest.raises(ValueError, match="fraction"):
        Cityscapes(tmp_path, "train", fraction=0.0)


def test_fraction_helpers():
    assert [fraction_count(n, f) for n, f in ((2975, 0.1), (12403, 0.25), (3, 0.01), (0, 0.5), (7, 1.0))] == [
        298, 3101, 1, 0, 7]
    keys = [f"k{i}" for i in range(50)]
    assert select_fraction(keys, 0.5, seed=3) == select_fraction(list(keys), 0.5, seed=3)
    assert select_fraction(keys, 0.5, 3) == sorted(select_fraction(keys, 0.5, 3))


# ---------------------------------------------------------------- GTA5


def test_gta5_palette_indices_not_colours(tmp_path):
    fx.write_gta5(tmp_path, n=2)
    label_path = tmp_path / "labels" / "00001.png"
    lab = Image.open(label_path)
    assert lab.mode == "P"
    a, b = fx.COLLIDING_IDS
    rgb = np.asarray(lab.convert("RGB"))
    idx = np.asarray(lab)
    assert (rgb[idx == a][0] == rgb[idx == b][0]).all()  # the colours really collide
    ds = GTA5(tmp_path, "all")
    assert ds.num_classes == 19 and len(ds) == 2
    _, mask = ds[0]
    assert (mask.numpy()[idx == a] == EXPECTED_TRAIN_ID[a]).all()
    assert (mask.numpy()[idx == b] == EXPECTED_TRAIN_ID[b]).all()
    assert (mask.numpy() == expected_mask(label_path)).all()


def test_gta5_split_mat(tmp_path):
    fx.write_gta5(tmp_path, n=10)
    fx.write_split_mat(tmp_path, train=[1, 2, 3, 4, 5, 6], val=[7, 8], test=[9, 10])
    (tmp_path / "train.txt").write_text("1\n")  # split.mat must win over text lists
    stems = lambda ds: [p.rsplit("/", 1)[1] for p, _ in ds.samples]  # noqa: E731
    assert stems(GTA5(tmp_path, "train")) == [f"{i:05d}.png" for i in range(1, 7)]
    assert stems(GTA5(tmp_path, "val")) == ["00007.png", "00008.png"]
    assert stems(GTA5(tmp_path, "test")) == ["00009.png", "00010.png"]
    assert len(GTA5(tmp_path, "all")) == 10
    quarter = GTA5(tmp_path, "train", fraction=0.25)
    assert len(quarter) == 2 and quarter.samples == GTA5(tmp_path, "train", fraction=0.25).samples
    assert set(quarter.samples) <= set(GTA5(tmp_path, "train").samples)


def test_gta5_split_mat_reduced_copy_warns(tmp_path):
    fx.write_gta5(tmp_path, n=3)
    fx.write_split_mat(tmp_path, train=[1, 2, 50], val=[3], test=[60])
    with pytest.warns(UserWarning, match="1 of 3 GTA5 train frames"):
        assert len(GTA5(tmp_path, "train")) == 2
    with pytest.raises(FileNotFoundError, match="none of the GTA5 test frames"):
        GTA5(tmp_path, "test")


def test_gta5_text_lists_and_fallback(tmp_path):
    fx.write_gta5(tmp_path, n=6)
    with pytest.warns(UserWarning, match="uses all 6 frames"):  # ad-hoc use only (issue 8)
        assert len(GTA5(tmp_path, "train", allow_no_split=True)) == 6
    (tmp_path / "train.txt").write_text("# frames\n1\n00002\nimages/00003.png\n\n")
    (tmp_path / "val.txt").write_text("4.png\n")
    assert [p[-9:] for p, _ in GTA5(tmp_path, "train").samples] == ["00001.png", "00002.png", "00003.png"]
    assert len(GTA5(tmp_path, "val")) == 1
    with pytest.raises(ValueError, match="no 'test' split"):
        GTA5(tmp_path, "test")


def test_gta5_missing_folders_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="images"):
        GTA5(tmp_path, "all")
    fx.write_gta5(tmp_path, n=2)
    (tmp_path / "labels" / "00002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"labels.00002\.png"):
        GTA5(tmp_path, "all")


def test_size_mismatch_reported_and_tolerated(tmp_path):
    fx.write_gta5(tmp_path, n=3, size=(8, 5))
    bad = tmp_path / "labels" / "00002.png"
    fx.write_palette_label(bad, np.full((10, 16), 26, np.uint8))  # twice the image size, all "car"
    report = check_dataset("gta5", tmp_path)
    assert not report.ok
    assert any("size mismatch" in p and "00002.png" in p for p in report.problems)
    ds = GTA5(tmp_path, "all")
    with pytest.warns(LabelSizeMismatchWarning, match="00002.png"):
        image, mask = ds[1]
    assert mask.shape == image.shape[-2:] == (5, 8) and (mask == 13).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per file: a second read is silent
        ds[1]


def test_cityscapes_size_mismatch(tmp_path):
    written = fx.write_cityscapes(tmp_path, splits={"train": {"aachen": 2}, "val": {"ulm": 1}})
    lab = written["train"][0][1]
    Image.fromarray(np.full((3, 4), 24, np.uint8)).save(lab)
    report = check_dataset("cityscapes", tmp_path)
    assert any("size mismatch" in p and lab.name in p for p in report.problems)
    with pytest.warns(LabelSizeMismatchWarning):
        image, mask = Cityscapes(tmp_path, "train")[0]
    assert mask.shape == (5, 8) and (mask == 11).all()


# ---------------------------------------------------------------- ImageNet


def test_imagenet_folders_gray_cmyk_png(tmp_path):
    wnids = ["n02", "n01", "n03"]
    fx.write_imagenet(tmp_path, "val", wnids, per_class=2)
    colour = np.zeros((16, 20, 3), np.uint8)
    colour[...] = (200, 50, 100)
    fx.write_jpeg(tmp_path / "val" / "n01" / "gray.jpeg", colour, mode="L")
    fx.write_jpeg(tmp_path / "val" / "n02" / "cmyk.jpg", colour, mode="CMYK")
    Image.fromarray(colour).save(tmp_path / "val" / "n03" / "styled.PNG")
    (tmp_path / "val" / "n03" / "notes.txt").write_text("not an image")
    ds = ImageNet(tmp_path, "val")
    assert ds.classes == ["n01", "n02", "n03"] and ds.num_classes == 3 and len(ds) == 9
    by_name = {p.rsplit("/", 1)[1]: i for i, (p, _) in enumerate(ds.samples)}
    img, label = ds[by_name["gray.jpeg"]]
    assert isinstance(img, tv_tensors.Image) and img.dtype == torch.uint8 and img.shape == (3, 16, 20)
    assert label == 0 and (img[0] == img[1]).all() and (img[1] == img[2]).all()
    img, label = ds[by_name["cmyk.jpg"]]
    assert label == 1 and img.shape[0] == 3
    assert (img.float().mean((1, 2)) - torch.tensor([200.0, 50.0, 100.0])).abs().max() < 6
    img, label = ds[by_name["styled.PNG"]]
    assert label == 2 and img[:, 0, 0].tolist() == [200, 50, 100]
    pil = ImageNet(tmp_path, "val", decoder="pil")
    for i in range(len(ds)):
        assert (pil[i][0] == ds[i][0]).all()


def test_imagenet_subset_and_fraction(tmp_path):
    fx.write_imagenet(tmp_path, "train", [f"n{i:02d}" for i in range(4)], per_class=5)
    sub = ImageNet(tmp_path, "train", num_classes_subset=2)
    assert sub.classes == ["n00", "n01"] and sub.num_classes == 2 and len(sub) == 10
    frac = ImageNet(tmp_path, "train", fraction=0.4, seed=1)
    assert len(frac) == 8 and sorted(set(frac.targets)) == [0, 1, 2, 3]
    assert all(frac.targets.count(c) == 2 for c in range(4))
    assert frac.samples == ImageNet(tmp_path, "train", fraction=0.4, seed=1).samples
    styled = ImageNet(tmp_path, "train", classes=["n99", "n00", "n01", "n02", "n03"])
    assert styled.num_classes == 5 and set(styled.targets) == {1, 2, 3, 4}


def test_imagenet_errors_name_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "val")):
        ImageNet(tmp_path, "val")
    (tmp_path / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        ImageNet(tmp_path, "val")
    fx.write_jpeg(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="no class folders"):
        ImageNet(tmp_path, "val")


# ---------------------------------------------------------------- appearance


def img_from(values_per_channel) -> torch.Tensor:
    return torch.tensor(values_per_channel, dtype=torch.uint8).reshape(3, 1, -1)


def test_appearance_offsets_clip_at_255():
    img = img_from([[0, 100, 210, 255], [1, 2, 3, 4], [250, 205, 206, 0]])
    assert apply_appearance(img, "rgb+50").tolist() == img_from(
        [[50, 150, 255, 255], [51, 52, 53, 54], [255, 255, 255, 50]]).tolist()
    out = apply_appearance(img, "r+50")
    assert out[0].flatten().tolist() == [50, 150, 255, 255] and (out[1:] == img[1:]).all()
    assert apply_appearance(img, "none") is img
    assert APPEARANCES == ("none", "rgb+50", "r+50", "std1.5")


def test_appearance_std_per_channel_round_and_clip():
    img = img_from([[100, 110, 120, 130], [0, 0, 250, 250], [7, 7, 7, 7]])
    out = apply_appearance(img, "std1.5")
    # red mean 115: 92.5 -> 92 (ties to even), 107.5 -> 108, 122.5 -> 122, 137.5 -> 138
    assert out[0].flatten().tolist() == [92, 108, 122, 138]
    # green mean 125: -62.5 -> 0, 312.5 -> 255 (clipped both ways)
    assert out[1].flatten().tolist() == [0, 0, 255, 255]
    assert out[2].flatten().tolist() == [7, 7, 7, 7]  # constant channel unchanged


def test_appearance_batch_and_types():
    a = img_from([[10, 30]] * 3)
    b = img_from([[100, 140]] * 3)
    batch = torch.stack([a, b])
    out = apply_appearance(batch, "std1.5")
    assert out.shape == (2, 3, 1, 2)
    assert out[0, 0].flatten().tolist() == [5, 35] and out[1, 0].flatten().tolist() == [90, 150]  # per image
    wrapped = apply_appearance(tv_tensors.Image(a), "r+50")
    assert isinstance(wrapped, tv_tensors.Image)
    assert Appearance("rgb+50")(a).tolist() == apply_appearance(a, "rgb+50").tolist()
    with pytest.raises(ValueError, match="unknown appearance"):
        apply_appearance(a, "std2")
    with pytest.raises(TypeError):
        apply_appearance(a.float(), "rgb+50")


# ---------------------------------------------------------------- checker


def test_check_cityscapes_counts_and_hints(tmp_path):
    fx.write_cityscapes(tmp_path, layout="nested", labels_for=("train",))
    report = check_dataset("cityscapes", tmp_path)
    assert isinstance(report, CheckReport)
    assert report.counts["train"] == 5 and report.counts["val"] == 2 and report.counts["test"] == 1
    assert report.counts["train_labels"] == 5
    assert not report.ok and any("gtFine/val missing" in p for p in report.problems)
    assert any(h.startswith("gtFine_trainvaltest/gtFine/val missing: download gtFine_trainvaltest.zip")
               for h in report.hints)
    assert any("train images: 5, official 2975" in w for w in report.warnings)
    text = report.render()
    assert "PROBLEM" in text and "train: 5  (official 2975)" in text and "what to fix" in text

    fx.write_cityscapes(tmp_path, layout="nested", splits={"val": {"frankfurt": 2}}, labels_for=("val",))
    good = check_dataset("cityscapes", tmp_path)
    assert good.ok, good.render()
    assert good.warnings  # reduced counts are warnings, not problems


def test_check_lists_unknown_values_capped(tmp_path):
    written = fx.write_cityscapes(tmp_path, splits={"train": {"aachen": 5}, "val": {"ulm": 1}})
    for _, lab in written["train"]:
        Image.fromarray(np.full((5, 8), 40, np.uint8)).save(lab)
    report = check_dataset("cityscapes", tmp_path, max_listed=2)
    bad = [p for p in report.problems if "values outside" in p]
    assert len(bad) == 2 and "40" in bad[0]
    assert "... and 3 more labels with unknown values" in report.problems
    assert check_dataset("cityscapes", tmp_path, check_label_values=False).ok


def test_check_gta5(tmp_path):
    fx.write_gta5(tmp_path, n=4)
    report = check_dataset("gta5", tmp_path)
    assert report.ok and report.counts["all"] == 4 and report.counts["labels"] == 4
    assert any(h.startswith("split.mat not found: all 4 frames will be used for split=all") for h in report.hints)
    assert any("frames: 4, official 24966" in w for w in report.warnings)

    fx.write_split_mat(tmp_path, train=[1, 2], val=[2, 3], test=[4])
    (tmp_path / "labels" / "00004.png").unlink()
    fx.write_palette_label(tmp_path / "labels" / "00001.png", np.full((5, 8), 77, np.uint8))
    report = check_dataset("gta5", tmp_path)
    assert report.counts["train"] == 2 and report.counts["val"] == 2 and report.counts["test"] == 1
    assert any("1 frames are in both train and val" in p for p in report.problems)
    assert any("missing label" in p and "00004.png" in p for p in report.problems)
    assert any("00001.png" in p and "77" in p for p in report.problems)
    assert any("train frames listed: 2, official 12403" in w for w in report.warnings)


def test_check_imagenet_and_missing_root(tmp_path):
    fx.write_imagenet(tmp_path, "train", ["n01", "n02"], per_class=2, size=(8, 8))
    fx.write_imagenet(tmp_path, "val", ["n01"], per_class=1, size=(8, 8))
    report = check_dataset("imagenet", tmp_path)
    assert report.counts == {"train_classes": 2, "train": 4, "val_classes": 1, "val": 1}
    assert any("class folders differ" in p for p in report.problems)
    assert any("train classes: 2, official 1000" in w for w in report.warnings)
    missing = check_dataset("ImageNet", tmp_path / "nope")
    assert not missing.ok and str(tmp_path / "nope") in missing.problems[0]
    only_train = tmp_path / "t"
    fx.write_imagenet(only_train, "train", ["n01"], per_class=1, size=(8, 8))
    report = check_dataset("imagenet", only_train)
    assert any(p.startswith("val/ missing") for p in report.problems)
    assert any("ILSVRC2012_img_val.tar" in h for h in report.hints)
    with pytest.raises(ValueError, match="unknown dataset"):
        check_dataset("coco", tmp_path)


def test_imagenet_check_flags_folders_that_are_not_wnids_and_unreadable_images(tmp_path):
    from PIL import Image

    from ibnnet.data.tools.check import check_dataset
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            d = root / split / wnid
            d.mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(d / "a.JPEG", format="JPEG")
    (root / "train" / "__MACOSX").mkdir()   # an unpacking leftover would become class 0
    Image.new("RGB", (8, 8)).save(root / "train" / "__MACOSX" / "x.JPEG", format="JPEG")
    (root / "train" / "n01440764" / "html.JPEG").write_bytes(b"<html>rate limited</html>")
    (root / "train" / "n01440764" / "empty.JPEG").write_bytes(b"")
    good = (root / "val" / "n01440764" / "a.JPEG").read_bytes()
    (root / "val" / "n01440764" / "cut.JPEG").write_bytes(good[: len(good) // 2])
    report = check_dataset("imagenet", root)
    text = "\n".join(report.problems)
    assert "train/: 1 class folder(s) are not WordNet ids (ImageNet's look like n01440764): __MACOSX" in text
    assert "train/n01440764/html.JPEG: not a JPEG or PNG (starts with b'<html>ra')" in text
    assert "train/n01440764/empty.JPEG: empty file" in text
    assert "cut.JPEG" not in text                       # the header is fine: only decoding finds it
    decoded = "\n".join(check_dataset("imagenet", root, decode_images=True).problems)
    assert "val/n01440764/cut.JPEG: cannot be decoded" in decoded
