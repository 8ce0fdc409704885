"""DenseNet-121/169 IBN-a: the official layout and outputs, weight files in their formats, timm's model API."""
import copy
import hashlib
import math
import re

import pytest
import timm
import torch
from numerics import assert_close_to_float64
from reference import RefBNFirstIBN, RefDenseNetIBN, randomize_
from torch import nn

import ibnnet  # noqa: F401  (registers the models)
from ibnnet.commands.weights import cmd_list, cmd_verify, find_release
from ibnnet.layers import IBN, use_kernel
from ibnnet.models import DenseNetIBN, WeightsError, checkpoint_filter_fn, load_weights
from ibnnet.models.densenet import IBNAct

BLOCKS = {"densenet121_ibn_a": (6, 12, 24, 16), "densenet169_ibn_a": (6, 12, 32, 32)}
# torchvision's DenseNet-121/169 (the same layout without IBN; IBN moves parameters, it adds none)
TORCHVISION_PARAMS = {"densenet121_ibn_a": 7_978_856, "densenet169_ibn_a": 14_149_480}


def _ref(name, ibn=True, seed=0):
    return randomize_(RefDenseNetIBN(BLOCKS[name], ibn=ibn), seed=seed).eval()


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_state_dict_layout_equals_the_official_architecture(name):
    with torch.device("meta"):
        ours, ref = timm.create_model(name), RefDenseNetIBN(BLOCKS[name])
        plain, ref_plain = timm.create_model(name, ibn="none"), RefDenseNetIBN(BLOCKS[name], ibn=False)
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())
    assert _shapes(ours) == _shapes(ref)
    assert _shapes(plain) == _shapes(ref_plain)
    assert sum(p.numel() for p in ours.parameters()) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_ibn_placement_and_split_follow_the_official_code(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    ibn = {n: m for n, m in model.named_modules() if isinstance(m, IBN)}
    # norm1 of dense layers 1, 4, 7, ... of blocks 1-3: ceil(n / 3) per block; none in block 4 or elsewhere
    expected = {f"features.denseblock{b}.denselayer{j}.norm1" for b in (1, 2, 3)
                for j in range(1, BLOCKS[name][b - 1] + 1, 3)}
    assert set(ibn) == expected and len(ibn) == sum(math.ceil(n / 3) for n in BLOCKS[name][:3])
    first = ibn["features.denseblock1.denselayer1.norm1"]   # 64 channels: BN on int(64 * 0.6) = 38, IN on 26
    assert (first.BN.num_features, first.IN.num_features, first.in_first) == (38, 26, False)
    for m in ibn.values():
        assert m.BN.num_features == int(m.channels * (1 - 0.4)) and isinstance(m, IBNAct)
    assert not any(isinstance(m, nn.InstanceNorm2d) for n, m in model.named_modules() if not n.endswith(".IN"))
    assert not any(isinstance(m, IBN) for m in timm.create_model(name, ibn="none").modules())


def _logits(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_official_state_dict_loads_strictly_and_gives_the_official_logits(name):
    ref = _ref(name)
    ours = timm.create_model(name).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)   # the official layout, key for key
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))  # 224: the official fixed 7x7 pool
    expected64 = _logits(copy.deepcopy(ref).double(), x.double())
    assert_close_to_float64(_logits(ours, x), _logits(ref, x), expected64, what=name)


def test_training_mode_gives_the_official_outputs_and_running_statistics():
    # Batch statistics on the BN parts, instance statistics on the IN parts (the fused kernel on CPU float32),
    # the same running-statistics updates. Two dense layers per block keep it quick: IBN in layer 1 of blocks 1-3.
    blocks = (2, 2, 2, 2)
    ref = randomize_(RefDenseNetIBN(blocks), seed=4).train()
    ours = DenseNetIBN(block_config=blocks).train()
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref64 = copy.deepcopy(ref).double()
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    assert_close_to_float64(_logits(ours, x), _logits(ref, x), _logits(ref64, x.double()), what="train")
    for key in ("features.denseblock2.denselayer1.norm1.BN.running_var",
                "features.denseblock3.denselayer2.norm1.running_mean"):
        assert_close_to_float64(ours.state_dict()[key], ref.state_dict()[key], ref64.state_dict()[key], what=key)


def test_plain_densenet_is_torchvisions_with_its_oldest_key_names():
    import torchvision.models as tvm
    theirs = randomize_(tvm.densenet121()).eval()
    ours = timm.create_model("densenet121_ibn_a", ibn="none").eval()
    # torchvision's first DenseNet files name the dense layers' modules norm.1, relu.1, conv.1 ...
    old = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in theirs.state_dict().items()}
    assert any(".norm.1." in k for k in old)
    load_weights(ours, old)
    x = torch.randn(2, 3, 64, 64)
    assert_close_to_float64(_logits(ours, x), _logits(theirs, x), _logits(copy.deepcopy(theirs).double(), x.double()))


