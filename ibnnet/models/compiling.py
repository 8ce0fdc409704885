"""``torch.compile`` for training, with Inductor options that keep gradients equal to eager mode."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def inductor_options(device_type: str) -> dict[str, Any]:
    """Inductor config overrides for compiling a network that trains on ``device_type``.

    CPU: no layout optimization. With it (Inductor's default), Inductor rewrites the convolutions to
    channels-last, and on CPU the compiled ResNet-18 training step gives parameter gradients 0.8 %
    (torchvision's resnet18) to 3 % (our IBN-a) away, in relative L2 norm, from a float64 reference, where
    eager mode, in NCHW or channels-last, is within 1e-5; without it the compiled gradients are within 1e-5
    (tests/test_kernels.py). Measured with torch 2.15 on this project's 2-core CI machine. CUDA keeps
    Inductor's defaults: nothing has been measured there.
    """
    return {"layout_optimization": False} if device_type == "cpu" else {}


def compile_network(network: nn.Module, device_type: str) -> nn.Module:
    """Compile ``network`` in place with Inductor (``nn.Module.compile``: state_dict keys are unchanged)."""
    if device_type == "cpu":
        isa_keyed_inductor_cache()
    network.compile(options=inductor_options(device_type) or None)
    return network


def isa_keyed_inductor_cache() -> str:
    """Inductor's cache folder, one per ATen CPU dispatch unless the user chose ``TORCHINDUCTOR_CACHE_DIR``.

    Deterministic runs pin the dispatch to AVX2 (ibnnet/runs/env.py) and others use the CPU's own, on the same
    machine; Inductor's cache key does not include it, and a backward compiled under AVX-512 and loaded under
    AVX2 (or ``default``) crashed with an index-out-of-bounds assertion in its max-pool kernel (torch 2.15).
    Inductor writes its default folder into the variable when first imported (``import timm`` does), so that
    value counts as unset; Inductor reads the variable again whenever it needs the folder."""
    import getpass
    import os
    import tempfile
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid_{os.getuid()}"
    default = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == default:
        isa = torch.backends.cpu.get_cpu_capability().lower()
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(default, f"cpu-{isa}")
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def training_device_type(accelerator: str) -> str:
    """``trainer.accelerator`` as a device type: ``cpu``, or ``cuda`` for gpu/cuda/auto with a GPU present."""
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        return "cpu"
    return "cuda" if accelerator in ("gpu", "cuda", "auto") else accelerator
