"""Numerics that must hold on any machine: float16 gradients under a GradScaler's scale, IBN's saved memory in
half precision, and eager models equal to their fx / TorchScript graphs in eval mode (timm's FX tests)."""
import copy

import pytest
import timm
import torch
from timm.layers import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from helpers import saved_tensor_bytes

import ibnnet  # noqa: F401  (registers the models)
from ibnnet.layers import IBN, GhostBatchNorm2d, SwitchNorm2d, kernel_for, use_kernel
from ibnnet.models import MODELS

HALF_LAYERS = {
    "sn": lambda: SwitchNorm2d(8),
    "ghost_bn": lambda: GhostBatchNorm2d(8, ghost_batch_size=2),
    "ibn": lambda: IBN(8),
}


@pytest.mark.parametrize("name", list(HALF_LAYERS))
@pytest.mark.parametrize("scale", [32.0, 2.0 ** 16])
def test_float16_scaled_gradients_stay_finite(name, scale):
    """A GradScaler multiplies the loss by up to 2^16: the fused kernel's per-(n, c) sums of the scaled gradient
    (sum gy, sum gy * x over 32x32 pixels) exceed float16's 65504 unless kept in float32. As under autocast, the
    activation is float16 and the parameters float32. The input gradient itself fits in float16 here, so it must
    be finite and agree with the float64 gradient times the scale."""
    torch.manual_seed(0)
    layer64 = HALF_LAYERS[name]().double().train()
    x = torch.randn(4, 8, 32, 32, dtype=torch.float64) * 2 + 1
    g = torch.randn(4, 8, 32, 32, dtype=torch.float64) * 0.01
    xr = x.clone().requires_grad_()
    (layer64(xr) * g).sum().backward()
    ref = xr.grad * scale
    for kind in ("fused", "native"):
        layer = copy.deepcopy(layer64).float()
        xh = x.half().requires_grad_()
        with use_kernel(kind):
            y = layer(xh)
        (y.float() * (g * scale).float()).sum().backward()
        assert torch.isfinite(xh.grad).all(), f"{kind}: non-finite input gradient at scale {scale:g}"
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters()), f"{kind}: non-finite parameter grad"
        # float16 keeps 11 significant bits; the normalization's backward loses a few more to cancellation
        err = (xh.grad.double() - ref).abs().max().item()
        assert err <= 2e-2 * ref.abs().max().item(), (kind, err, ref.abs().max().item())


def test_float16_moments_of_a_large_plane_do_not_overflow():
    """The norm of a centred 512x512 plane with std 200 is ~1e5, past float16's range: computed in float32."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 512, 512, dtype=torch.float64) * 200 + 50
    layer = SwitchNorm2d(4).train()
    ref = copy.deepcopy(layer).double()(x)
    with use_kernel("fused"):
        y = copy.deepcopy(layer)(x.half())
    assert torch.isfinite(y).all()
    assert (y.double() - ref).abs().max().item() < 2e-2


def test_ibn_in_half_precision_on_cuda_keeps_one_activation():
    """IBN under autocast on CUDA runs the fused kernel (ibnnet/layers/kernels.py): autograd keeps one
    half-precision activation, as BN does, where the split + plain-op path keeps float32 copies of the
    channels-last halves (several times the activation). Counted on CPU with the same code paths."""
    assert kernel_for("IBN", "cuda", torch.bfloat16) == "fused"
    assert kernel_for("IBN", "cuda", torch.float16) == "fused"
    assert kernel_for("IBN", "cuda", torch.float32) == "native"
    x = torch.randn(4, 32, 16, 16).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    activation = x.numel() * x.element_size()
    fused = saved_tensor_bytes(IBN(32).to(torch.bfloat16).train(), x.detach().clone().requires_grad_(), "fused")
    native = saved_tensor_bytes(IBN(32).to(torch.bfloat16).train(), x.detach().clone().requires_grad_(), "native")
    assert activation <= fused <= 1.05 * activation
    assert native >= 2 * activation


# --- eval mode: the eager model runs the ops its graphs record ----------------------------------------------------

# One model per distinct set of layers (depth only repeats blocks): every norm, IBN placement, SE and ResNeXt.
FX_MODELS = ["resnet18_bn", "resnet18_gn32", "resnet18_sn", "resnet18_ibn_a", "resnet18_ibn_b",
             "resnet50_ibn_c", "resnet50_ibn_d", "resnet50_ibn_ad", "resnet50_ibn_a2", "resnext101_ibn_a",
             "se_resnet101_ibn_a"]


def test_fx_models_cover_every_layer_configuration():
    kinds = {name.split("_", 1)[1] for name in MODELS if name.startswith("resnet") and "_" in name}
    covered = {name.split("_", 1)[1] for name in FX_MODELS if name.startswith("resnet")}
    assert kinds <= covered, sorted(kinds - covered)
    assert set(FX_MODELS) <= set(MODELS)


def fx_model(model):
    """The graph timm's test_model_forward_fx builds: torchvision's fx feature extractor with timm's leaf modules
    and wrapped functions."""
    kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                  param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kwargs)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=kwargs)


@pytest.mark.parametrize("name", FX_MODELS)
def test_eval_model_equals_its_fx_and_torchscript_graphs(name):
    """timm's FX tests assert ``torch.all(fx_outputs == outputs)`` on an eval model (with gradients enabled in
    older timm, in inference mode in newer): bit equality, which holds because eval mode runs the native ops
    that the graph records. The scripted graph runs the same ops too."""
    torch.manual_seed(0)
    # bottleneck models with one block per stage: the same block types, a fraction of the tracing and scripting
    kwargs = dict(layers=(1, 1, 1, 1)) if "resnet18" not in name else {}
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():   # non-trivial running statistics
        for m in model.modules():
            if getattr(m, "running_var", None) is not None:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 96, 96)
    outputs = model(x)                       # grad enabled, as the older timm test runs it
    with torch.inference_mode():
        outputs_inf = model(x)
    graph = fx_model(model)
    fx_out = torch.cat(tuple(graph(x).values()))
    assert torch.equal(outputs, outputs_inf)
    assert torch.equal(fx_out, outputs)
    scripted = torch.jit.script(graph)
    with torch.no_grad():
        assert torch.equal(torch.cat(tuple(scripted(x).values())), outputs)


def test_inductor_cache_is_kept_per_cpu_dispatch(monkeypatch):
    """Compiled CPU code cached under one ATen dispatch is never loaded under another (ibnnet/models/compiling.py);
    a folder the user chose is kept."""
    import os

    from ibnnet.models.compiling import compile_network
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    compile_network(torch.nn.Linear(2, 2), "cpu")   # compiles lazily, at the first call: nothing runs here
    path = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    assert path.endswith(f"cpu-{torch.backends.cpu.get_cpu_capability().lower()}")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/mine")
    compile_network(torch.nn.Linear(2, 2), "cpu")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/tmp/mine"