def test_ibn_in_the_official_densenet_order_equals_the_reference_on_both_kernels():
    # 66 channels: BN on int(66 * 0.6) = 39, IN on the other 27 (not int(66 * 0.4) = 26)
    ref = RefBNFirstIBN(66, 0.4).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.rand(p.shape, dtype=torch.float64) + 0.5)
    assert ref.split == 39 and IBN(66, 0.4, in_first=False).in_channels == 27
    x = torch.randn(4, 66, 6, 5, dtype=torch.float64) * 3 + 1
    for kernel in ("fused", "native"):
        layer = IBN(66, 0.4, in_first=False).double()
        layer.load_state_dict(ref.state_dict(), strict=True)
        r = copy.deepcopy(ref)
        xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        with use_kernel(kernel):
            y = layer(xa)
        yr = r(xr)
        torch.testing.assert_close(y, yr)
        (y * torch.arange(y.numel(), dtype=y.dtype).view_as(y).sin()).sum().backward()
        (yr * torch.arange(yr.numel(), dtype=yr.dtype).view_as(yr).sin()).sum().backward()
        torch.testing.assert_close(xa.grad, xr.grad)
        torch.testing.assert_close(layer.IN.weight.grad, r.IN.weight.grad)
        torch.testing.assert_close(layer.BN.running_var, r.BN.running_var)
    assert "in_first=False" in repr(IBN(66, 0.4, in_first=False)) and "in_first" not in repr(IBN(66))


def _official_file_contents(ref):
    """The release formats: DataParallel's module. prefix inside {'state_dict': ...}, IN running statistics."""
    sd = {f"module.{k}": v for k, v in ref.state_dict().items()}
    for name, m in ref.named_modules():
        if isinstance(m, nn.InstanceNorm2d):
            sd[f"module.{name}.running_mean"] = torch.zeros(m.num_features)
            sd[f"module.{name}.running_var"] = torch.ones(m.num_features)
    return {"state_dict": sd, "epoch": 100, "best_acc": torch.tensor(92.75)}


def _hashed_file(tmp_path, stem, obj):
    raw = tmp_path / f"{stem}.pth"
    torch.save(obj, raw)
    return raw.rename(tmp_path / f"{stem}-{hashlib.sha256(raw.read_bytes()).hexdigest()[:8]}.pth")


