"""Normalization layers against hand-written reference math."""
import copy

import pytest
import torch
from reference import ibn_reference, sn_reference
from torch import nn

from ibnnet.layers import (
    IBN,
    GhostBatchNorm2d,
    InstanceNorm2d,
    PartialInstanceNorm2d,
    SwitchNorm2d,
    create_norm,
    estimate_batch_average_stats,
)


@pytest.fixture(autouse=True)
def float64():
    # Equivalence to ~1e-10 instead of float32 noise; restored so other test modules are unaffected.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _randomize_affine(*modules):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.copy_(torch.rand(p.shape, generator=g) * 1.5 + 0.25 if p.dim() == 1 and p.numel() > 3
                        else torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_ibn_matches_reference_train_and_eval(ratio):
    torch.manual_seed(0)
    layer = IBN(16, ratio)
    _randomize_affine(layer)
    half = int(16 * ratio)
    assert layer.IN.num_features == half and layer.BN.num_features == 16 - half
    x = (torch.randn(4, 16, 5, 7) * 3 + 1).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    running = [torch.zeros(16 - half), torch.ones(16 - half)]
    params = [p.detach().clone().requires_grad_() for p in (layer.IN.weight, layer.IN.bias, layer.BN.weight, layer.BN.bias)]
    y = layer(x)
    yr = ibn_reference(xr, *params, half, running=running)
    torch.testing.assert_close(y, yr)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (yr * g).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    for p, pr in zip((layer.IN.weight, layer.IN.bias, layer.BN.weight, layer.BN.bias), params):
        torch.testing.assert_close(p.grad, pr.grad)
    torch.testing.assert_close(layer.BN.running_mean, running[0])
    torch.testing.assert_close(layer.BN.running_var, running[1])
    layer.eval()
    torch.testing.assert_close(layer(x.detach()), ibn_reference(x.detach(), *params, half, running=running,
                                                                  training=False))


def test_ibn_extreme_ratios_are_plain_bn_and_in():
    x = torch.randn(3, 8, 4, 4)
    bn_only, in_only = IBN(8, 0.0), IBN(8, 1.0)
    assert bn_only.IN is None and set(bn_only.state_dict()) == {f"BN.{k}" for k in nn.BatchNorm2d(8).state_dict()}
    assert in_only.BN is None and set(in_only.state_dict()) == {"IN.weight", "IN.bias"}
    torch.testing.assert_close(bn_only(x), nn.BatchNorm2d(8)(x))
    torch.testing.assert_close(in_only(x), nn.InstanceNorm2d(8, affine=True)(x))
    with pytest.raises(ValueError, match="ratio"):
        IBN(8, 1.5)


def test_ibn_with_other_batch_norm_type_uses_it():
    layer = IBN(8, 0.5, bn_layer=lambda c: nn.GroupNorm(2, c))
    x = torch.randn(2, 8, 4, 4)
    expected = torch.cat([nn.InstanceNorm2d(4, affine=True)(x[:, :4]), nn.GroupNorm(2, 4)(x[:, 4:])], 1)
    torch.testing.assert_close(layer(x), expected)
    assert "BN.weight" in layer.state_dict() and "BN.running_mean" not in layer.state_dict()


def _sn_pair(c=6, **kw):
    layer = SwitchNorm2d(c, **kw)
    _randomize_affine(layer)
    return layer


@pytest.mark.parametrize("using_bn", [True, False])
def test_switchnorm_matches_official_formula(using_bn):
    torch.manual_seed(0)
    layer = _sn_pair(using_bn=using_bn, momentum=0.1)
    assert layer.mean_weight.numel() == (3 if using_bn else 2)
    ref_params = [p.detach().clone().requires_grad_() for p in (layer.weight, layer.bias, layer.mean_weight,
                                                                  layer.var_weight)]
    rm, rv = torch.zeros(1, 6, 1), torch.zeros(1, 6, 1)
    for step in range(3):  # several steps: the running statistics must follow the official momentum
        x = (torch.randn(4, 6, 5, 3) * 2 + step).requires_grad_()
        xr = x.detach().clone().requires_grad_()
        y = layer(x)
        yr = sn_reference(xr, *ref_params, rm, rv, training=True, official_momentum=0.9, using_bn=using_bn)
        torch.testing.assert_close(y, yr)
        g = torch.randn_like(y)
        (y * g).sum().backward()
        (yr * g).sum().backward()
        torch.testing.assert_close(x.grad, xr.grad)
    for p, pr in zip((layer.weight, layer.bias, layer.mean_weight, layer.var_weight), ref_params):
        torch.testing.assert_close(p.grad, pr.grad)
    if using_bn:
        torch.testing.assert_close(layer.running_mean, rm.flatten())
        torch.testing.assert_close(layer.running_var, rv.flatten())
    else:
        assert "running_mean" not in layer.state_dict()
    layer.eval()
    x = torch.randn(2, 6, 4, 4)
    torch.testing.assert_close(layer(x), sn_reference(x, *ref_params, rm, rv, training=False, using_bn=using_bn))


