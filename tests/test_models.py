"""The configurable ResNet: official layouts, parameter counts, variants, official outputs."""
from pathlib import Path

import pytest
import timm
import torch
from numerics import assert_close_to_float64
from reference import RefResNetIBN, randomize_, read_key_list
from torch import nn

import ibnnet
from ibnnet.layers import IBN, IBNConcat, PartialInstanceNorm2d, SwitchNorm2d
from ibnnet.models import MODELS, ResNet

KEYS = Path(__file__).resolve().parent / "data" / "official_keys"
OFFICIAL_PARAMS = {"resnet50_ibn_a": 25_557_032, "resnet50_ibn_b": 25_558_568, "resnet101_ibn_a": 44_549_160,
                   "resnext101_ibn_a": 44_177_704, "se_resnet101_ibn_a": 49_292_328, "resnet50_sn": 25_557_350}


def meta_model(name, **kw):
    with torch.device("meta"):
        return timm.create_model(name, **kw)


def test_registered_in_timm():
    names = set(timm.list_models("*ibn*"))
    expected = {f"resnet{d}_ibn_{v}" for d in (18, 34, 50, 101, 152) for v in "ab"}
    expected |= {"resnext101_ibn_a", "se_resnet101_ibn_a", "resnet50_ibn_c", "resnet50_ibn_d", "resnet50_ibn_ad",
                 "resnet50_ibn_a2"}
    assert expected <= names
    assert {"resnet50_sn", "resnet101_sn", "resnet50_gn32"} <= set(timm.list_models())
    assert "resnet50_ibn_a.official_in1k" in timm.list_models(pretrained=True)


def test_every_entry_point_says_what_it_is():
    from ibnnet.models import TIMM_WEIGHTS, releases_for
    kinds = {"bn": "BatchNorm", "gn32": "GroupNorm with 32 groups", "sn": "Switchable Normalization"}
    for name, (arch, flavour) in MODELS.items():
        doc = timm.models.model_entrypoint(name).__doc__ or ""
        assert kinds.get(flavour, f"IBN-{flavour[4:]}".replace("IBN-ad", "IBN-a&d").replace("IBN-a2", "IBN-a x2")
                         ) in doc, name
        assert "arXiv:" in doc and "\nPaper: " in doc and "\nWeights:\n" in doc, name
        for r in releases_for(name):
            assert r.file in doc and r.origin in doc and (r.top1 is None or f"top-1 {r.top1} %" in doc), name
        if not releases_for(name) and name not in TIMM_WEIGHTS:
            assert "none released (pretrained=True raises)" in doc, name
    doc = timm.models.model_entrypoint("resnet50_gn32").__doc__
    assert "timm's resnet50_gn.a1h_in1k ImageNet weights (hub timm/resnet50_gn.a1h_in1k" in doc
    assert "SN Table 2's GN row" in doc
    assert "IBN-Net Table 3" in ibnnet.models.zoo.resnet50_ibn_ad.__doc__
    assert "never released" in ibnnet.models.zoo.resnet50_ibn_ad.__doc__
    assert "IBN-Net50-a of IBN-Net Tables 1-6 and 8" in ibnnet.models.zoo.resnet50_ibn_a.__doc__


@pytest.mark.parametrize("name,count", sorted(OFFICIAL_PARAMS.items()))
def test_parameter_counts_equal_official(name, count):
    assert sum(p.numel() for p in meta_model(name).parameters()) == count


def test_all_official_key_lists_are_here():
    assert len(list(KEYS.glob("ibn_keys_*.txt"))) == 8 and (KEYS / "sn_keys_resnet50.txt").is_file()


