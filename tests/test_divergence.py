"""Feature divergence (IBN-Net sec. 4.3): the KL formula, streaming statistics, the dead-channel rule,
the instance-normalization invariance it is meant to show, the report files and the image-set reader."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from torch.distributions import Normal, kl_divergence
from torch.nn import functional as F

import ibnnet  # noqa: F401  (registers the models in timm)
from ibnnet.analysis import (
    ChannelStats,
    ImageSet,
    channel_statistics,
    divergence_report,
    feature_divergence,
    main_path_relus,
    parse_image_set,
    run_divergence,
    symmetric_kl,
)

IMAGENET_MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)


def _t(*v):
    return torch.tensor(v, dtype=torch.float64)


# ---------------------------------------------------------------------------------------- formula

def test_symmetric_kl_of_identical_gaussians_is_zero():
    m, s = _t(0.0, 3.0, -2.5), _t(1.0, 0.01, 7.0)
    assert torch.allclose(symmetric_kl(m, s, m, s), torch.zeros(3, dtype=torch.float64), atol=1e-12)


def test_symmetric_kl_known_values():
    # N(0,1) vs N(1,2): KL(A||B) = ln2 + (1+1)/8 - 1/2, KL(B||A) = -ln2 + (4+1)/2 - 1/2; sum = 1.75.
    # N(2,0.5) vs N(2,1): ln2 + 0.25/2 - 1/2 + (-ln2) + 1/0.5 - 1/2 = 1.125.
    d = symmetric_kl(_t(0.0, 2.0), _t(1.0, 0.5), _t(1.0, 2.0), _t(2.0, 1.0))
    assert d.tolist() == pytest.approx([1.75, 1.125], abs=1e-12)


def test_symmetric_kl_is_symmetric_and_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    ma, mb = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    sa, sb = (torch.rand(50, generator=g, dtype=torch.float64) + 0.1 for _ in range(2))
    ab, ba = symmetric_kl(ma, sa, mb, sb), symmetric_kl(mb, sb, ma, sa)
    assert torch.allclose(ab, ba, rtol=1e-12)
    A, B = Normal(ma, sa), Normal(mb, sb)
    assert torch.allclose(ab, kl_divergence(A, B) + kl_divergence(B, A), rtol=1e-10)


def test_zero_std_needs_eps():
    # A zero std on one side only: the true divergence is infinite; eps keeps it finite and large.
    assert math.isinf(symmetric_kl(_t(0.0), _t(0.0), _t(1.0), _t(1.0)).item())
    finite = symmetric_kl(_t(0.0), _t(0.0), _t(1.0), _t(1.0), eps=1e-4).item()
    assert 1e3 < finite < math.inf


def test_dead_channels_are_left_out_of_the_average():
    live = ((0.0, 1.0), (1.0, 2.0))  # (mean, std) in A, in B: divergence 1.75
    a = [ChannelStats(_t(0.0, live[0][0], 0.0), _t(0.0, live[0][1], 0.0))]
    b = [ChannelStats(_t(0.0, live[1][0], 0.0), _t(0.0, live[1][1], 0.0))]
    # Two channels dead in both sets: 1.75, not 1.75 / 3.
    assert feature_divergence(a, b) == pytest.approx([1.75], rel=1e-3)
    # Everything dead: nothing differs.
    z = [ChannelStats(_t(0.0, 0.0), _t(0.0, 0.0))]
    assert feature_divergence(z, z) == [0.0]


def test_one_sided_constant_channel_is_finite_and_scale_invariant():
    a = [ChannelStats(_t(0.0, 0.0), _t(1.0, 0.0))]   # channel 1 constant (dead) in A only
    b = [ChannelStats(_t(1.0, 0.5), _t(2.0, 0.3))]
    d = feature_divergence(a, b)[0]
    assert math.isfinite(d) and d > 100
    # The eps is relative to the layer's variance, so like KL itself the result ignores the feature scale.
    k = 1000.0
    a_k = [ChannelStats(s.mean * k, s.std * k) for s in a]
    b_k = [ChannelStats(s.mean * k, s.std * k) for s in b]
    assert feature_divergence(a_k, b_k)[0] == pytest.approx(d, rel=1e-9)


# ------------------------------------------------------------------------------------- statistics

def test_main_path_relus_counts():
    r50 = timm.create_model("resnet50_bn", num_classes=10)
    relus = main_path_relus(r50)
    assert len(relus) == 17
    assert [n for n, _ in relus][:3] == ["stem", "layer1.0", "layer1.1"] and relus[-1][0] == "layer4.2"
    assert relus[0][1] is r50.act1 and relus[1][1] is r50.layer1[0].act3
    r18 = timm.create_model("resnet18_ibn_b", num_classes=10)
    relus = main_path_relus(r18)
    assert len(relus) == 9 and relus[-1][1] is r18.layer4[1].act2
    with pytest.raises(TypeError):
        main_path_relus(torch.nn.Linear(2, 2))


def test_streaming_statistics_equal_direct_computation():
    torch.manual_seed(0)
    model = timm.create_model("resnet18_bn", num_classes=10)
    model.train()
    x = torch.randn(11, 3, 32, 32)
    batches = [x[:3], x[3:8], x[8], x[9:]]  # uneven sizes, one bare (C, H, W) image
    stats = channel_statistics(model, batches, "cpu")
    assert model.training  # mode restored

    feats: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: feats.append(o.mean(dim=(2, 3)).double()))
             for _, m in main_path_relus(model)]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert len(stats) == len(feats) == 9
    for (mean, std), f in zip(stats, feats):
        assert mean.shape == (f.shape[1],)
        assert torch.allclose(mean, f.mean(dim=0), rtol=1e-5, atol=1e-7)
        assert torch.allclose(std, f.std(dim=0), rtol=1e-4, atol=1e-7)


def _textures(n: int, size: int, seed: int) -> torch.Tensor:
    """Random multi-scale colour textures in [0, 1]-ish pixel space, varied in shape across images."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 1, 1, generator=g) * 0.4 + 0.3
    for cells in (2, 4, 8, 16):
        w = torch.rand(n, 1, 1, 1, generator=g) * 0.15
        noise = torch.rand(n, 3, cells, cells, generator=g) - 0.5
        x = x + w * F.interpolate(noise, size=size, mode="bicubic", align_corners=False)
    return x


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def test_identical_sets_have_zero_divergence(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("resnet18_bn", num_classes=10)
    for i, img in enumerate(_textures(6, 40, seed=3)):
        arr = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
    ds = ImageSet(tmp_path, image_size=32)
    names, results = run_divergence({"bn": model}, ds, ds, batch_size=4, device="cpu", num_workers=0)
    assert names == [n for n, _ in main_path_relus(model)] and len(names) == 9
    assert results["bn"] == pytest.approx([0.0] * 9, abs=1e-9)


def test_instance_norm_stem_removes_brightness_contrast_divergence():
    """IBN-b's stem IN cancels a per-image affine appearance change; BN (eval, fixed stats) cannot."""
    n, size = 32, 48
    set_a = _normalize(_textures(n, size, seed=1))
    x = _textures(n, size, seed=2)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    set_b = _normalize((x - m) * 1.5 + m + 0.15)  # contrast x1.5 about the image mean, brightness +0.15

    torch.manual_seed(0)
    bn = timm.create_model("resnet18_bn", num_classes=10)
    ibn = timm.create_model("resnet18_ibn_b", num_classes=10)
    target = ibn.state_dict()
    shared = {k: v for k, v in bn.state_dict().items() if k in target and target[k].shape == v.shape}
    missing, _ = ibn.load_state_dict(shared, strict=False)
    assert sorted(missing) == ["layer1.1.IN.bias", "layer1.1.IN.weight", "layer2.1.IN.bias", "layer2.1.IN.weight"]

    stem = {}
    for label, model in (("bn", bn), ("ibn_b", ibn)):
        # Realistic BN statistics: the exact average over domain A (momentum=None), as after training on A.
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = None
                mod.reset_running_stats()
        model.train()
        with torch.no_grad():
            for chunk in set_a.split(8):
                model(chunk)
        d = feature_divergence(channel_statistics(model, set_a.split(16)), channel_statistics(model, set_b.split(16)))
        stem[label] = d[0]
    print(f"stem divergence: BN {stem['bn']:.3f}, IBN-b {stem['ibn_b']:.3f}")
    assert stem["bn"] > 1.0
    assert stem["ibn_b"] * 4 < stem["bn"]


# ----------------------------------------------------------------------------------------- report

def test_divergence_report_writes_three_files(tmp_path):
    layers = ["stem", "layer1.0", "layer1.1"]
    results = {"BN": [0.5, 1.25, 2.0], "IBN-b": [0.1, 0.2, 0.3]}
    out = tmp_path / "report"
    paths = divergence_report(results, layers, out, "photo vs Monet")
    assert set(paths) == {"csv", "md", "png"}
    assert all(p.is_file() and p.parent == out for p in paths.values())
    with open(paths["csv"], newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["layer", "BN", "IBN-b"]
    assert [r[0] for r in rows[1:]] == layers
    assert [float(r[1]) for r in rows[1:]] == results["BN"] and float(rows[2][2]) == 0.2
    md = paths["md"].read_text()
    assert "photo vs Monet" in md and "| layer1.0 | 1.25 | 0.2 |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["divergence.csv", "divergence.md", "divergence.png"]
    with pytest.raises(ValueError):
        divergence_report({"BN": [1.0]}, layers, out, "bad")


# ------------------------------------------------------------------------------------- image sets

def _save(path: Path, size=(40, 30), color=(10, 20, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _tree(root: Path) -> None:
    _save(root / "n00_cls" / "a.png")
    _save(root / "n01_cls" / "b.JPG")
    _save(root / "n01_cls" / "sub" / "c.jpeg")
    _save(root / "n02_cls" / "d.Png")
    _save(root / "n02_cls" / "e.png")
    _save(root / "n03_cls" / "f.jpg")
    (root / "n02_cls" / "notes.txt").write_text("not an image")


def test_image_set_lists_recursively_and_filters_class_range(tmp_path):
    _tree(tmp_path)
    everything = ImageSet(tmp_path, image_size=16)
    assert sorted(p.name for p in everything.files) == ["a.png", "b.JPG", "c.jpeg", "d.Png", "e.png", "f.jpg"]
    middle = ImageSet(tmp_path, image_size=16, classes=(1, 2))
    assert sorted(p.name for p in middle.files) == ["b.JPG", "c.jpeg", "d.Png", "e.png"]
    assert [p.name for p in ImageSet(tmp_path, image_size=16, classes=(3, 3)).files] == ["f.jpg"]
    with pytest.raises(ValueError):
        ImageSet(tmp_path, classes=(2, 4))


def test_image_set_max_images_is_a_seeded_subset(tmp_path):
    _tree(tmp_path)
    full = set(ImageSet(tmp_path).files)
    sub = ImageSet(tmp_path, max_images=3, seed=1)
    assert len(sub) == 3 and set(sub.files) <= full
    assert ImageSet(tmp_path, max_images=3, seed=1).files == sub.files
    assert {tuple(ImageSet(tmp_path, max_images=3, seed=s).files) for s in range(10)} != {tuple(sub.files)}
    assert len(ImageSet(tmp_path, max_images=100)) == 6


def test_image_set_resizes_crops_and_normalizes(tmp_path):
    color = (200, 100, 50)
    _save(tmp_path / "wide.png", size=(64, 40), color=color)
    img = ImageSet(tmp_path, image_size=24)[0]
    assert img.shape == (3, 24, 24) and img.dtype == torch.float32
    expected = (torch.tensor(color).float() / 255 - IMAGENET_MEAN.view(3)) / IMAGENET_STD.view(3)
    assert torch.allclose(img.mean(dim=(1, 2)), expected, atol=1e-5)
    with pytest.raises(FileNotFoundError):
        ImageSet(tmp_path / "missing")


def test_parse_image_set():
    assert parse_image_set("/data/imagenet/val:0-499") == (Path("/data/imagenet/val"), (0, 499))
    assert parse_image_set("/data/imagenet/val:500-999") == (Path("/data/imagenet/val"), (500, 999))
    assert parse_image_set("/data/gta5/images") == (Path("/data/gta5/images"), None)
    assert parse_image_set("C:/photos") == (Path("C:/photos"), None)
    with pytest.raises(ValueError):
        parse_image_set("/data/val:9-3")


def test_missing_images_are_reported_before_any_weights_are_loaded(tmp_path, monkeypatch):
    """A wrong image folder is found in a second, not after the models' weights were downloaded."""
    from test_cli import run_cli

    def no_download(*args, **kwargs):
        raise AssertionError("weights were loaded before the image folders were checked")
    monkeypatch.setattr("ibnnet.commands.analyze._load_models", no_download)
    code, out, err = run_cli("analyze", "divergence", "--set-a", tmp_path / "nowhere", "--set-b", tmp_path / "none",
                             "--model", "resnet50_ibn_a", "--out", tmp_path / "out")
    assert code == 2 and "nowhere" in err and "Traceback" not in err, err