def test_switchnorm_loads_official_shapes_and_handles_single_pixel():
    layer = _sn_pair()
    official = {"weight": layer.weight.detach().view(1, 6, 1, 1), "bias": layer.bias.detach().view(1, 6, 1, 1),
                "mean_weight": layer.mean_weight.detach(), "var_weight": layer.var_weight.detach(),
                "running_mean": torch.rand(1, 6, 1), "running_var": torch.rand(1, 6, 1)}
    fresh = SwitchNorm2d(6)
    fresh.load_state_dict(official)
    assert fresh.weight.shape == (6,)
    torch.testing.assert_close(fresh.running_var, official["running_var"].flatten())
    out = SwitchNorm2d(6)(torch.randn(4, 6, 1, 1))
    assert torch.isfinite(out).all()  # the official layer gives NaN here (unbiased variance of one value)


def test_switchnorm_last_gamma_zero_init():
    assert torch.count_nonzero(SwitchNorm2d(5, last_gamma=True).weight) == 0
    assert torch.all(SwitchNorm2d(5).weight == 1)


def test_batch_average_inference_sets_paper_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), SwitchNorm2d(4, using_moving_average=False), nn.ReLU(),
                        nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5))
    batches = [torch.randn(6, 3, 8, 8) * (1 + i) + i for i in range(3)]
    net.eval()
    assert estimate_batch_average_stats(net, batches, num_batches=3) == 3
    assert not any(m.training for m in net.modules())  # modes restored
    # Reference: the SN layer's BN-branch moments per batch, averaged as mean(mu) and mean(E[x^2]) - mean^2.
    conv, sn = net[0], net[1]
    mus, ex2s = [], []
    for b in batches:
        f = conv(b).detach()
        mean_in = f.mean((2, 3))
        var_in = f.var((2, 3), unbiased=True)
        mu = mean_in.mean(0)
        ex2 = (var_in + mean_in ** 2).mean(0)
        mus.append(mu)
        ex2s.append(ex2)
    mu = torch.stack(mus).mean(0)
    torch.testing.assert_close(sn.running_mean, mu)
    torch.testing.assert_close(sn.running_var, torch.stack(ex2s).mean(0) - mu ** 2)
    # The BN layer: cumulative average of batch means (its input depends on SN in train mode).
    assert net[4].momentum == 0.1 and int(net[4].num_batches_tracked) == 3
    with torch.no_grad():
        sn.train()
        means = [net[3](net[2](sn(conv(b)))).mean((0, 2, 3)) for b in batches]
    torch.testing.assert_close(net[4].running_mean, torch.stack(means).mean(0))


def test_ghost_batch_norm_equals_separate_batches():
    torch.manual_seed(0)
    ghost = GhostBatchNorm2d(4, ghost_batch_size=2)
    _randomize_affine(ghost)
    plain = nn.BatchNorm2d(4)
    plain.load_state_dict(ghost.state_dict())
    x = torch.randn(6, 4, 3, 3)
    chunks = [nn.functional.batch_norm(c, None, None, ghost.weight, ghost.bias, True) for c in x.split(2)]
    torch.testing.assert_close(ghost(x), torch.cat(chunks))
    # running stats: the average over sub-batches of their means and unbiased variances
    means = torch.stack([c.mean((0, 2, 3)) for c in x.split(2)]).mean(0)
    vars_ = torch.stack([c.var((0, 2, 3), unbiased=True) for c in x.split(2)]).mean(0)
    torch.testing.assert_close(ghost.running_mean, 0.1 * means)
    torch.testing.assert_close(ghost.running_var, 0.9 + 0.1 * vars_)
    # an uneven batch: the last sub-batch has its own statistics
    x5 = torch.randn(5, 4, 3, 3)
    tail = nn.functional.batch_norm(x5[4:], None, None, ghost.weight, ghost.bias, True)
    torch.testing.assert_close(ghost(x5)[4:], tail)
    ghost.eval()
    plain.load_state_dict(ghost.state_dict())
    plain.eval()
    torch.testing.assert_close(ghost(x), plain(x))