@pytest.mark.parametrize("path", sorted(KEYS.glob("ibn_keys_*.txt")), ids=lambda p: p.stem)
def test_state_dict_layout_equals_official(path):
    name = path.stem[len("ibn_keys_"):]
    ref = read_key_list(path)
    own = {k: list(v.shape) for k, v in meta_model(name).state_dict().items()}
    assert sorted(own) == sorted(ref)
    assert own == ref


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_runs(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 40, 48))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_resnet50_ibn_a_and_b_give_the_official_outputs():
    # float64: random weights amplify float32 rounding to ~1e-3 over 50 layers; in float64 the two
    # implementations agree to ~1e-11, so any real difference would show.
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    for name, cfg in (("resnet50_ibn_a", ("a", "a", "a", None)), ("resnet50_ibn_b", ("b", "b", None, None))):
        ref = randomize_(RefResNetIBN(cfg)).double().eval()
        ours = timm.create_model(name).double().eval()
        ours.load_state_dict(ref.state_dict(), strict=True)  # the official layout, key for key
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref(x), atol=1e-8, rtol=1e-8)
        # and in training mode (batch statistics, running-stat updates)
        ref.train(), ours.train()
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref(x), atol=1e-8, rtol=1e-8)
        torch.testing.assert_close(ours.layer1[0].bn1.BN.running_mean if name.endswith("a") else ours.bn1.weight,
                                   ref.layer1[0].bn1.BN.running_mean if name.endswith("a") else ref.bn1.weight)


def test_ibn_b_stem_in_cancels_input_scale_but_plain_resnet_does_not():
    torch.manual_seed(0)
    bn, ibn_b = (randomize_(timm.create_model(n, num_classes=10)).eval() for n in ("resnet18_bn", "resnet18_ibn_b"))
    x = torch.rand(2, 3, 64, 64) + 0.1
    with torch.no_grad():
        diff_b = (ibn_b(x) - ibn_b(3.0 * x)).abs().max() / ibn_b(x).abs().max()
        diff_bn = (bn(x) - bn(3.0 * x)).abs().max() / bn(x).abs().max()
    assert diff_b < 1e-3  # only the IN epsilon differs
    assert diff_bn > 0.05


def test_variants_place_instance_norm_as_documented():
    def kinds(model):
        return {n: type(m).__name__ for n, m in model.named_modules()
                if isinstance(m, (IBN, IBNConcat, PartialInstanceNorm2d, nn.InstanceNorm2d))}
    a = kinds(meta_model("resnet50_ibn_a"))
    assert sum(v == "IBN" for v in a.values()) == 13 and not any(k.startswith("layer4") for k in a)
    b = kinds(meta_model("resnet50_ibn_b"))
    assert b == {"bn1": "InstanceNorm2d", "layer1.2.IN": "InstanceNorm2d", "layer2.3.IN": "InstanceNorm2d"}
    c = meta_model("resnet50_ibn_c")
    assert isinstance(c.layer1[0].bn1, IBNConcat) and c.layer1[0].conv2.in_channels == 128
    d = kinds(meta_model("resnet50_ibn_d"))
    assert d["bn1"] == "IBN" and d["layer1.2.IN"] == "PartialInstanceNorm2d" and "layer3.5.IN" not in d
    ad = kinds(meta_model("resnet50_ibn_ad"))
    assert ad["layer3.0.bn1"] == "IBN" and ad["layer2.3.IN"] == "PartialInstanceNorm2d"
    a2 = kinds(meta_model("resnet50_ibn_a2"))
    assert a2["layer2.1.bn2"] == "IBN" and "layer4.0.bn2" not in a2
    groups = kinds(meta_model("resnet50_ibn_a", ibn_groups=(1,)))
    assert all(k.startswith("layer1.") for k in groups)
    assert kinds(meta_model("resnet50_ibn_a", ibn_groups=())) == {}
    full = meta_model("resnet50_bn", in_ratio="full")
    assert all(not isinstance(m, nn.BatchNorm2d) for m in full.modules())
    assert meta_model("resnet50_ibn_a", in_ratio=0.25).layer1[0].bn1.IN.num_features == 16


def test_sn_resnet50_matches_official_options():
    model = meta_model("resnet50_sn")
    sns = [m for m in model.modules() if isinstance(m, SwitchNorm2d)]
    assert len(sns) == 53 and model.drop_rate == 0.5
    real = timm.create_model("resnet50_sn")
    zeroed = [n for n, m in real.named_modules() if isinstance(m, SwitchNorm2d) and not m.weight.any()]
    assert len(zeroed) == 16 and all(n.endswith("bn3") for n in zeroed)
    assert not meta_model("resnet50_sn", norm_kwargs=dict(sn_using_bn=False)).bn1.using_bn


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_output_stride_and_features(stride):
    model = timm.create_model("resnet50_ibn_a", features_only=True, output_stride=stride, out_indices=(1, 2, 3, 4))
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [256, 512, 1024, 2048]
    assert feats[-1].shape[-1] == 64 // stride
    assert model.feature_info.reduction()[-1] == stride


