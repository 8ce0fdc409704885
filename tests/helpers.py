"""Shared by the training and SLURM tests: tiny run configs on the built-in data and a CLI runner."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
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


