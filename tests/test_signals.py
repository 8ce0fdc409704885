"""Stop signals at every safe point, in-process: a signal during a gradient-accumulation window, an in-fit
validation, the batch-average re-estimation or the final evaluation stops the run at the next safe point, and
the resumed run ends bit-identical to an uninterrupted one (every tensor of last.ckpt, metrics.json's numbers).
The signal is sent by a callback to this very process, so it lands at the same point on every machine."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import ENV, REPO, TINY, _tensors, cli, config, logged_rows
from pytorch_lightning.callbacks import Callback

from ibnnet.config import compose
from ibnnet.runs.folder import RunFolder, run_dir

# 4 training batches an epoch in 2 accumulation windows; 2 validation batches; batch-average statistics (BN
# re-estimated from 2 training batches) before every validation, so a stop inside one must save the moving averages.
SIGNALS = (TINY.replace("num_samples: 32}", "num_samples: 64}").replace("num_samples: 8}", "num_samples: 16}")
           .replace("  batch_size: 16\n", "  batch_size: 16\n  eval_batch_size: 8\n")
           .replace("num_threads: 1}", "num_threads: 1, log_sample_indices: true,\n"
                    "          accumulate_grad_batches: 2, batch_average_batches: 2, batch_average_every_eval: true}"))
RESULT_KEYS = ("metrics", "best", "metrics_moving_average", "batch_average", "inference", "epochs", "global_step")


class SignalAt(Callback):
    """Sends ``signum`` to this process once, at ``(hook, trainer.state.fn, epoch, batch_idx)``; Python runs the
    handler before the next line, so the flag is up right there. Records the batches that ended after it."""

    def __init__(self, hook: str, fn: str, epoch: int, batch: int, signum=signal.SIGTERM, times: int = 1):
        self.at, self.signum, self.times = (hook, fn, epoch, batch), signum, times
        self.sent = False
        self.after: list[tuple] = []

    def _event(self, trainer, hook: str, batch_idx: int) -> None:
        if trainer.sanity_checking:
            return
        here = (hook, trainer.state.fn, trainer.current_epoch, batch_idx)
        if self.sent:
            self.after.append(here)
        elif here == self.at:
            self.sent = True
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._event(trainer, "train", batch_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._event(trainer, "val", batch_idx)


def _with_callback(monkeypatch, callback: Callback) -> None:
    """Every Trainer the runner makes in this test gets ``callback`` too."""
    from ibnnet.runs import callbacks
    build = callbacks.build_callbacks
    monkeypatch.setattr(callbacks, "build_callbacks", lambda *a, **k: build(*a, **k) + [callback])


def _signal_in_statistics_batch(monkeypatch, fn: str, batch: int, signum=signal.SIGTERM) -> list:
    """Sends ``signum`` while the batch-average statistics are estimated (trainer.state.fn ``fn``), after
    ``batch`` statistics batches; returns the statistics batches drawn after it."""
    from ibnnet.runs import callbacks
    make, after, sent = callbacks.statistics_loader, [], []

    def loader(datamodule, *args, **kwargs):
        ours = datamodule.trainer.state.fn == fn and not sent
        for i, b in enumerate(make(datamodule, *args, **kwargs)):
            if ours and sent:
                after.append(i)
            elif ours and i == batch + 1:
                sent.append(i)
                os.kill(os.getpid(), signum)
            yield b
    monkeypatch.setattr(callbacks, "statistics_loader", loader)
    return after


def _train(path) -> int:
    """``ibnnet train`` in this process; its exit code."""
    import contextlib
    import io

    from ibnnet.cli import main
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(["train", str(path)])


def _ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_result(a: RunFolder, b: RunFolder) -> None:
    """Every tensor of last.ckpt (weights, buffers, optimizer state) and metrics.json's numbers are identical."""
    ca, cb = _ckpt(a.checkpoint_dir / "last.ckpt"), _ckpt(b.checkpoint_dir / "last.ckpt")
    assert ca["global_step"] == cb["global_step"] == 4
    ta = dict(_tensors({"state_dict": ca["state_dict"], "optimizer_states": ca["optimizer_states"]}))
    tb = dict(_tensors({"state_dict": cb["state_dict"], "optimizer_states": cb["optimizer_states"]}))
    assert ta.keys() == tb.keys() and len(ta) > 100
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} of {len(ta)} tensors differ, e.g. {different[:5]}"
    ma, mb = a.metrics(), b.metrics()
    assert {k: ma.get(k) for k in RESULT_KEYS} == {k: mb.get(k) for k in RESULT_KEYS}
    assert ma["inference"] == "batch_average" and ma["metrics"] != ma["metrics_moving_average"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple:
    """The uninterrupted run."""
    tmp = tmp_path_factory.mktemp("reference")
    path = config(tmp, SIGNALS)
    assert _train(path) == 0
    return path, RunFolder(run_dir(compose(path)))


def _twin(tmp_path):
    """The reference's config under another runs root: the same run id, its own folder."""
    path = config(tmp_path, SIGNALS)
    return path, RunFolder(run_dir(compose(path)))


def _attempt(monkeypatch, path, folder: RunFolder, code: int, *, signal_at: SignalAt | None = None,
             statistics: tuple | None = None) -> list:
    """One ``ibnnet train`` of the run, signalled by ``signal_at`` or in a statistics batch (``statistics``: the
    arguments of :func:`_signal_in_statistics_batch`); its exit code must be ``code``, the run interrupted.
    Returns what ran after the signal (nothing of it may: every stop is at the next safe point)."""
    monkeypatch.undo()
    if signal_at is not None:
        _with_callback(monkeypatch, signal_at)
        after = signal_at.after
    else:
        after = _signal_in_statistics_batch(monkeypatch, *statistics)
    assert _train(path) == code, folder.log_tail(30)
    monkeypatch.undo()
    assert folder.state()["status"] == "interrupted" and folder.metrics() is None, folder.state()
    return after


def test_a_run_stopped_at_every_kind_of_safe_point_resumes_bit_identically(reference, tmp_path, monkeypatch):
    """One run stopped five times, each time resumed by a plain rerun, ends bit-identical to the uninterrupted
    one (every tensor of last.ckpt, metrics.json's numbers): Ctrl-C twice (at once, no checkpoint), SIGTERM in
    an accumulation window, in the batch-average estimate before a validation, Ctrl-C in a validation, SIGTERM in
    the evaluation after training."""
    path, folder = _twin(tmp_path)
    ckpts = folder.checkpoint_dir

    # 1. a second Ctrl-C does not wait for a safe point: no checkpoint, yet interrupted (not failed), exit 130
    twice = SignalAt("train", "fit", 0, 0, signum=signal.SIGINT, times=2)
    assert _attempt(monkeypatch, path, folder, 130, signal_at=twice) == []
    assert "second Ctrl-C" in folder.state()["error"] and not any(ckpts.glob("*.ckpt"))

    # 2. signalled after batch 0 of a 2-batch accumulation window: saved before batch 2, not before batch 1
    # (whose checkpoint would not hold batch 0's gradient)
    in_window = SignalAt("train", "fit", 0, 0)
    assert _attempt(monkeypatch, path, folder, 0, signal_at=in_window) == [("train", "fit", 0, 1)]
    assert _ckpt(ckpts / "preempt.ckpt")["global_step"] == 1   # one optimizer step: batches 0 and 1

    # 3. signalled while epoch 0's batch-average statistics are estimated: stopped at the next statistics batch,
    # before the validation and before epoch 0's last.ckpt; the checkpoint holds the moving averages
    assert _attempt(monkeypatch, path, folder, 0, statistics=("fit", 0)) == []
    ckpt = _ckpt(ckpts / "preempt.ckpt")
    assert (ckpt["epoch"], ckpt["global_step"]) == (0, 2) and not (ckpts / "last.ckpt").exists()

    # 4. Ctrl-C after epoch 1's first validation batch: stopped before the second, checkpointed, exit 130; the
    # resumed run redoes the whole validation
    in_validation = SignalAt("val", "fit", 1, 0, signum=signal.SIGINT)
    assert _attempt(monkeypatch, path, folder, 130, signal_at=in_validation) == []
    ckpt = _ckpt(ckpts / "preempt.ckpt")
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 4) and _ckpt(ckpts / "last.ckpt")["epoch"] == 0

    # 5. signalled in the evaluation after training: stopped without a new checkpoint (last.ckpt, of the last
    # epoch, is this model), to be evaluated again
    final = SignalAt("val", "validate", 2, 0)
    assert _attempt(monkeypatch, path, folder, 0, signal_at=final) == []
    assert final.sent and "evaluates again" in folder.state()["error"]

    assert _train(path) == 0, folder.log_tail(30)
    attempts = folder.state()["attempts"]
    assert [a["status"] for a in attempts] == ["interrupted"] * 5 + ["done"], attempts
    assert [a["resume_from"] for a in attempts] == [None, None] + ["preempt.ckpt"] * 3 + ["last.ckpt"]
    assert_same_result(reference[1], folder)
    # and the log: every epoch's training values, also of the epochs resumed into their validation
    rows, expected = logged_rows(folder), logged_rows(reference[1])
    assert len([r for r in expected if "train/loss_epoch" in r]) == 2
    assert rows == expected, [(x, y) for x, y in zip(rows, expected) if x != y][:3]


def test_ctrl_c_checkpoints_exits_130_and_a_plain_rerun_resumes(reference, tmp_path):
    """``ibnnet run DIR`` and SIGINT (Ctrl-C) in training: a checkpoint, state interrupted (not failed), exit 130;
    ``ibnnet run DIR`` again finishes it bit-identical to the uninterrupted run."""
    from ibnnet.runs.runner import prepare
    folder = prepare(compose(config(tmp_path, SIGNALS)))
    proc = subprocess.Popen([sys.executable, "-m", "ibnnet", "run", str(folder.path)], env=ENV, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples = folder.path / "logs" / "samples-rank0.jsonl"
    deadline = time.time() + 300
    while not (samples.is_file() and samples.read_text().strip()):   # in training: a batch done
        assert proc.poll() is None and time.time() < deadline, folder.log_tail(30)
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, out
    state = folder.state()
    assert state["status"] == "interrupted" and "again to resume" in state["error"], state
    assert (folder.checkpoint_dir / "preempt.ckpt").is_file(), out
    cli("run", folder.path)
    assert folder.state()["attempts"][1]["resume_from"] == "preempt.ckpt"
    assert_same_result(reference[1], folder)