def test_checkpoint_filter_fn_reads_the_official_file_formats(tmp_path):
    ref = _ref("densenet121_ibn_a", seed=3)
    model = timm.create_model("densenet121_ibn_a").eval()
    sd = checkpoint_filter_fn(_official_file_contents(ref), model)
    assert sd.keys() == ref.state_dict().keys() and all(torch.equal(sd[k], v) for k, v in ref.state_dict().items())
    # end to end through timm: a hash-named local file with pretrained=True, a new head, a one-channel stem
    path = _hashed_file(tmp_path, "densenet121_ibn_a", _official_file_contents(ref))
    x = torch.randn(1, 3, 224, 224)
    loaded = timm.create_model("densenet121_ibn_a", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(_logits(loaded.eval(), x), _logits(ref, x))
    gray = timm.create_model("densenet121_ibn_a", pretrained=True, num_classes=10, in_chans=1,
                             pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert gray.classifier.out_features == 10 and gray.features.conv0.in_channels == 1
    torch.testing.assert_close(gray.features.conv0.weight, ref.features.conv0.weight.sum(1, keepdim=True))
    torch.testing.assert_close(gray.features.norm5.running_var, ref.features.norm5.running_var)


def test_a_missing_or_misshapen_key_is_an_error_naming_it():
    model = timm.create_model("densenet121_ibn_a")
    sd = _ref("densenet121_ibn_a").state_dict()
    missing = {k: v for k, v in sd.items() if k != "features.denseblock3.denselayer7.norm1.IN.weight"}
    with pytest.raises(WeightsError, match=r"missing: features\.denseblock3\.denselayer7\.norm1\.IN\.weight"):
        checkpoint_filter_fn(missing, model)
    # a plain DenseNet's norm1 where the official file has an IBN: every IBN key is reported
    plain = RefDenseNetIBN(BLOCKS["densenet121_ibn_a"], ibn=False).state_dict()
    with pytest.raises(WeightsError, match=r"unexpected: features\.denseblock1\.denselayer1\.norm1\.weight"):
        checkpoint_filter_fn(plain, model)
    # a DenseNet-169's classifier (1664 features) in a DenseNet-121 file: named with both shapes
    wrong = dict(sd, **{"classifier.weight": torch.zeros(1000, 1664)})
    with pytest.raises(WeightsError, match=r"shape mismatch: classifier\.weight \(1000, 1664\) vs \(1000, 1024\)"):
        checkpoint_filter_fn(wrong, model)


def test_pytorch_default_initialisation_as_the_official_code():
    torch.manual_seed(0)
    model = timm.create_model("densenet121_ibn_a")
    conv = model.features.denseblock2.denselayer3.conv1     # fan_in 256: kaiming_uniform(a=sqrt(5)) bound 1/16
    assert conv.weight.abs().max() <= 1 / math.sqrt(conv.in_channels) + 1e-7
    assert conv.weight.abs().max() > 0.9 / math.sqrt(conv.in_channels)
    ibn = model.features.denseblock1.denselayer1.norm1
    assert all(torch.equal(t, torch.ones_like(t)) for t in (ibn.IN.weight, ibn.BN.weight, model.features.norm5.weight))
    assert model.classifier.bias.abs().max() > 0   # nn.Linear's default bias, not timm's zeros


def test_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="IBN-a only"):
        DenseNetIBN(ibn="b")
    with pytest.raises(ValueError, match="norm='bn' only"):
        DenseNetIBN(norm="gn")
    with pytest.raises(ValueError, match="in_ratio"):
        DenseNetIBN(in_ratio="full")
    with pytest.raises(ValueError, match="ibn_groups"):
        DenseNetIBN(ibn_groups=(5,))
    with pytest.raises(ValueError, match="takes no layers or channels"):
        DenseNetIBN(layers=(1, 1, 1, 1), channels=(8, 8, 8, 8))
    with torch.device("meta"):
        only1 = DenseNetIBN(ibn_groups=(1,), in_ratio=0.5)
    ibn = [n for n, m in only1.named_modules() if isinstance(m, IBN)]
    assert ibn == ["features.denseblock1.denselayer1.norm1", "features.denseblock1.denselayer4.norm1"]
    assert only1.features.denseblock1.denselayer1.norm1.IN.num_features == 32


def test_timm_model_api(tmp_path):
    # The registered entry point with two dense layers per block (IBN in layer 1 of blocks 1-3): quick to build
    tiny = dict(block_config=(2, 2, 2, 2))
    torch.manual_seed(0)
    model = randomize_(timm.create_model("densenet121_ibn_a", **tiny)).eval()
    assert len([m for m in model.modules() if isinstance(m, IBNAct)]) == 3
    path = _hashed_file(tmp_path, "densenet121_ibn_a", model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)   # the same ops: bit-equal
        assert [m.shape[1] for m in maps] == [64, 128, 128, 128, 128]
        torch.testing.assert_close(model.forward_head(final), model(x), rtol=0, atol=0)
        assert model.forward_head(final, pre_logits=True).shape == (2, 128)
        for cls in ("list", "hook", "getter"):
            feats = timm.create_model("densenet121_ibn_a", features_only=True, feature_cls=cls, pretrained=True,
                                      pretrained_cfg_overlay=dict(file=str(path)), **tiny).eval()
            out = feats(x)
            assert len(out) == 5 and all(torch.equal(a, b) for a, b in zip(out, maps)), cls
            assert feats.feature_info.reduction() == [2, 4, 8, 16, 32]
        scripted = torch.jit.script(copy.deepcopy(model))
        torch.testing.assert_close(scripted(x), model(x))
    cfg = model.pretrained_cfg
    assert (cfg["first_conv"], cfg["classifier"], cfg["license"], cfg["origin_url"]) == (
        "features.conv0", "classifier", "mit", "https://github.com/XingangPan/IBN-Net")
    assert cfg["url"].endswith("/v1.0/densenet121_ibn_a-e4af5cc1.pth") and cfg["paper_ids"] == "arXiv:1807.09441"
    model.reset_classifier(0)
    assert model(x).shape == (2, 128)
    # gradient checkpointing recomputes the same ops: the same outputs and input gradients
    model = randomize_(DenseNetIBN(**tiny)).train()
    ckpt = copy.deepcopy(model)
    ckpt.set_grad_checkpointing()
    a, b = (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)).requires_grad_() for _ in "ab")
    ya, yb = model(a), ckpt(b)
    torch.testing.assert_close(yb, ya)
    ya.sum().backward()
    yb.sum().backward()
    torch.testing.assert_close(b.grad, a.grad)


def test_weights_command_lists_and_verifies_the_releases(tmp_path, capsys):
    assert cmd_list(False) == 0
    out = capsys.readouterr().out
    assert re.search(r"densenet121_ibn_a\.official_in1k +densenet121_ibn_a-e4af5cc1\.pth +e4af5cc1 +75\.53/92\.75", out)
    assert "densenet169_ibn_a-9f32c161.pth" in out and "76.75/93.49" in out and "75.53/92.75" in out
    r = find_release("densenet169_ibn_a")
    assert r.url == "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/densenet169_ibn_a-9f32c161.pth"
    path = _hashed_file(tmp_path, "densenet169_ibn_a", _official_file_contents(_ref("densenet169_ibn_a")))
    assert cmd_verify(str(path)) == 0
    out = capsys.readouterr().out
    assert "matches" in out and "fits: densenet169_ibn_a\n" in out
