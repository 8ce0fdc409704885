"""Fused moment kernel vs PyTorch's native ops, per normalization layer, device and dtype.

The measurements behind ``ibnnet.layers.kernels.MEASURED_CHOICE``: forward + backward of one layer on a
ResNet-50 layer1-sized activation (batch 8 at 224 px: 8 x 256 x 56 x 56), both implementations forced with
``ibnnet.layers.use_kernel``, interleaved in rotated rounds (background load hits both alike), median
time per call. ``nn.BatchNorm2d`` is the floor. Also reports the bytes saved for backward per layer.

    uv run python bench/kernels.py                       # CPU, float32 and bfloat16
    uv run python bench/kernels.py --device cuda --dtypes float32 bfloat16 float16
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from ibnnet.layers import (
    IBN,
    GhostBatchNorm2d,
    InstanceNorm2d,
    SwitchNorm2d,
    kernel_for,
    use_kernel,
)

LAYERS = {
    "InstanceNorm2d": lambda c: InstanceNorm2d(c, affine=True),
    "IBN": lambda c: IBN(c, 0.5),
    "SwitchNorm2d": lambda c: SwitchNorm2d(c),
    "GhostBatchNorm2d": lambda c: GhostBatchNorm2d(c, ghost_batch_size=2),
}


def saved_bytes(fn, x) -> int:
    """Distinct storages autograd keeps for backward while running ``fn(x)``."""
    seen: dict[int, int] = {}

    def pack(t):
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x)
    y.sum().backward()
    return sum(seen.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--shape", type=int, nargs=4, default=[8, 256, 56, 56])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args()
    dev = torch.device(args.device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    print(f"device={dev} threads={torch.get_num_threads()} shape={tuple(args.shape)} rounds={args.rounds} "
          f"channels_last={args.channels_last}")
    print(f"{'layer':18s} {'dtype':9s} {'bn ms':>7s} {'fused ms':>9s} {'native ms':>10s} {'faster':>7s} "
          f"{'chosen':>7s} {'saved MiB fused/native/bn':>26s}")
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        torch.manual_seed(0)
        x0 = torch.randn(*args.shape, device=dev).to(dtype).contiguous(memory_format=fmt)
        gy = torch.randn_like(x0)
        c = args.shape[1]
        bn = nn.BatchNorm2d(c).to(dev)
        for name, make in LAYERS.items():
            layer = make(c).to(dev).train()

            def run(kind: str) -> float:
                x = x0.detach().requires_grad_()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                if kind == "bn":
                    y = bn(x)
                else:
                    with use_kernel(kind):
                        y = layer(x)
                y.backward(gy)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                return time.perf_counter() - t0

            kinds = ["bn", "fused", "native"]
            times: dict[str, list[float]] = {k: [] for k in kinds}
            for k in kinds:  # warm-up
                run(k)
            for r in range(args.rounds):
                for k in kinds[r % 3:] + kinds[:r % 3]:
                    times[k].append(run(k))
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            mem = {}
            for k in ("fused", "native"):
                with use_kernel(k):
                    mem[k] = saved_bytes(layer, x0.detach().requires_grad_()) / 2**20
            mem["bn"] = saved_bytes(bn, x0.detach().requires_grad_()) / 2**20
            faster = "fused" if med["fused"] < med["native"] else "native"
            chosen = kernel_for(name, dev.type, dtype)
            print(f"{name:18s} {dtype_name:9s} {med['bn']:7.1f} {med['fused']:9.1f} {med['native']:10.1f} "
                  f"{faster:>7s} {chosen:>7s} {mem['fused']:8.1f}/{mem['native']:.1f}/{mem['bn']:.1f}")


if __name__ == "__main__":
    main()
