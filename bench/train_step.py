"""Time a training step (forward + backward + SGD step) of our ResNet-50 variants against torchvision's.

All models run interleaved in one process, so background load affects them alike; the report is the
ratio of each model's median step time to torchvision's resnet50 measured in the same rounds.
"Official SN math" is the official layer's formula in plain autograd (what the official code runs),
for comparison with our fused SwitchNorm2d.

One run prints every ratio as one table: float32 and bf16-autocast step times, saved-for-backward
memory (CPU; peak memory on CUDA) under both, optionally channels-last and the Inductor-compiled step.

    uv run python bench/train_step.py                           # CPU: batch 8 at 224 px, 6 rotated rounds
    uv run python bench/train_step.py --channels-last --compile # every column (compiling takes minutes)
    uv run python bench/train_step.py --device cuda --batch 64 --half float16
"""
from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
import torchvision
from torch import nn

import ibnnet  # noqa: F401  (registers the models)
from ibnnet.models.compiling import compile_network


class OfficialSNMath(nn.Module):
    """The official SwitchNorm2d forward in plain autograd (reference for the speed comparison)."""

    def __init__(self, c: int, last_gamma: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, c, 1, 1) if last_gamma else torch.ones(1, c, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.mean_weight = nn.Parameter(torch.ones(3))
        self.var_weight = nn.Parameter(torch.ones(3))
        self.register_buffer("running_mean", torch.zeros(1, c, 1))
        self.register_buffer("running_var", torch.zeros(1, c, 1))

    def forward(self, x):
        n, c, h, w = x.shape
        x = x.view(n, c, -1)
        mean_in = x.mean(-1, keepdim=True)
        var_in = x.var(-1, keepdim=True)
        mean_ln = mean_in.mean(1, keepdim=True)
        temp = var_in + mean_in ** 2
        var_ln = temp.mean(1, keepdim=True) - mean_ln ** 2
        mean_bn = mean_in.mean(0, keepdim=True)
        var_bn = temp.mean(0, keepdim=True) - mean_bn ** 2
        with torch.no_grad():
            self.running_mean.mul_(0.9).add_(0.1 * mean_bn)
            self.running_var.mul_(0.9).add_(0.1 * var_bn)
        mw = torch.softmax(self.mean_weight, 0)
        vw = torch.softmax(self.var_weight, 0)
        mean = mw[0] * mean_in + mw[1] * mean_ln + mw[2] * mean_bn
        var = vw[0] * var_in + vw[1] * var_ln + vw[2] * var_bn
        x = (x - mean) / (var + 1e-5).sqrt()
        return x.view(n, c, h, w) * self.weight + self.bias


def official_sn_resnet50() -> nn.Module:
    model = timm.create_model("resnet50_sn")
    for name, module in list(model.named_modules()):
        if isinstance(module, ibnnet.layers.SwitchNorm2d):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], OfficialSNMath(module.num_features))
    return model


def build(name: str) -> nn.Module:
    if name == "torchvision_resnet50":
        return torchvision.models.resnet50()
    if name == "official_sn_math":
        return official_sn_resnet50()
    return timm.create_model(name)


