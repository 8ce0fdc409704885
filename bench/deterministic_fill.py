"""What PyTorch's NaN fill of new tensors costs in deterministic mode, and that turning it off changes no number.

``torch.use_deterministic_algorithms(True)`` (Lightning's ``deterministic=True``) by default also fills the
memory of every new tensor with NaN (``torch.utils.deterministic.fill_uninitialized_memory``), a debugging aid
against kernels that read memory they never wrote. Deterministic runs turn it off (``apply_numerics`` in
``ibnnet/runs/runner.py``). This times the demo's training step (configs/demo.yaml's network, batch 64, 48 px,
fused AdamW) with and without the fill in alternating rounds of one process, so background load hits both alike,
and reports the ratio of the median step times. Both settings train their own copy of the model from the same
start on the same batches; the last line says whether they end with bit-identical weights.

    uv run python bench/deterministic_fill.py
    uv run python bench/deterministic_fill.py --model resnet50_ibn_a --channels "" --batch 16 --size 128
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import os
import statistics
import sys
import time

from ibnnet.runs.env import needs_portable_restart

# The demo's kernels: the pinned instruction sets must be in the environment before torch loads.
_restart = needs_portable_restart(True)
if _restart is not None:
    os.execve(sys.executable, [sys.executable, *sys.argv], _restart)

import timm  # noqa: E402
import torch  # noqa: E402

import ibnnet  # noqa: E402,F401  (registers the models)
from portable_cpu import demo_channels  # noqa: E402  (bench/ is the script's folder, first on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet18_ibn_a")
    ap.add_argument("--channels", default=demo_channels(), help="ResNet widths, comma-separated ('' = the model's)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4, help="steps per round")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    kwargs = {"channels": [int(c) for c in args.channels.split(",")]} if args.channels else {}
    start = timm.create_model(args.model, num_classes=10, **kwargs).train()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(args.batch, 3, args.size, args.size, generator=g),
                torch.randint(0, 10, (args.batch,), generator=g)) for _ in range(4)]
    runs = {}
    for fill in (True, False):
        model = copy.deepcopy(start)
        runs[fill] = {"model": model, "opt": torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True),
                      "times": [], "step": 0}

    def train(run, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            x, y = batches[run["step"] % len(batches)]
            run["opt"].zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(run["model"](x), y).backward()
            run["opt"].step()
            run["step"] += 1
        return (time.perf_counter() - t0) / n

    for r in range(args.rounds + 1):             # round 0 warms both up and is not counted
        for fill in ((True, False) if r % 2 else (False, True)):
            torch.utils.deterministic.fill_uninitialized_memory = fill
            s = train(runs[fill], args.steps)
            if r:
                runs[fill]["times"].append(s)
    med = {fill: statistics.median(run["times"]) for fill, run in runs.items()}
    print(f"{args.model} batch {args.batch} at {args.size} px, {args.threads} threads, "
          f"{torch.backends.cpu.get_cpu_capability()} kernels, {args.rounds} rounds of {args.steps} steps")
    print(f"{'setting':24s} {'s/step':>7s} {'ratio':>6s}")
    print(f"{'NaN fill (PyTorch)':24s} {med[True]:7.3f} {1.0:6.2f}")
    print(f"{'no fill (ibnnet)':24s} {med[False]:7.3f} {med[False] / med[True]:6.2f}")
    digest = {fill: hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in run["model"].parameters()))
              .hexdigest()[:16] for fill, run in runs.items()}
    same = "bit-identical" if digest[True] == digest[False] else "DIFFERENT"
    print(f"weights after {runs[True]['step']} steps each: {same} ({digest[True]} / {digest[False]})")


if __name__ == "__main__":
    main()
