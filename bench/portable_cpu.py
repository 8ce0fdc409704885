"""What pinning the CPU kernels to AVX2 costs: the demo's training step with the pinned instruction set
(``ibnnet.runs.env.PORTABLE_CPU_ENV``, what every deterministic run uses) against the CPU's native dispatch.

Each library reads its variable once, before its first kernel, so the two settings live in two child processes
(one per setting) that run their steps in alternating rounds: background load hits both alike, and the report is
the ratio of their median step times. The children train the same model on the same batches, so the last line
also says whether the two settings end with the same weights (on a CPU with more than AVX2 they do not: that is
why deterministic runs pin it).

    uv run python bench/portable_cpu.py                    # the demo's step (configs/demo.yaml's network), batch 64, 48 px
    uv run python bench/portable_cpu.py --model resnet50_ibn_a --channels "" --batch 16 --size 128
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import hashlib, json, sys, time
import timm, torch
import ibnnet  # noqa: F401
model_name, batch, size, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
channels = json.loads(sys.argv[5])
torch.set_num_threads(threads)
torch.use_deterministic_algorithms(True)
torch.manual_seed(0)
model = timm.create_model(model_name, num_classes=10, **({"channels": channels} if channels else {})).train()
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
g = torch.Generator().manual_seed(1)
batches = [(torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 10, (batch,), generator=g))
           for _ in range(4)]
step = 0
print(json.dumps({"ready": torch.backends.cpu.get_cpu_capability()}), flush=True)
for line in sys.stdin:
    n = int(line)
    if n == 0:
        digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
        print(json.dumps({"weights": digest[:16], "steps": step}), flush=True)
        break
    start = time.perf_counter()
    for _ in range(n):
        x, y = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        step += 1
    print(json.dumps({"s_per_step": (time.perf_counter() - start) / n}), flush=True)
"""


def demo_channels() -> str:
    """The demo's ResNet widths (``model.channels`` of configs/demo.yaml), comma-separated."""
    from omegaconf import OmegaConf
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    return ",".join(str(c) for c in cfg.model.channels)


def main() -> None:
    from ibnnet.runs.env import PORTABLE_CPU_ENV
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet18_ibn_a")
    ap.add_argument("--channels", default=demo_channels(),
                    help="the ResNet's group widths, comma-separated (default: the demo's); '' keeps the model's")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=5, help="steps per round")
    args = ap.parse_args()

    native_env = {k: v for k, v in os.environ.items() if k not in PORTABLE_CPU_ENV}
    settings = {"native": native_env, "pinned (AVX2)": dict(os.environ, **PORTABLE_CPU_ENV)}
    procs = {}
    for name, env in settings.items():
        procs[name] = subprocess.Popen(
            [sys.executable, "-c", CHILD, args.model, str(args.batch), str(args.size), str(args.threads),
             json.dumps([int(c) for c in args.channels.split(",") if c.strip()])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    capability = {name: json.loads(p.stdout.readline())["ready"] for name, p in procs.items()}

    def ask(p, n):
        p.stdin.write(f"{n}\n")
        p.stdin.flush()
        return json.loads(p.stdout.readline())

    for p in procs.values():   # warm-up: oneDNN primitive creation, allocator
        ask(p, 2)
    times = {name: [] for name in procs}
    for r in range(args.rounds):
        order = list(procs) if r % 2 == 0 else list(reversed(procs))
        for name in order:
            times[name].append(ask(procs[name], args.steps)["s_per_step"])
    final = {name: ask(p, 0) for name, p in procs.items()}
    for p in procs.values():
        p.wait()

    base = statistics.median(times["native"])
    widths = f" (channels {args.channels})" if args.channels else ""
    print(f"{args.model}{widths}, batch {args.batch} at {args.size} px, {args.threads} threads, "
          f"{args.rounds} rounds of {args.steps} steps")
    print(f"{'setting':15s} {'ATen dispatch':14s} {'s/step':>8s} {'ratio':>6s} weights after "
          f"{final['native']['steps']} steps")
    for name in procs:
        med = statistics.median(times[name])
        print(f"{name:15s} {capability[name]:14s} {med:8.3f} {med / base:6.2f} {final[name]['weights']}")
    same = final["native"]["weights"] == final["pinned (AVX2)"]["weights"]
    print("same weights under both settings" if same else
          "different weights: the CPU's native dispatch changes the float sums")


if __name__ == "__main__":
    main()
