"""Exact runs: a run interrupted anywhere and resumed ends bit-identical to an uninterrupted one, and the
same command gives the same numbers. Compared: every tensor of last.ckpt (weights, buffers, optimizer
state), the step count, metrics.json's metrics and the sample indices of every trained batch."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ENV, REPO, assert_same_training, cli, config, logged_rows

from ibnnet.config import compose
from ibnnet.runs.folder import RunFolder, run_dir

# Dropout (drop_rate) and flip augmentation make the global and per-sample RNGs matter; 2 workers load
# the reference run, 0 the interrupted one, so equality also shows that workers do not change the data.
EXACT = """
defaults: [{optim: demo}, {trainer: cpu_demo}, {logger: disabled}, {launcher: local}]
task: classification
model: {name: resnet18_bn, drop_rate: 0.2}
data:
  train: {dataset: builtin_cls, split: train, domain: synthetic, num_samples: 96}
  val:
    - {name: synthetic, dataset: builtin_cls, split: val, domain: synthetic, num_samples: 16}
  batch_size: 16
  num_workers: 2
  augment: {image_size: 32, eval_resize: 32}
optim: {name: sgd, lr: 0.05, schedule: step, milestones: [2], warmup_epochs: 0}
trainer: {max_epochs: 3, enable_progress_bar: false, log_every_n_steps: 1, num_threads: 1,
          log_sample_indices: true}
"""
STEPS_PER_EPOCH = 96 // 16


def assert_same_run(a: RunFolder, b: RunFolder) -> None:
    assert_same_training(a, b, epochs=3, steps_per_epoch=STEPS_PER_EPOCH, num_samples=96)
    # the log as well: every step's and every epoch's values (train/loss_epoch and train/top1_acc of an epoch
    # resumed in its middle cover all its batches), no row twice, none missing
    rows_a, rows_b = logged_rows(a), logged_rows(b)
    assert len([r for r in rows_a if "train/loss_epoch" in r]) == 3
    assert rows_a == rows_b, [(x, y) for x, y in zip(rows_a, rows_b) if x != y][:3]


def _start(folder: RunFolder) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ibnnet", "run", str(folder.path)], env=ENV, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_batches(folder: RunFolder, proc: subprocess.Popen, n: int) -> None:
    path = folder.path / "logs" / "samples-rank0.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if path.is_file() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"run did not reach batch {n}: {proc.poll()}\n{folder.log_tail(30)}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, RunFolder]:
    """The uninterrupted run (2 loader workers)."""
    tmp = tmp_path_factory.mktemp("reference")
    path = config(tmp, EXACT)
    cli("train", path)
    return path, RunFolder(run_dir(compose(path)))


def _twin(tmp_path: Path, reference_config: Path, *overrides: str) -> RunFolder:
    """The reference's config under another runs root: the same run id, its own folder."""
    from ibnnet.runs.runner import prepare
    cfg = compose(reference_config, [f"paths.runs={tmp_path / 'runs'}", *overrides])
    return prepare(cfg)