def test_adaptive_pool_equals_fixed_pool_at_224_and_accepts_other_sizes():
    model = timm.create_model("resnet18_ibn_a").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        f = model.forward_features(x)
        # adaptive vs fixed 7x7 pooling sum 49 values in their own order: both against the float64 mean of f
        assert_close_to_float64(model.forward_head(f, pre_logits=True), nn.AvgPool2d(7)(f).flatten(1),
                                f.double().mean((2, 3)))
        assert model(torch.randn(1, 3, 97, 131)).shape == (1, 1000)


def test_depth_and_widths_follow_timms_resnet_arguments():
    # layers / channels mean what they mean in timm's ResNet: same layout, same outputs.
    kw = dict(layers=(2, 2, 2, 1), channels=(32, 64, 128, 256), num_classes=10)
    theirs = timm.models.resnet.ResNet(block=timm.models.resnet.BasicBlock, **kw).eval()
    ours = timm.create_model("resnet18_bn", **kw).eval()
    ours.load_state_dict(theirs.state_dict())   # strict: every key and shape equal
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    assert [f["num_chs"] for f in ours.feature_info] == [64, 32, 64, 128, 256] and len(ours.layer4) == 1
    # The IBN variants keep their placements in a narrower, shallower network.
    ibn_a = meta_model("resnet18_ibn_a", **kw)
    assert [n for n, m in ibn_a.named_modules() if isinstance(m, IBN)] == [
        f"layer{g}.{b}.bn1" for g in (1, 2, 3) for b in (0, 1)]
    assert ibn_a.layer1[0].bn1.IN.num_features == 16
    assert meta_model("resnet18_ibn_b", **kw).layer2[1].IN.num_features == 64
    with pytest.raises(ValueError, match="channels must be four positive widths"):
        ResNet(channels=(32, 64, 128))
    with pytest.raises(ValueError, match="layers must be four positive block counts"):
        ResNet(layers=(2, 2, 0, 2))


def test_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="unknown IBN variant"):
        ResNet(ibn="e")
    with pytest.raises(ValueError, match="in_ratio"):
        ResNet(in_ratio=1.5)
    with pytest.raises(ValueError, match="ibn_groups"):
        ResNet(ibn="a", ibn_groups=(5,))
    with pytest.raises(ValueError, match="did you mean resnet50_ibn_a"):
        ibnnet.create_model("resnet50_ibn_aa")


def test_ghost_and_sn_options_reach_every_layer():
    model = meta_model("resnet50_bn", norm="ghost_bn", norm_kwargs=dict(ghost_batch_size=2))
    ghosts = [m for m in model.modules() if getattr(m, "ghost_batch_size", 0) == 2]
    assert len(ghosts) == 53
    sn = meta_model("resnet50_sn", norm_kwargs=dict(sn_momentum=0.003, ghost_batch_size=4))
    assert all(m.momentum == 0.003 and m.ghost_batch_size == 4 for m in sn.modules() if isinstance(m, SwitchNorm2d))


