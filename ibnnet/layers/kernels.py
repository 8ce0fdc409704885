"""Which implementation the normalization layers run, per (device, dtype), and a report of the choice.

Every IN, IBN, SN and ghost-BN layer has two implementations with the same outputs, gradients and
running-statistics updates:

- ``fused``: the hand-written moment kernel (:mod:`ibnnet.layers.moments`): one statistics pass, one
  affine pass, a hand-written backward. Eager mode only.
- ``native``: PyTorch's own ops (``F.instance_norm`` / ``F.batch_norm``; SN, ghost BN and channels-last
  IN as plain differentiable ops over per-instance moments). Scriptable, fx-traceable, exportable and
  compilable, so it is also what ``torch.jit.script``, ``torch.fx``, ``torch.export`` and
  ``torch.compile`` see, whatever the table below says.

The choice is per (layer, device type, dtype) in :data:`MEASURED_CHOICE`, in training mode; anything not
listed, and every layer in eval mode, runs the native ops (:func:`use_fused`). What the entries rest on:

- CPU, IBN, SN, ghost BN in float32/float64 and IBN in bfloat16: the fused kernel, measured faster than
  the native ops per layer (``bench/kernels.py``: forward + backward of an 8x256x56x56 activation, 2
  cores, IBN 186 vs 276 ms float32 and 187 vs 348 ms bfloat16, where the native IBN also saves the
  split halves' copies) and in whole ResNet-50 steps (``bench/train_step.py``).
- CPU, InstanceNorm2d: native ``F.instance_norm`` (one batch-norm kernel over an (1, N*C, H, W) view),
  measured faster than the fused kernel (107 vs 211 ms float32, 72 vs 196 ms bfloat16).
- Half precision, SN and ghost BN (no native PyTorch op exists): the fused kernel on every device. It
  works in the input's dtype on a mean-centred copy (float32 statistics, no float32 activation copy, only
  a half-precision tensor saved for backward); the plain-op alternative needs float32 copies of the
  activation to keep float32-accurate statistics (or loses the variance when |mean| >> std), and was
  measured 3x slower with 4x the saved memory (577 vs 198 ms, 49 vs 12 MiB for SN in bfloat16).
- CUDA, IBN in half precision: the fused kernel, for memory. The native IBN splits the channels; each half of a
  channels-last tensor is a channel slice, whose instance norm runs as plain ops on float32 copies, so autograd
  keeps about 3x the activation bytes BN keeps (``tests/test_precision.py`` counts them), where the fused kernel
  keeps one half-precision tensor, as BN does. Its speed on a GPU is what ``bench/gpu_acceptance.sh`` reports.
- CUDA otherwise: native (cuDNN batch norm is one fused kernel) until a GPU run of ``bench/`` shows
  the fused kernel faster.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor

FUSED = "fused"
NATIVE = "native"

LAYERS = ("InstanceNorm2d", "IBN", "SwitchNorm2d", "GhostBatchNorm2d")
_HALF = (torch.bfloat16, torch.float16)

# (layer, device type, dtype) -> implementation; the reasons are in the module docstring.
MEASURED_CHOICE: dict[tuple[str, str, torch.dtype], str] = {}
for _layer in ("IBN", "SwitchNorm2d", "GhostBatchNorm2d"):
    MEASURED_CHOICE[(_layer, "cpu", torch.float32)] = FUSED
    MEASURED_CHOICE[(_layer, "cpu", torch.float64)] = FUSED
MEASURED_CHOICE[("IBN", "cpu", torch.bfloat16)] = FUSED
for _layer in ("SwitchNorm2d", "GhostBatchNorm2d"):
    for _device in ("cpu", "cuda"):
        for _dtype in _HALF:
            MEASURED_CHOICE[(_layer, _device, _dtype)] = FUSED
for _dtype in _HALF:   # IBN under autocast on CUDA: for the saved memory (module docstring)
    MEASURED_CHOICE[("IBN", "cuda", _dtype)] = FUSED

_forced: list[str] = []


def _is_fx_tracing() -> bool:
    # torch.fx has no public flag; newer versions split symbolic tracing from export (covered by is_compiling).
    from torch.fx import _symbolic_trace as st
    check = getattr(st, "is_fx_symbolic_tracing", None) or getattr(st, "is_fx_tracing", None)
    return bool(check and check())


def graph_capture_active() -> bool:
    """True under torch.compile/export (Dynamo), torch.jit.trace and torch.fx symbolic tracing."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or _is_fx_tracing()