def saved_activation_bytes(model, x, y, loss_fn, autocast: torch.dtype | None) -> int:
    """Bytes autograd keeps for backward in one step (distinct storages): the activation memory."""
    seen: dict[int, int] = {}

    def pack(t):
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(x.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = loss_fn(model(x), y)
    loss.backward()
    return sum(seen.values())


def time_rounds(steps: dict, rounds: int, warmup: int) -> dict[str, float]:
    """Median seconds per step of each callable, interleaved in rotated order (each round starts one later)."""
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            times[n].append(steps[n]())
    return {n: statistics.median(v) for n, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true", help="also time every model in channels-last")
    ap.add_argument("--half", default="bfloat16", choices=["bfloat16", "float16", "none"],
                    help="autocast dtype of the second set of columns ('none' skips them)")
    ap.add_argument("--compile", action="store_true",
                    help="also time the Inductor-compiled step of torchvision's and our IBN-a/IBN-b/SN models "
                         "(minutes of compilation on a small CPU)")
    ap.add_argument("--compile-models", nargs="+",
                    default=["torchvision_resnet50", "resnet50_ibn_a", "resnet50_ibn_b", "resnet50_sn"])
    ap.add_argument("--models", nargs="+", default=["torchvision_resnet50", "resnet50_bn", "resnet50_ibn_a",
                                                     "resnet50_ibn_b", "resnet50_sn", "official_sn_math"])
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    x_nchw = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, 1000, (args.batch,), device=dev)
    loss_fn = nn.CrossEntropyLoss()
    half = None if args.half == "none" else getattr(torch, args.half)
    models, opts = {}, {}
    for name in args.models:
        m = build(name).to(dev).train()
        models[name] = m
        opts[name] = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def make_step(name: str, model: nn.Module, autocast: torch.dtype | None, fmt=torch.contiguous_format):
        opt = opts[name]
        x = x_nchw.contiguous(memory_format=fmt)

        def step() -> float:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast(dev.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0
        return step

    base = args.models[0]
    columns: dict[str, dict[str, float]] = {}
    precisions = [("fp32", None)] + ([(args.half, half)] if half is not None else [])
    for label, ac in precisions:
        med = time_rounds({n: make_step(n, m, ac) for n, m in models.items()}, args.rounds, args.warmup)
        columns[f"{label} s/step"] = med
        columns[f"{label} ratio"] = {n: med[n] / med[base] for n in med}
        mem = {}
        for n, m in models.items():
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                make_step(n, m, ac)()
                mem[n] = torch.cuda.max_memory_allocated() / 2**20
            else:
                mem[n] = saved_activation_bytes(m, x_nchw, y, loss_fn, ac) / 2**20
        kind = "peak" if dev.type == "cuda" else "saved"
        columns[f"{label} {kind} MiB"] = mem
        columns[f"{label} mem ratio"] = {n: mem[n] / mem[base] for n in mem}
    if args.channels_last:
        for m in models.values():
            m.to(memory_format=torch.channels_last)
        med = time_rounds({n: make_step(n, m, None, torch.channels_last) for n, m in models.items()},
                          args.rounds, args.warmup)
        columns["fp32 CL ratio"] = {n: med[n] / med[base] for n in med}
        for m in models.values():
            m.to(memory_format=torch.contiguous_format)
    if args.compile:
        compiled = {}
        for n in args.compile_models:
            if n not in models:
                continue
            # Inductor, in place, as trainer.compile=true does; the first calls (warm-up) compile forward and backward
            compile_network(models[n], args.device)
            compiled[n] = make_step(n, models[n], None)
        med = time_rounds(compiled, args.rounds, max(2, args.warmup))
        columns["compiled fp32 ratio"] = {n: med[n] / med[base] for n in med}
    print(f"device={dev} threads={torch.get_num_threads()} batch={args.batch} size={args.size} "
          f"rounds={args.rounds} (median of rotated rounds; ratios to {base} in the same rounds)")
    kernels = {p: ibnnet.layers.kernel_for("SwitchNorm2d", dev.type, d or torch.float32) for p, d in precisions}
    print("norm kernels chosen: " + ", ".join(
        f"{p}: IN {ibnnet.layers.kernel_for('InstanceNorm2d', dev.type, d or torch.float32)}, "
        f"IBN {ibnnet.layers.kernel_for('IBN', dev.type, d or torch.float32)}, SN {kernels[p]}"
        for p, d in precisions))
    heads = list(columns)
    print(f"{'model':22s} " + " ".join(f"{h:>16s}" for h in heads))
    for n in models:
        cells = []
        for h in heads:
            v = columns[h].get(n)
            cells.append(f"{'-':>16s}" if v is None else f"{v:16.3f}" if "ratio" in h or "s/step" in h
                         else f"{v:16.1f}")
        print(f"{n:22s} " + " ".join(cells))


if __name__ == "__main__":
    main()