def test_torch_hub_entry_points(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    model = torch.hub.load(str(repo), "resnet18_ibn_b", source="local", num_classes=5)
    assert isinstance(model, ResNet) and model.fc.out_features == 5


def _sd_without_head(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


@pytest.mark.parametrize("name,stride", [("resnet18_ibn_a", 32), ("resnet18_ibn_b", 8)])
def test_forward_intermediates_equal_forward_features_and_features_only(name, stride):
    model = randomize_(timm.create_model(name, output_stride=stride)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        # Bit equality on purpose, here and below: forward_intermediates, forward_features and the features_only
        # wrappers run literally the same modules (the same ops) on the same input in this process.
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        assert [m.shape[1] for m in maps] == [64, 64, 128, 256, 512]
        assert [64 // m.shape[-1] for m in maps] == [2, 4, 8, min(16, stride), stride]
        only = model.forward_intermediates(x, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(only, maps)) and len(only) == 5
        picked = model.forward_intermediates(x, indices=(1, -2), intermediates_only=True)
        assert torch.equal(picked[0], maps[1]) and torch.equal(picked[1], maps[3])
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert torch.equal(last2[0], maps[3]) and torch.equal(last2[1], maps[4])
        early, early_maps = model.forward_intermediates(x, indices=(0, 2), stop_early=True)
        assert torch.equal(early, maps[2]) and len(early_maps) == 2
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=(5,))

    infos = {}
    for cls in ("list", "hook", "getter"):  # timm's default (list), its hook variant, and forward_intermediates
        feats = timm.create_model(name, output_stride=stride, features_only=True, feature_cls=cls).eval()
        target = {"list": feats, "hook": getattr(feats, "body", None), "getter": getattr(feats, "model", None)}[cls]
        target.load_state_dict(_sd_without_head(model), strict=True)
        with torch.no_grad():
            out = feats(x)
        assert len(out) == 5 and all(torch.equal(a, b) for a, b in zip(out, maps)), cls
        infos[cls] = (feats.feature_info.channels(), feats.feature_info.reduction(), feats.feature_info.module_name())
    assert infos["list"] == infos["hook"] == infos["getter"]
    assert infos["list"][1] == [2, 4, 8, min(16, stride), stride]


def test_features_only_getter_prunes_what_it_does_not_need():
    feats = timm.create_model("resnet18_bn", features_only=True, feature_cls="getter", out_indices=(1, 2))
    assert len(feats.model.layer3) == 0 and len(feats.model.layer4) == 0
    assert isinstance(feats.model.fc, nn.Identity) and feats.feature_info.channels() == [64, 128]
    assert [f.shape[1] for f in feats(torch.randn(1, 3, 64, 64))] == [64, 128]


def test_prune_intermediate_layers():
    model = randomize_(timm.create_model("resnet18_bn", num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
    assert model.prune_intermediate_layers((1, -3)) == [1, 2]
    assert len(model.layer3) == 0 and len(model.layer4) == 0 and len(model.layer2) == 2
    assert model.num_features == model.head_hidden_size == 128 and model.num_classes == 0
    assert isinstance(model.fc, nn.Identity) and not any(k.startswith(("fc.", "layer3", "layer4"))
                                                        for k in model.state_dict())
    with torch.no_grad():  # the same modules (the same ops) before and after pruning: bit-identical
        assert torch.equal(model.forward_features(x), maps[2]) and torch.equal(model(x), maps[2])
        assert all(torch.equal(a, b) for a, b in zip(model.forward_intermediates(x, (1, 2), intermediates_only=True),
                                                    maps[1:3]))
    # all five kept: the head goes only when asked; the stem alone: the max-pool goes too
    full = timm.create_model("resnet18_bn", num_classes=10)
    assert full.prune_intermediate_layers(None, prune_head=False) == [0, 1, 2, 3, 4] and full.fc.out_features == 10
    stem = timm.create_model("resnet18_bn")
    assert stem.prune_intermediate_layers((0,)) == [0] and isinstance(stem.maxpool, nn.Identity)
    assert stem(torch.randn(1, 3, 32, 32)).shape == (1, 64, 16, 16)


def test_reset_classifier_keeps_the_pool_unless_told():
    model = timm.create_model("resnet18_bn", global_pool="max")
    model.reset_classifier(5)
    assert model.global_pool.pool_type == "max" and model.fc.out_features == 5
    assert model.get_classifier() is model.fc and model.get_classifier(name_only=True) == "fc"
    model.reset_classifier(0, "")
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 512, 1, 1)


def test_forward_intermediates_with_gradient_checkpointing():
    model = timm.create_model("resnet18_bn").eval()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    plain = model.forward_intermediates(x, intermediates_only=True)
    model.set_grad_checkpointing()
    ckpt = model.forward_intermediates(x, intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(plain, ckpt))   # checkpointing runs the same ops: bit-identical
    sum(t.sum() for t in ckpt).backward()
    assert x.grad.abs().sum() > 0
