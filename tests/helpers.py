"""Shared by the training and SLURM tests: tiny run configs on the built-in data and a CLI runner."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# With the pinned CPU kernels conftest.py puts in the environment: run processes need not restart themselves
# (tests/test_portable_cpu.py tests the restart).
ENV = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline", WANDB_SILENT="true")

CLS = """
defaults: [{optim: demo}, {trainer: cpu_demo}, {logger: offline}, {launcher: local}]
task: classification
model: {name: resnet18_ibn_a}
data:
  train: {dataset: builtin_cls, split: train, domain: synthetic, num_samples: 96}
  val:
    - {name: synthetic, dataset: builtin_cls, split: val, domain: synthetic, num_samples: 24}
    - {name: real, dataset: builtin_cls, split: val, domain: real, num_samples: 24}
  batch_size: 16
  num_workers: 0
  augment: {image_size: 48, eval_resize: 48}
optim: {name: sgd, lr: 0.01, schedule: constant, warmup_epochs: 0}
trainer: {max_epochs: 8, enable_progress_bar: false, log_every_n_steps: 1}
"""

# The smallest real training run: 2 epochs of 2 batches at 32 px, no wandb, one thread.
TINY = """
defaults: [{optim: demo}, {trainer: cpu_demo}, {logger: disabled}, {launcher: local}]
task: classification
model: {name: resnet18_bn}
data:
  train: {dataset: builtin_cls, split: train, domain: synthetic, num_samples: 32}
  val:
    - {name: synthetic, dataset: builtin_cls, split: val, domain: synthetic, num_samples: 8}
  batch_size: 16
  num_workers: 0
  augment: {image_size: 32, eval_resize: 32}
optim: {name: sgd, lr: 0.01, schedule: constant, warmup_epochs: 0}
trainer: {max_epochs: 2, enable_progress_bar: false, log_every_n_steps: 1, num_threads: 1}
"""

SEG = """
defaults: [{optim: demo}, {trainer: cpu_demo}, {logger: offline}, {launcher: local}]
task: segmentation
model: {name: resnet18_ibn_b}
data:
  train: {dataset: builtin_seg, split: train, domain: synthetic, num_samples: 64}
  val:
    - {name: synthetic, dataset: builtin_seg, split: val, domain: synthetic, num_samples: 7}
    - {name: real, dataset: builtin_seg, split: val, domain: real, num_samples: 7}
  batch_size: 8
  eval_batch_size: 3
  num_workers: 0
  augment: {crop_size: [32, 32], scale_range: [0.9, 1.1]}
optim: {name: sgd, lr: 0.01, schedule: constant, warmup_epochs: 0}
trainer: {max_epochs: 3, enable_progress_bar: false, log_every_n_steps: 1}
"""


def config(tmp_path: Path, body: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body) + f"paths: {{runs: {tmp_path / 'runs'}, results: {tmp_path / 'results'}}}\n")
    return path


def cli(*args, env: dict | None = None) -> str:
    """Run a non-training ``ibnnet`` command in this process (no 10 s interpreter start-up); its stdout.

    Raises AssertionError with the output on a non-zero exit code.
    """
    import contextlib
    import io

    from ibnnet.cli import main
    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if code != 0:
        raise AssertionError(f"ibnnet {' '.join(map(str, args))} exited {code}:\n{out.getvalue()}\n{err.getvalue()}")
    return out.getvalue()


def ibnnet(*args, check=True, timeout=600, env=None):
    proc = subprocess.run([sys.executable, "-m", "ibnnet", *map(str, args)], env=env or ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ibnnet {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _tensors(obj, prefix=""):
    """Every tensor in a (nested) checkpoint, by path."""
    import torch
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def assert_same_training(a, b, epochs: int, steps_per_epoch: int, num_samples: int) -> None:
    """Two finished run folders trained the same model: every tensor of last.ckpt (weights, buffers,
    optimizer state), the step count, the metrics and the sample indices of every batch are identical."""
    import torch

    from ibnnet.runs.exact import read_sample_log
    ca = torch.load(a.checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=True)
    cb = torch.load(b.checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert ca["global_step"] == cb["global_step"] == epochs * steps_per_epoch
    ta = dict(_tensors({"state_dict": ca["state_dict"], "optimizer_states": ca["optimizer_states"]}))
    tb = dict(_tensors({"state_dict": cb["state_dict"], "optimizer_states": cb["optimizer_states"]}))
    assert ta.keys() == tb.keys() and len(ta) > 100
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} of {len(ta)} tensors differ, e.g. {different[:5]}"
    assert a.metrics()["metrics"] == b.metrics()["metrics"]
    sa, sb = read_sample_log(a.path / "logs"), read_sample_log(b.path / "logs")
    assert [(r["epoch"], r["batch"], r["step"]) for r in sa] == [
        (e, i, e * steps_per_epoch + i + 1) for e in range(epochs) for i in range(steps_per_epoch)]
    assert sa == sb   # the same samples in the same order at every step, none twice, none skipped
    for e in range(epochs):  # each epoch is a permutation of the training set, and epochs differ
        seen = [i for r in sa if r["epoch"] == e for i in r["indices"]]
        assert sorted(seen) == list(range(num_samples))
    assert [r["indices"] for r in sa[:steps_per_epoch]] != [r["indices"] for r in sa[steps_per_epoch:2 * steps_per_epoch]]


def saved_tensor_bytes(layer, x, kind: str) -> int:
    """Bytes of the storages autograd keeps for backward when ``layer`` runs ``kind`` ("fused"/"native") on ``x``
    (one forward and backward)."""
    import torch

    from ibnnet.layers import use_kernel
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), use_kernel(kind):
        y = layer(x)
    y.float().sum().backward()
    return sum(storages.values())


def logged_rows(folder) -> list[dict[str, str]]:
    """A run's logs/metrics.csv rows, each without its empty cells."""
    import csv
    with open(Path(folder.path) / "logs" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