def test_switchnorm_ghost_batches_use_sub_batch_bn_statistics():
    layer = SwitchNorm2d(3, ghost_batch_size=2)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([-50.0, -50.0, 50.0]))  # BN branch only
        layer.var_weight.copy_(torch.tensor([-50.0, -50.0, 50.0]))
    x = torch.randn(4, 3, 5, 5)
    parts = []
    for c in x.split(2):
        mean_in, var_in = c.mean((2, 3)), c.var((2, 3), unbiased=True)
        m = mean_in.mean(0)
        v = (var_in + mean_in ** 2).mean(0) - m ** 2
        parts.append((c - m[None, :, None, None]) / torch.sqrt(v[None, :, None, None] + 1e-5))
    torch.testing.assert_close(layer(x), torch.cat(parts), atol=1e-8, rtol=1e-6)


def test_partial_instance_norm_leaves_other_channels():
    layer = PartialInstanceNorm2d(8, 0.5)
    x = torch.randn(2, 8, 4, 4) * 5 + 3
    y = layer(x)
    torch.testing.assert_close(y[:, 4:], x[:, 4:])
    torch.testing.assert_close(y[:, :4], nn.InstanceNorm2d(4, affine=True)(x[:, :4]))


@pytest.mark.parametrize("kind", ["bn", "syncbn", "gn", "in", "ln", "sn", "ghost_bn", "ghost-bn"])
def test_norm_factory_builds_every_kind(kind):
    layer = create_norm(kind, 64, ghost_batch_size=2)
    assert sum(p.numel() for p in layer.parameters()) >= 128
    if kind not in ("syncbn",):
        assert layer(torch.randn(4, 64, 3, 3)).shape == (4, 64, 3, 3)
    with pytest.raises(ValueError, match="unknown norm"):
        create_norm("batchnrom", 8)
    with pytest.raises(ValueError, match="cannot split"):
        create_norm("gn", 20, gn_groups=32)


@pytest.mark.parametrize("make", [lambda: SwitchNorm2d(4), lambda: IBN(4, 0.5)])
def test_bfloat16_inputs_are_reduced_in_float32(make):
    layer = make().float()
    # A large common offset: statistics accumulated in bfloat16 would lose the variance entirely.
    x = (torch.randn(3, 4, 6, 6, dtype=torch.float32) + 300).to(torch.bfloat16)
    y = layer(x)
    ref = copy.deepcopy(layer)(x.float())
    assert y.dtype == torch.bfloat16
    # bf16 output (8 significant bits, spacing 2**-7 relative, 2**-6 in [2, 4)) of float32-accurate statistics:
    # atol 0.05 / rtol 0.02 is two or three bf16 spacings; statistics reduced in bf16 would be off by O(1).
    torch.testing.assert_close(y.float(), ref, atol=0.05, rtol=0.02)


def test_fused_instance_norm_equals_pytorch():
    from ibnnet.layers import InstanceNorm2d
    ours = InstanceNorm2d(6, affine=True)
    _randomize_affine(ours)
    theirs = nn.InstanceNorm2d(6, affine=True)
    theirs.load_state_dict(ours.state_dict())
    x = (torch.randn(3, 6, 5, 4) * 4 + 2).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    y, yr = ours(x), theirs(xr)
    torch.testing.assert_close(y, yr)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (yr * g).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)
    torch.testing.assert_close(ours.bias.grad, theirs.bias.grad)


@pytest.mark.parametrize("make", [lambda: IBN(8, 0.5), lambda: InstanceNorm2d(8, affine=True), lambda: SwitchNorm2d(8),
                                  lambda: GhostBatchNorm2d(8, 2)])
def test_compile_path_equals_the_fused_kernel(make):
    """Under torch.compile the layers run their native ops (forced here in eager mode; the real Inductor
    compile is tests/test_kernels.py::test_inductor_compiled_training_matches_eager)."""
    from ibnnet.layers import use_kernel
    fused = make()
    _randomize_affine(fused)
    plain = copy.deepcopy(fused)
    x = (torch.randn(4, 8, 5, 5) * 3 + 1).requires_grad_()
    xp = x.detach().clone().requires_grad_()
    with use_kernel("fused"):
        y = fused(x)
    with use_kernel("native"):
        yp = plain(xp)
    torch.testing.assert_close(y, yp)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (yp * g).sum().backward()
    torch.testing.assert_close(x.grad, xp.grad)
    for a, b in zip(fused.parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    for a, b in zip(fused.buffers(), plain.buffers()):
        torch.testing.assert_close(a, b)
