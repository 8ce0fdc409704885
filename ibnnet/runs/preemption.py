"""Preemption-safe training under SLURM: checkpoint on the warning signal, requeue, resume.

ibnnet owns requeueing alone (Lightning's ``SLURMEnvironment(auto_requeue=False)``):

- ``#SBATCH --signal=USR1@N`` sends SIGUSR1 to every training process N seconds before the time limit.
- Preemption and ``scontrol requeue`` send SIGTERM, and SIGKILL ``KillWait`` seconds later.

Either signal only sets a flag. A single process acts on it at the start of the next training batch. Under
DDP the processes agree on it (one all-reduce, a host-device sync) only at the start of every
:data:`CHECK_EVERY_N_BATCHES`-th batch, the same batches on every rank; then all save
``checkpoints/preempt.ckpt`` and stop. Saving there, between two batches, means the
checkpoint counts every finished batch as finished and none as started, so the resumed run trains
exactly the remaining optimizer steps: no batch twice, none skipped. After SIGUSR1 rank 0 requeues
the job itself (at most ``launcher.slurm.max_requeues`` times, counted by ``SLURM_RESTART_COUNT``);
after SIGTERM the scheduler already does. A run that fails with an error exits non-zero and is
never requeued.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

log = logging.getLogger("ibnnet")

PREEMPT_CHECKPOINT = "preempt.ckpt"
TIME_LIMIT, PREEMPTED = "time limit", "preempted"
# Under DDP the flag is all-reduced at the start of every N-th training batch, not every batch: the .item()
# of an all-reduced flag waits for the GPU and stalls the CPU from queueing the next steps. A delay of up to N
# steps (10-30 s at 1-3 s a step) is well inside the warning: SIGUSR1 comes launcher.slurm.signal_seconds
# (default 120 s) before the time limit; SIGTERM on preemption comes KillWait before SIGKILL (Slurm's default
# is 30 s, which a multi-second step with a large checkpoint may not fit either way).
CHECK_EVERY_N_BATCHES = 10


class Preempted(Exception):
    """Training stopped after saving a checkpoint because the scheduler is about to end the job."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def under_slurm_step() -> bool:
    """True inside a SLURM job step (srun): the scheduler, not a person, sends our signals."""
    return "SLURM_JOB_ID" in os.environ and "SLURM_STEP_ID" in os.environ


class SignalFlag:
    """Records the first scheduler signal; installed before anything slow so USR1 never kills us."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, object] = {}

    def install(self, slurm: bool = True) -> "SignalFlag":
        """SIGTERM always; SIGUSR1 (SLURM's time-limit warning) only inside a SLURM step."""
        if threading.current_thread() is not threading.main_thread():
            return self   # Python delivers signals to the main thread only; its caller handles them
        signals = ((signal.SIGUSR1, TIME_LIMIT), (signal.SIGTERM, PREEMPTED)) if slurm else ((signal.SIGTERM, PREEMPTED),)
        for signum, reason in signals:
            self._previous[signum] = signal.signal(signum, self._handler(reason))
        return self

    def _handler(self, reason: str):
        def handle(signum, frame):
            if self.reason is None:
                self.reason = reason
                log.warning("received %s (%s): will checkpoint and stop at the next batch (under DDP within "
                            "%d batches)", signal.Signals(signum).name, reason, CHECK_EVERY_N_BATCHES)
        return handle

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class PreemptionCheckpoint(Callback):
    def __init__(self, flag: SignalFlag, checkpoint_dir, every_n_batches: int = CHECK_EVERY_N_BATCHES):
        self.flag = flag
        self.path = os.path.join(str(checkpoint_dir), PREEMPT_CHECKPOINT)
        self.every_n_batches = every_n_batches
        # Training batches this process started since fit began: the same count on every rank (each runs
        # every batch), so all ranks reach the all-reduce at the same batch, also after a resume.
        self._batches = 0

    def _agreed_reason(self, trainer: pl.Trainer) -> str | None:
        """The reason to stop now, the same on every rank; None to go on."""
        if trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return self.flag.reason   # one process: a Python attribute, no tensor, no sync
        self._batches += 1
        if (self._batches - 1) % self.every_n_batches:
            return None
        code = {None: 0, PREEMPTED: 1, TIME_LIMIT: 2}[self.flag.reason]
        t = torch.tensor([code], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return {0: None, 1: PREEMPTED, 2: TIME_LIMIT}[int(t.item())]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batches = 0
        # Lightning installs its own SIGTERM handler (exit without a checkpoint) when fit starts; ours must win.
        signal.signal(signal.SIGTERM, self.flag._handler(PREEMPTED))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        reason = self._agreed_reason(trainer)
        if reason is None:
            return
        trainer.save_checkpoint(self.path)
        log.warning("saved %s at step %d; stopping (%s)", self.path, trainer.global_step, reason)
        raise Preempted(reason)


def requeue_self(max_requeues: int) -> tuple[bool, str]:
    """Ask SLURM to requeue this job (array task). Returns (requeued, explanation)."""
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    if restarts >= max_requeues:
        return False, (f"reached the time limit after {restarts} requeues (launcher.slurm.max_requeues="
                       f"{max_requeues}); give the job more time or raise the limit")
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False, "not a SLURM job: nothing to requeue"
    proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if proc.returncode != 0:
        return False, f"scontrol requeue {job} failed: {proc.stderr.strip() or proc.stdout.strip()}"
    return True, f"requeued job {job} (restart {restarts + 1} of at most {max_requeues})"