def test_the_same_command_gives_the_same_numbers(reference, tmp_path):
    path, ref = reference
    m = ref.metrics()
    assert m["reproducibility"]["seed"] == 0 and m["reproducibility"]["deterministic"] is True
    assert m["reproducibility"]["num_threads"] == 1 and m["versions"]["torch"] == torch.__version__
    # a second run of the same config, loaded without workers, in-process
    again = _twin(tmp_path, path, "data.num_workers=0")
    assert again.path.name == ref.path.name
    cli("run", again.path)
    assert_same_run(ref, again)


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_a_run_interrupted_mid_epoch_resumes_bit_identically(reference, tmp_path, how):
    path, ref = reference
    folder = _twin(tmp_path, path, "data.num_workers=0")
    proc = _start(folder)
    # SIGKILL: in the second epoch, after the first one's last.ckpt; SIGTERM: in the first epoch, which is
    # checkpointed at the next batch
    _wait_for_batches(folder, proc, STEPS_PER_EPOCH + 3 if how == "sigkill" else 3)
    proc.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert not folder.is_done(), out
    if how == "sigkill":   # killed after the first epoch's checkpoint; status sees that its process is gone
        from ibnnet.runs.status import live_status
        killed_at = torch.load(folder.checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=True)
        assert killed_at["epoch"] == 0 and killed_at["global_step"] == STEPS_PER_EPOCH
        status, info = live_status(folder)
        # interrupted, not failed: a sweep resumes it (it skips failed runs), so status must not call it failed
        assert status == "interrupted" and "process is gone" in info["note"]
    if how == "sigterm":
        assert proc.returncode == 0, out
        assert (folder.checkpoint_dir / "preempt.ckpt").is_file(), out
        state = folder.state()
        assert state["status"] == "interrupted" and "again to resume" in state["error"]
        ckpt = torch.load(folder.checkpoint_dir / "preempt.ckpt", map_location="cpu", weights_only=True)
        assert 0 < ckpt["global_step"] < STEPS_PER_EPOCH   # saved between two batches of the first epoch
    # what writers killed mid-write leave (AtomicCheckpointIO, ibnnet.files): the next attempt removes them
    partial = [folder.checkpoint_dir / ".last.ckpt.k3_9zq1a.tmp", folder.path / "logs" / ".metrics.csv.4242.tmp"]
    for p in partial:
        p.write_bytes(b"cut short")
    cli("run", folder.path)
    assert not [p for p in partial if p.exists()]
    attempts = folder.state()["attempts"]
    assert len(attempts) == 2
    assert attempts[1]["resume_from"] == ("last.ckpt" if how == "sigkill" else "preempt.ckpt")
    assert_same_run(ref, folder)
    assert not (folder.checkpoint_dir / "preempt.ckpt").exists()


def test_resume_and_evaluate_need_nothing_but_the_run_folder(tmp_path):
    """Starting weights are read on a fresh start only: the source file may be gone for a resume or evaluate."""
    import os
    import threading

    import timm
    from helpers import TINY
    source = tmp_path / "start.pth"
    from ibnnet.data.datasets.synthetic import SHAPE_CLASSES
    start = timm.create_model("resnet18_bn", num_classes=len(SHAPE_CLASSES)).state_dict()
    torch.save(start, source)
    path = config(tmp_path, TINY.replace("model: {name: resnet18_bn}", f"model: {{name: resnet18_bn, "
                                         f"pretrained_file: {source}}}").replace("lr: 0.01", "lr: 1.0e-9")
                  .replace("log_every_n_steps: 1,", "log_every_n_steps: 1, log_sample_indices: true,"))
    folder = RunFolder(run_dir(compose(path)))
    samples = folder.path / "logs" / "samples-rank0.jsonl"

    def stop_after_first_batch():   # what a cluster's SIGTERM does, to this very process
        while not (samples.is_file() and samples.read_text().strip()):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_after_first_batch, daemon=True).start()
    cli("train", path)
    assert folder.state()["status"] == "interrupted" and (folder.checkpoint_dir / "preempt.ckpt").is_file()
    source.unlink()   # the starting weights are gone (a deleted `run:` folder, an emptied download cache)
    cli("run", folder.path)
    assert folder.is_done() and folder.state()["attempts"][-1]["resume_from"] == "preempt.ckpt"
    trained = torch.load(folder.checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    # the fresh start did load the file: with lr 1e-9 the conv weights are still the file's
    assert torch.allclose(trained["model.conv1.weight"], start["conv1.weight"], atol=1e-6)
    out = tmp_path / "eval"
    cli("evaluate", path, "--checkpoint", folder.checkpoint_dir / "last.ckpt", "--out", out)
    assert json.loads((out / "evaluation.json").read_text())["results"]["synthetic"]["top1_err"] >= 0
