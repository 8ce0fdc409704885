"""The two-domain synthetic datasets: determinism, shared geometry, distinct appearance."""
import pickle

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ibnnet.data.datasets.synthetic import (
    DEFAULT_NUM_SAMPLES,
    DOMAINS,
    SCENE_CLASSES,
    SHAPE_CLASSES,
    SPLITS,
    SyntheticScenes,
    SyntheticShapes,
)

DATASETS = [SyntheticShapes, SyntheticScenes]


def _target_tensor(t):
    return torch.as_tensor(t) if isinstance(t, int) else t.as_subclass(torch.Tensor)


def _equal(a, b) -> bool:
    return torch.equal(a[0], b[0]) and torch.equal(_target_tensor(a[1]), _target_tensor(b[1]))


def _channel_stats(ds, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = torch.stack([ds[i][0].as_subclass(torch.Tensor) for i in range(n)]).float() / 255
    return x.mean(dim=(0, 2, 3)).numpy(), x.std(dim=(2, 3)).mean(dim=0).numpy()


def test_constants():
    assert len(SHAPE_CLASSES) == 10 == SyntheticShapes.num_classes
    assert 6 <= len(SCENE_CLASSES) <= 8 and SyntheticScenes.num_classes == len(SCENE_CLASSES)
    assert SCENE_CLASSES[:5] == ("road", "sidewalk", "building", "vegetation", "sky")
    assert set(DEFAULT_NUM_SAMPLES) == set(SPLITS)


@pytest.mark.parametrize("cls", DATASETS)
def test_default_sizes(cls):
    for split in SPLITS:
        assert len(cls(split)) == DEFAULT_NUM_SAMPLES[split]
    assert len(cls("val", num_samples=7)) == 7
    assert 2000 <= DEFAULT_NUM_SAMPLES["train"] <= 4000


def test_shapes_item_types():
    ds = SyntheticShapes("val", "real")
    for i in range(5):
        img, label = ds[i]
        assert type(img) is tv_tensors.Image and img.dtype == torch.uint8 and img.shape == (3, 64, 64)
        assert type(label) is int and 0 <= label < ds.num_classes
        assert ds.label(i) == label


def test_scenes_item_types():
    ds = SyntheticScenes("val", "real")
    for i in range(5):
        img, mask = ds[i]
        assert type(img) is tv_tensors.Image and img.dtype == torch.uint8 and img.shape == (3, 64, 64)
        assert type(mask) is tv_tensors.Mask and mask.dtype == torch.uint8 and mask.shape == (64, 64)
        assert int(mask.max()) < ds.num_classes


@pytest.mark.parametrize("cls", DATASETS)
@pytest.mark.parametrize("domain", DOMAINS)
def test_deterministic_across_instances(cls, domain):
    a, b = cls("train", domain, seed=3), cls("train", domain, seed=3)
    for i in (0, 1, 17, 2999):
        assert _equal(a[i], b[i])
        assert _equal(a[i], a[i])  # cached path gives the same bytes as the render path


@pytest.mark.parametrize("cls", DATASETS)
def test_seed_changes_scenes(cls):
    a, b = cls("train", seed=0), cls("train", seed=1)
    assert sum(torch.equal(a[i][0], b[i][0]) for i in range(8)) == 0


@pytest.mark.parametrize("cls", DATASETS)
def test_splits_do_not_share_scenes(cls):
    per_split = {s: [cls(s)[i][0] for i in range(16)] for s in SPLITS}
    for s in SPLITS:
        for t in SPLITS:
            if s < t:
                assert not any(torch.equal(x, y) for x in per_split[s] for y in per_split[t])


def test_shapes_same_label_across_domains_different_pixels():
    syn, real = SyntheticShapes("train", "synthetic"), SyntheticShapes("train", "real")
    for i in range(40):
        (xs, ys), (xr, yr) = syn[i], real[i]
        assert ys == yr
        assert not torch.equal(xs, xr)


def test_scenes_same_mask_across_domains():
    syn, real = SyntheticScenes("test", "synthetic"), SyntheticScenes("test", "real")
    for i in range(20):
        (xs, ms), (xr, mr) = syn[i], real[i]
        assert torch.equal(ms, mr)
        assert not torch.equal(xs, xr)


def test_same_geometry_in_pixels():
    # The object must sit in the same place in both domains: the pixels that change most
    # between background and shape in the flat rendering mark the same region in the real one.
    syn, real = SyntheticShapes("val", "synthetic"), SyntheticShapes("val", "real")
    for i in range(10):
        xs = syn[i][0].float()
        corner = xs[:, 0, 0].view(3, 1, 1)  # shapes never reach the corner pixel
        inside = (xs - corner).abs().sum(0) > 30
        xr = real[i][0].float()
        diff = (xr[:, inside].mean(1) - xr[:, ~inside].mean(1)).abs().sum()
        noise = (xr[:, ~inside].std(1)).mean()
        assert diff > 3 * noise, i


@pytest.mark.parametrize("cls", DATASETS)
def test_domains_differ_in_statistics(cls):
    mean_s, std_s = _channel_stats(cls("val", "synthetic"), 48)
    mean_r, std_r = _channel_stats(cls("val", "real"), 48)
    # Real: lower contrast and a warm cast (red raised relative to blue).
    assert (std_r < 0.8 * std_s).all(), (std_s, std_r)
    assert (mean_r[0] - mean_r[2]) - (mean_s[0] - mean_s[2]) > 0.05, (mean_s, mean_r)


def test_synthetic_domain_is_flat():
    # Flat colours: away from the anti-aliased edge a shape image has exactly two colours.
    ds = SyntheticShapes("train", "synthetic")
    for i in range(10):
        colours = ds[i][0].reshape(3, -1).T.unique(dim=0, return_counts=True)[1]
        assert colours.sort(descending=True).values[:2].sum() > 0.9 * 64 * 64


def test_every_shape_class_occurs():
    ds = SyntheticShapes("train")
    counts = np.bincount([ds.label(i) for i in range(300)], minlength=ds.num_classes)
    assert (counts >= 10).all(), counts


def test_shape_colour_independent_of_class():
    # The same class must come in many colours, and the mean colour must not reveal the class.
    ds = SyntheticShapes("train")
    means = {c: [] for c in range(ds.num_classes)}
    for i in range(200):
        img, label = ds[i]
        means[label].append(img.float().mean(dim=(1, 2)))
    per_class = torch.stack([torch.stack(m).mean(0) for m in means.values()])
    spread_within = torch.stack([torch.stack(m).std(0) for m in means.values()]).mean()
    assert per_class.std(0).max() < 0.5 * spread_within


def test_every_scene_class_occurs_and_layout():
    ds = SyntheticScenes("train")
    masks = torch.stack([ds[i][1].as_subclass(torch.Tensor) for i in range(40)]).long()
    freq = torch.bincount(masks.flatten(), minlength=ds.num_classes).float() / masks.numel()
    assert (freq > 0.004).all(), dict(zip(SCENE_CLASSES, freq.tolist()))
    # Every scene shows road, sky and at least one car, person and pole.
    for cls in ("road", "sky", "car", "person", "pole"):
        k = SCENE_CLASSES.index(cls)
        assert (masks == k).flatten(1).any(1).float().mean() > 0.9, cls
    top, bottom = masks[:, :6], masks[:, -6:]
    assert (top == SCENE_CLASSES.index("sky")).float().mean() > 0.3
    assert (top == SCENE_CLASSES.index("road")).sum() == 0
    assert (bottom == SCENE_CLASSES.index("road")).float().mean() > 0.3
    assert (bottom == SCENE_CLASSES.index("sky")).sum() == 0


def test_scene_colours_vary_per_scene():
    # A class must not be a colour lookup: the mean road colour differs between scenes.
    ds = SyntheticScenes("train")
    road = SCENE_CLASSES.index("road")
    colours = torch.stack([img[:, mask == road].float().mean(1) for img, mask in (ds[i] for i in range(10))])
    assert colours.std(0).min() > 5


@pytest.mark.parametrize("cls", DATASETS)
@pytest.mark.parametrize("size", [32, 96, 128])
def test_other_image_sizes(cls, size):
    for domain in DOMAINS:
        img, target = cls("val", domain, image_size=size)[0]
        assert img.shape == (3, size, size) and img.dtype == torch.uint8
        if cls is SyntheticScenes:
            assert target.shape == (size, size)


@pytest.mark.parametrize("cls", DATASETS)
def test_pickle_roundtrip(cls):
    ds = cls("val", "real", num_samples=50, seed=2)
    before = [ds[i] for i in range(5)]
    blob = pickle.dumps(ds)
    assert len(blob) < 10_000  # the render cache is not shipped to workers
    clone = pickle.loads(blob)
    assert len(clone) == 50 and clone.domain == "real" and clone.seed == 2
    assert all(_equal(b, clone[i]) for i, b in enumerate(before))


def test_cache_survives_in_place_edits():
    ds = SyntheticScenes("val")
    img, mask = ds[0]
    ref_img, ref_mask = img.clone(), mask.clone()
    img.zero_()
    mask.fill_(7)
    assert torch.equal(ds[0][0], ref_img) and torch.equal(ds[0][1], ref_mask)


def test_indexing():
    ds = SyntheticShapes("val", num_samples=10)
    assert torch.equal(ds[-1][0], ds[9][0])
    with pytest.raises(IndexError):
        ds[10]
    with pytest.raises(IndexError):
        ds[-11]


@pytest.mark.parametrize("kwargs", [
    {"split": "training"}, {"domain": "photo"}, {"num_samples": -1}, {"seed": -1}, {"image_size": 8},
])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        SyntheticShapes(**kwargs)


def test_transforms_apply_to_image_and_mask_together():
    plain = SyntheticScenes("val")
    flipped = SyntheticScenes("val", transforms=v2.RandomHorizontalFlip(p=1.0))
    img, mask = flipped[3]
    assert torch.equal(img, plain[3][0].flip(-1)) and torch.equal(mask, plain[3][1].flip(-1))


def test_dataloader_collates():
    loader = torch.utils.data.DataLoader(SyntheticShapes("val", num_samples=8), batch_size=4)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.uint8 and y.shape == (4,)
