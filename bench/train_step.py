"""Time a training step (forward + backward + SGD step) of our ResNet-50 variants against torchvision's.

All models run interleaved in one process, so background load affects them alike; the report is the
ratio of each model's median step time to torchvision's resnet50 measured in the same rounds.
"Official SN math" is the official layer's formula in plain autograd (what the official code runs),
for comparison with our fused SwitchNorm2d.

    uv run python bench/train_step.py                 # CPU defaults: batch 8 at 224 px, 8 rounds
    uv run python bench/train_step.py --device cuda --batch 64 --channels-last --bf16
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from torch import nn

import ibnnet  # noqa: F401  (registers the models)
import timm


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


def saved_activation_bytes(model, x, y, loss_fn) -> int:
    """Bytes autograd keeps for backward in one step (distinct storages): the activation memory."""
    seen: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in seen:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model(x), y)
    loss.backward()
    return sum(seen.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    ap.add_argument("--models", nargs="+", default=["torchvision_resnet50", "resnet50_bn", "resnet50_ibn_a",
                                                     "resnet50_ibn_b", "resnet50_sn", "official_sn_math"])
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, 1000, (args.batch,), device=dev)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    loss_fn = nn.CrossEntropyLoss()
    models, opts = {}, {}
    for name in args.models:
        m = build(name).to(dev, memory_format=fmt).train()
        models[name] = m
        opts[name] = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step(name: str) -> float:
        m, opt = models[name], opts[name]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = loss_fn(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        for name in models:
            step(name)
    times: dict[str, list[float]] = {n: [] for n in models}
    for _ in range(args.rounds):
        for name in models:
            times[name].append(step(name))
    memory = {}
    for name, m in models.items():
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step(name)
            memory[name] = torch.cuda.max_memory_allocated() / 2**20
        else:
            memory[name] = saved_activation_bytes(m, x, y, loss_fn) / 2**20
    base = statistics.median(times[args.models[0]])
    mem_label = "peak MiB" if dev.type == "cuda" else "saved-for-backward MiB"
    print(f"device={dev} threads={torch.get_num_threads()} batch={args.batch} size={args.size} "
          f"rounds={args.rounds} channels_last={args.channels_last} bf16={args.bf16}")
    print(f"{'model':24s} {'median s/step':>14s} {'images/s':>9s} {'ratio':>6s} {mem_label:>22s}")
    for name in models:
        med = statistics.median(times[name])
        print(f"{name:24s} {med:14.4f} {args.batch / med:9.1f} {med / base:6.3f} {memory[name]:22.1f}")


if __name__ == "__main__":
    main()