def kernel_for(layer: str, device_type: str, dtype: torch.dtype) -> str:
    """The implementation ``layer`` (a name in :data:`LAYERS`) runs in eager mode on this device type and dtype."""
    if _forced:
        return _forced[-1]
    return MEASURED_CHOICE.get((layer, device_type, dtype), NATIVE)


def use_fused(layer: str, x: Tensor, training: bool = True) -> bool:
    """Whether ``layer`` should run the fused kernel on ``x``: in training mode where :data:`MEASURED_CHOICE` says
    so, never while a graph is being captured.

    Eval mode runs the native ops: the same ops torch.fx, TorchScript and torch.export record, so an eager model
    and its traced graph give identical outputs (timm's FX tests compare them with ``==``); the fused kernel's
    win is its hand-written backward, which inference does not run. ``use_kernel`` forces either in any mode."""
    if graph_capture_active():
        return False
    if _forced:
        return _forced[-1] == FUSED
    return training and kernel_for(layer, x.device.type, x.dtype) == FUSED


@contextlib.contextmanager
def use_kernel(kind: str) -> Iterator[None]:
    """Force ``"fused"`` or ``"native"`` for every layer inside the block (benchmarks and tests)."""
    if kind not in (FUSED, NATIVE):
        raise ValueError(f"kernel must be {FUSED!r} or {NATIVE!r}, got {kind!r}")
    _forced.append(kind)
    try:
        yield
    finally:
        _forced.pop()


_NATIVE_OPS = {
    "InstanceNorm2d": "F.instance_norm (channels-last input: plain ops, layout kept)",
    "IBN": "split + F.instance_norm + F.batch_norm + cat",
    "SwitchNorm2d": "plain autograd ops over per-instance moments (float32 for half inputs)",
    "GhostBatchNorm2d": "plain autograd ops over per-instance moments (F.batch_norm when one group)",
}
_FUSED_OPS = {
    "InstanceNorm2d": "fused moment kernel",
    "IBN": "fused moment kernel (IN and BN halves in one pass)",
    "SwitchNorm2d": "fused moment kernel",
    "GhostBatchNorm2d": "fused moment kernel (F.batch_norm when one group)",
}


def kernel_report(devices: tuple[str, ...] = ("cpu", "cuda"),
                  dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16),
                  print_table: bool = True) -> list[dict[str, str]]:
    """Which implementation each layer type runs per (device, dtype) in eager training mode; printed as a table.

    Under bf16/fp16 autocast the layers see the dtype autocast gives the preceding convolution.
    ``torch.jit.script``, ``torch.fx``, ``torch.export`` and ``torch.compile`` always run the native ops.
    """
    rows = []
    for device in devices:
        for dtype in dtypes:
            for layer in LAYERS:
                kind = kernel_for(layer, device, dtype)
                impl = (_FUSED_OPS if kind == FUSED else _NATIVE_OPS)[layer]
                rows.append({"layer": layer, "device": device, "dtype": str(dtype).replace("torch.", ""),
                             "kernel": kind, "implementation": impl})
    if print_table:
        print(f"{'layer':18s} {'device':6s} {'dtype':9s} {'kernel':7s} implementation")
        for r in rows:
            print(f"{r['layer']:18s} {r['device']:6s} {r['dtype']:9s} {r['kernel']:7s} {r['implementation']}")
        print("eval mode, torch.jit.script / torch.fx / torch.export / torch.compile: native, for every layer")
    return rows
