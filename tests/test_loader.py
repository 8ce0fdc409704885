"""The fast loader (issue 11): uint8 workers + device-side normalisation equal to the old float pipeline,
the same augmentation distribution as torchvision's classic pipeline, `ibnnet data shrink imagenet`
(sizes, labels, resume, progress) and the reduced scales' selection of the shrunk copy."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import default_collate
from torchvision import datasets, tv_tensors
from torchvision import transforms as T
from torchvision.transforms import v2

from ibnnet.config.schema import AugmentConfig, DataConfig, DatasetSpec
from ibnnet.data.datasets.imagenet import ImageNet
from ibnnet.data.registry import build_dataset
from ibnnet.data.datasets.imagenet import select_shrunk
from ibnnet.data.tools.shrink import MARKER, shrink_imagenet, target_size
from ibnnet.data.transforms.pipeline import (
    RandomScaleAspect,
    TransformedDataset,
    build_transform,
    normalize_batch,
    prepare_batch,
)

STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth colour field + edges + mild noise: exercises resampling like a photo, stays JPEG-friendly."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC)).astype(np.int16)
    img[h // 3: h // 2, w // 4: w // 2] = rng.integers(0, 256, 3)
    img += rng.integers(-6, 7, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def save(path: Path, arr: np.ndarray, fmt: str = "JPEG", mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    im.save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def spec(dataset: str = "imagenet", split: str = "train") -> DatasetSpec:
    return OmegaConf.structured(DatasetSpec(name="t", dataset=dataset, split=split))


def aug(**kw) -> AugmentConfig:
    return OmegaConf.structured(AugmentConfig(**kw))


def pixels(normalised: torch.Tensor) -> torch.Tensor:
    """Normalised image -> [0, 1] pixel values."""
    return normalised * STD + MEAN


# ----------------------------------------------------------------------------------------------------------
# uint8 pipeline + device-side normalisation == the old worker-side float pipeline


@pytest.mark.parametrize("policy,train", [("imagenet", True), ("imagenet", False), ("light", True),
                                          ("segmentation", True), ("segmentation", False)])
def test_uint8_pipeline_plus_device_normalisation_equals_old_float_path(policy, train):
    g = torch.Generator().manual_seed(0)
    image = tv_tensors.Image(torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8, generator=g))
    target = (tv_tensors.Mask(torch.randint(0, 19, (70, 90), dtype=torch.uint8, generator=g))
              if policy == "segmentation" else 3)
    a = aug(image_size=48, eval_resize=56, crop_size=[40, 60])
    old = TransformedDataset([(image, target)], build_transform(spec(), policy, a, train, normalize=True))
    new = TransformedDataset([(image, target)], build_transform(spec(), policy, a, train))
    for epoch in range(4):   # items are seeded per (epoch, index): four different augmentation draws
        x_old, y_old, _ = default_collate([old[(epoch, 0)]])
        x_new, y_new, _ = default_collate([new[(epoch, 0)]])
        assert x_new.dtype == torch.uint8 and x_old.dtype == torch.float32
        x_dev, y_dev = prepare_batch((x_new, y_new))
        assert torch.equal(x_dev, x_old), "device-side normalisation must be bit-identical"
        assert torch.equal(y_dev, y_old) and y_dev.dtype == y_old.dtype
    if policy == "segmentation":
        assert y_new.dtype == torch.uint8  # masks travel as uint8, become int64 on the device


def test_normalize_batch_leaves_float_alone_and_rejects_other_dtypes():
    x = torch.randn(2, 3, 4, 4)
    assert normalize_batch(x) is x
    with pytest.raises(TypeError, match="int16"):
        normalize_batch(torch.zeros(1, 3, 2, 2, dtype=torch.int16))


def test_task_normalises_on_the_device_and_accepts_uint8_in_forward():
    from ibnnet.config import compose
    from ibnnet.tasks import TASKS
    cfg = compose("configs/demo.yaml", ["model.name=resnet18_bn"])
    task = TASKS["classification"](OmegaConf.to_container(cfg, resolve=True), 4, []).eval()
    x8 = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    old = T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)(x8.float() / 255)
    x, y = task.on_after_batch_transfer((x8, torch.tensor([1, 2])), 0)
    torch.testing.assert_close(x, old, rtol=0, atol=1e-6)
    assert y.tolist() == [1, 2]
    with torch.no_grad():
        # The SN batch-average callback calls the module on the loader's raw (uint8) images.
        torch.testing.assert_close(task(x8), task(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------
# Same images as torchvision's classic PIL pipeline (eval) and the same augmentation distribution (train)

# Tolerance: 1/255 in [0, 1] pixel units (one uint8 level). Both decoders are libjpeg-turbo (same pixels);
# the resize kernels differ: PIL's and torch's antialiased bilinear filters are the same triangle filter
# but use different fixed-point rounding, so a pixel may land one level apart; nothing more.
TOL = 1 / 255 + 1e-6


@pytest.fixture
def jpeg_tree(tmp_path):
    for i in range(3):
        save(tmp_path / "train" / "n0001" / f"a{i}.JPEG", photo(150 + 7 * i, 200 - 11 * i, i))
    return tmp_path


def test_eval_transform_matches_torchvision_pil_within_one_level(jpeg_tree):
    a = aug(image_size=96, eval_resize=110)
    ours = TransformedDataset(ImageNet(jpeg_tree, "train"), build_transform(spec(), "imagenet", a, train=False))
    theirs = datasets.ImageFolder(str(jpeg_tree / "train"), transform=T.Compose([
        T.Resize(110), T.CenterCrop(96), T.ToTensor(), T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]))
    for i in range(len(ours)):
        x = normalize_batch(ours[i][0][None])[0]
        ref = theirs[i][0]
        assert x.shape == ref.shape == (3, 96, 96)
        assert (pixels(x) - pixels(ref)).abs().max() <= TOL


def test_train_augmentation_draws_the_same_crops_and_flips_as_torchvision(jpeg_tree):
    a = aug(image_size=64)
    transform = build_transform(spec(), "imagenet", a, train=True)
    rrc = next(t for t in transform.transforms if isinstance(t, v2.RandomResizedCrop))
    flip = next(t for t in transform.transforms if isinstance(t, v2.RandomHorizontalFlip))
    assert rrc.scale == (0.08, 1.0) and rrc.ratio == pytest.approx((3 / 4, 4 / 3)) and flip.p == 0.5
    # The transform itself (TransformedDataset would re-seed each sample from (seed, epoch, index)).
    ours = ImageNet(jpeg_tree, "train")
    theirs = datasets.ImageFolder(str(jpeg_tree / "train"), transform=T.Compose([
        T.RandomResizedCrop(64), T.RandomHorizontalFlip(), T.ToTensor(),
        T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]))
    states = set()
    for seed in range(12):
        torch.manual_seed(seed)
        x = normalize_batch(transform(*ours[seed % 3])[0].as_subclass(torch.Tensor)[None])[0]
        torch.manual_seed(seed)
        ref = theirs[seed % 3][0]
        # Same torch RNG draws -> same box and flip; a different box or flip would differ by far more.
        assert (pixels(x) - pixels(ref)).abs().max() <= TOL, seed
        torch.manual_seed(seed)  # replay torchvision's draws to see which flip state this seed tested
        T.RandomResizedCrop.get_params(Image.open(theirs.samples[seed % 3][0]), [0.08, 1.0], [3 / 4, 4 / 3])
        states.add(bool(torch.rand(1) < 0.5))
    # Both flip states occurred, so the comparison exercised flipped and unflipped crops.
    assert states == {True, False}


def test_segmentation_scale_draws_from_torch_rng_only():
    t = RandomScaleAspect([0.5, 2.0], [0.8, 1.25])
    img = tv_tensors.Image(torch.zeros(3, 40, 60, dtype=torch.uint8))
    sizes = []
    for py_seed in (1, 2):
        random.seed(py_seed)
        np.random.seed(py_seed)
        torch.manual_seed(7)
        sizes.append(t.make_params([img])["size"])
    assert sizes[0] == sizes[1]
    torch.manual_seed(8)
    assert t.make_params([img])["size"] != sizes[0]


# ----------------------------------------------------------------------------------------------------------
# ibnnet data shrink imagenet


def write_tree(root: Path) -> dict[str, tuple[int, int]]:
    """Train: 2 classes with landscape, portrait, small, grey, CMYK and PNG-named-.JPEG images; val: 1 class."""
    sizes = {
        "train/n01/land.JPEG": (96, 64), "train/n01/port.JPEG": (60, 90), "train/n01/small.JPEG": (30, 20),
        "train/n02/grey.JPEG": (80, 48), "train/n02/cmyk.JPEG": (64, 64), "train/n02/fake.JPEG": (72, 40),
        "train/n02/pic.png": (50, 100), "val/n01/v.JPEG": (64, 96),
    }
    for i, (rel, (w, h)) in enumerate(sizes.items()):
        arr = photo(h, w, i)
        if "grey" in rel:
            save(root / rel, arr, mode="L")
        elif "cmyk" in rel:
            save(root / rel, arr, mode="CMYK")
        elif "fake" in rel or rel.endswith(".png"):
            save(root / rel, arr, fmt="PNG")
        else:
            save(root / rel, arr)
    return sizes


def run_cli(*args) -> tuple[int, str, str]:
    from ibnnet.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def test_shrink_sizes_labels_progress_and_resume(tmp_path):
    src, dst = tmp_path / "imagenet", tmp_path / "imagenet-24"
    sizes = write_tree(src)
    code, out, err = run_cli("data", "shrink", "imagenet", src, "--short-side", 24, "--workers", 2, "--progress")
    assert code == 0, out + err
    assert "shrink train" in err and "7/7" in err and "shrink val" in err  # tqdm progress per split
    assert "train: 6 resized, 1 copied" in out  # only small.JPEG is already small enough
    for rel, (w, h) in sizes.items():
        name = rel if not rel.endswith(".png") else rel[:-4] + ".JPEG"
        with Image.open(dst / name) as im:
            assert im.format == "JPEG" and im.mode in ("RGB", "L"), rel
            assert im.size == target_size(w, h, 24), rel
            assert min(im.size) == min(24, w, h)
    assert (dst / "train/n01/small.JPEG").read_bytes() == (src / "train/n01/small.JPEG").read_bytes()
    assert Image.open(dst / "train/n02/cmyk.JPEG").mode == "RGB"
    # Content: the orientation and resampling are right (close to torchvision's antialiased resize).
    orig = torch.from_numpy(np.array(Image.open(src / "train/n01/land.JPEG"))).permute(2, 0, 1)
    ref = v2.functional.resize(orig, [24], antialias=True).float()
    got = torch.from_numpy(np.array(Image.open(dst / "train/n01/land.JPEG"))).permute(2, 0, 1).float()
    assert (got - ref).abs().mean() < 4
    # Labels and folders unchanged.
    a, b = ImageNet(src, "train"), ImageNet(dst, "train")
    assert a.classes == b.classes and a.targets == b.targets
    assert [Path(p).stem for p, _ in a.samples] == [Path(p).stem for p, _ in b.samples]
    marker = json.loads((dst / MARKER).read_text())
    assert marker["short_side"] == 24 and marker["quality"] == 90
    assert marker["splits"] == {"train": {"images": 7, "complete": True}, "val": {"images": 1, "complete": True}}

    # Resume: a deleted output is redone, a stale temporary removed, finished files untouched.
    (dst / "train/n01/port.JPEG").unlink()
    (dst / "train/n02/.grey.JPEG.123.tmp").write_bytes(b"partial")
    before = {p: p.stat().st_mtime_ns for p in dst.rglob("*.JPEG")}
    res = shrink_imagenet(src, dst, 24, workers=1, progress=False)
    assert (res["train"].written, res["train"].copied, res["train"].skipped) == (1, 0, 6)
    assert res["val"].skipped == 1 and res["val"].written == 0
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert (dst / "train/n01/port.JPEG").is_file() and not (dst / "train/n02/.grey.JPEG.123.tmp").exists()

    # Other settings on the same copy would mix resolutions: refused, naming the marker.
    code, out, err = run_cli("data", "shrink", "imagenet", src, dst, "--short-side", 32, "--no-progress")
    assert code == 2 and MARKER in err and "short side 24" in err


def test_shrink_reports_unreadable_images_and_leaves_the_split_incomplete(tmp_path):
    src = tmp_path / "imagenet"
    save(src / "train/n01/ok.JPEG", photo(40, 50, 0))
    (src / "train/n01/broken.JPEG").write_bytes(b"not an image")
    code, out, err = run_cli("data", "shrink", "imagenet", src, "--short-side", 16, "--no-progress", "--workers", 1)
    assert code == 1 and "broken.JPEG" in err
    marker = json.loads((tmp_path / "imagenet-16" / MARKER).read_text())
    assert marker["splits"]["train"]["complete"] is False
    assert select_shrunk(src, 16, "train") is None


def test_shrink_rejects_bad_arguments(tmp_path):
    src = tmp_path / "imagenet"
    save(src / "train/n01/a.JPEG", photo(40, 50, 0))
    with pytest.raises(ValueError, match="short-side"):
        shrink_imagenet(src, tmp_path / "out", 4)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not a copy made by"):
        shrink_imagenet(src, tmp_path / "foreign", 24)
    with pytest.raises(FileNotFoundError, match="neither train/ nor val/"):
        shrink_imagenet(tmp_path / "foreign", tmp_path / "out", 24)


# ----------------------------------------------------------------------------------------------------------
# The reduced scales read the shrunk copy when it is complete


def test_dataset_selects_the_complete_shrunk_copy_for_training_only(tmp_path, caplog):
    src = tmp_path / "imagenet"
    for split in ("train", "val"):
        for c in ("n01", "n02"):
            save(src / split / c / "a.JPEG", photo(48, 64, 0))
    data = OmegaConf.structured(DataConfig(shrunk_short_side=24))
    assert build_dataset(spec(split="train"), tmp_path, data).shrunk is None  # no copy yet: originals
    shrink_imagenet(src, tmp_path / "imagenet-24", 24, progress=False)

    train = build_dataset(spec(split="train"), tmp_path, data)
    assert train.root == tmp_path / "imagenet-24"
    assert train.shrunk == {"root": str(tmp_path / "imagenet-24"), "original_root": str(src), "short_side": 24,
                            "jpeg_quality": 90}
    assert min(train[0][0].shape[-2:]) == 24
    val = build_dataset(spec(split="val"), tmp_path, data)
    assert val.root == src and val.shrunk is None  # evaluation always reads the originals
    off = build_dataset(spec(split="train"), tmp_path, OmegaConf.structured(DataConfig()))
    assert off.root == src and off.shrunk is None

    # An unfinished copy (killed run) is not used, with a warning saying how to finish it.
    marker = json.loads((tmp_path / "imagenet-24" / MARKER).read_text())
    marker["splits"]["train"]["complete"] = False
    (tmp_path / "imagenet-24" / MARKER).write_text(json.dumps(marker))
    with caplog.at_level(logging.WARNING, logger="ibnnet"):
        logging.getLogger("ibnnet").propagate = True
        try:
            ds = build_dataset(spec(split="train"), tmp_path, data)
        finally:
            logging.getLogger("ibnnet").propagate = False
    assert ds.root == src and ds.shrunk is None
    assert "ibnnet data shrink imagenet" in caplog.text


def test_reduced_imagenet_scales_ask_for_the_shrunk_copy():
    import yaml
    for name in ("ibn_table1", "ibn_table2", "ibn_table3", "sn_table2"):
        scales = yaml.safe_load(Path(f"experiments/{name}.yaml").read_text())["scales"]
        assert scales["reduced"]["overrides"]["data.shrunk_short_side"] == 160, name
        assert "data.shrunk_short_side" not in (scales["full"].get("overrides") or {}), name
