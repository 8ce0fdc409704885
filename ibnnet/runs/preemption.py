"""Stopping a run safely on a signal: SLURM's time-limit warning, preemption, ``kill``, Ctrl-C.

ibnnet owns requeueing alone (Lightning's ``SLURMEnvironment(auto_requeue=False)``):

- ``#SBATCH --signal=USR1@N`` sends SIGUSR1 to every training process N seconds before the time limit.
- Preemption and ``scontrol requeue`` send SIGTERM, and SIGKILL ``KillWait`` seconds later.
- Ctrl-C (SIGINT) and, outside SLURM, SIGTERM stop the run for a plain rerun to resume (status ``interrupted``).

A signal only sets a flag; the run acts on it at the next safe point (:class:`PreemptionCheckpoint`):

- the start of a training batch that starts a gradient-accumulation window: ``checkpoints/preempt.ckpt``
  counts every finished batch as finished and none as started, and holds no partial gradient, so the
  resumed run trains exactly the remaining optimizer steps: no batch twice, none skipped;
- the start of a validation batch, the validation's start and each batch of the batch-average
  re-estimation (:class:`~ibnnet.runs.callbacks.BatchAverageStats`). During training, preempt.ckpt is then
  saved as one that Lightning resumes "mid-evaluation": the resumed run redoes that validation from its
  first batch (a half-done validation cannot be continued: its metric states are in no checkpoint) and goes
  on. In the evaluation after training, nothing has been trained since the last epoch's ``last.ckpt``: the
  run stops without a checkpoint and the resumed run redoes the evaluation from there.

Under DDP the processes agree on the flag (one all-reduce, a host-device sync) only at every
:data:`CHECK_EVERY_N_BATCHES`-th of these points, the same points on every rank (validation batches only
up to the count every rank has), then all stop alike. After SIGUSR1 rank 0 requeues the job itself (at
most ``launcher.slurm.max_requeues`` times, counted by ``SLURM_RESTART_COUNT``); after SIGTERM under SLURM
the scheduler already does. A second Ctrl-C stops at once, without a checkpoint: the run stays resumable
from its last one. A run that fails with an error exits non-zero and is never requeued.
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
from pytorch_lightning.trainer.states import TrainerFn

log = logging.getLogger("ibnnet")

PREEMPT_CHECKPOINT = "preempt.ckpt"
TIME_LIMIT, PREEMPTED, INTERRUPT = "time limit", "preempted", "interrupted"
# What DDP ranks agree on is the highest code any of them has: a scheduler's signal wins over Ctrl-C (after a
# time limit rank 0 must requeue the job), and SLURM's time limit over its preemption.
_CODES = {None: 0, INTERRUPT: 1, PREEMPTED: 2, TIME_LIMIT: 3}
_REASONS = {code: reason for reason, code in _CODES.items()}
# Under DDP the flag is all-reduced at every N-th safe point, not every one: the .item() of an all-reduced flag
# waits for the GPU and stalls the CPU from queueing the next steps. A delay of up to N steps (10-30 s at 1-3 s a
# step) is well inside the warning: SIGUSR1 comes launcher.slurm.signal_seconds (default 120 s) before the time
# limit; SIGTERM on preemption comes KillWait before SIGKILL (Slurm's default is 30 s, which a multi-second step
# with a large checkpoint may not fit either way).
CHECK_EVERY_N_BATCHES = 10


class Preempted(Exception):
    """Training or evaluation stopped at a safe point because of a signal; ``detail``: what the resume starts from."""

    def __init__(self, reason: str, detail: str = "checkpointed"):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Aborted(Preempted):
    """A second Ctrl-C: stopped at once, where the run was, without a new checkpoint."""


def under_slurm_step() -> bool:
    """True inside a SLURM job step (srun): the scheduler, not a person, sends our signals."""
    return "SLURM_JOB_ID" in os.environ and "SLURM_STEP_ID" in os.environ


class SignalFlag:
    """Records the first stop signal; installed before anything slow so USR1 never kills us."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.abortable = False   # set while training or evaluating: a second Ctrl-C raises Aborted there
        self._previous: dict[int, object] = {}
        self._handlers: dict[int, object] = {}
        self._pid = os.getpid()

    def install(self, slurm: bool = True) -> "SignalFlag":
        """SIGINT and SIGTERM always; SIGUSR1 (SLURM's time-limit warning) only inside a SLURM step."""
        if threading.current_thread() is not threading.main_thread():
            return self   # Python delivers signals to the main thread only; its caller handles them
        self._pid = os.getpid()
        signals = [(signal.SIGINT, INTERRUPT), (signal.SIGTERM, PREEMPTED)]
        if slurm:
            signals.append((signal.SIGUSR1, TIME_LIMIT))
        for signum, reason in signals:
            self._handlers[signum] = self._handler(reason)
            self._previous[signum] = signal.signal(signum, self._handlers[signum])
        return self

    def reinstall(self) -> None:
        """Ours again: Lightning puts its own SIGTERM handler (stop without a checkpoint) at every fit and validate."""
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)

    def _handler(self, reason: str):
        def handle(signum, frame):
            if os.getpid() != self._pid:
                return   # a forked DataLoader worker (it inherits this handler): the run's process decides
            name = signal.Signals(signum).name
            if self.reason is None:
                self.reason = reason
                log.warning("received %s (%s): will checkpoint and stop at the next safe point (a training batch, "
                            "a validation batch; under DDP within %d of them)%s", name, reason, CHECK_EVERY_N_BATCHES,
                            "; Ctrl-C again stops at once" if signum == signal.SIGINT else "")
            elif signum == signal.SIGINT and self.abortable:
                self.abortable = False
                raise Aborted(INTERRUPT, "stopped at once by a second Ctrl-C, without a new checkpoint")
            else:
                log.warning("received %s again: already stopping (%s)", name, self.reason)
        return handle

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous, self._handlers = {}, {}


def _redo_validation_on_resume(trainer: pl.Trainer) -> None:
    """Make the checkpoint about to be saved one that Lightning resumes by running this validation again.

    Lightning resumes a checkpoint saved inside a validation step (its validation progress: a batch started,
    not processed) by redoing the validation, then going on with training ("restarted mid-evaluation",
    ``_TrainingEpochLoop.advance``). The progress is set to that state at this validation's first batch, so
    the resumed run evaluates it from the start, with fresh metric states.
    """
    progress = trainer.fit_loop.epoch_loop.val_loop.batch_progress
    before = progress.total.completed - progress.current.completed   # batches of earlier validations this epoch
    progress.current.reset()
    progress.current.ready = progress.current.started = 1
    progress.total.ready = progress.total.started = before + 1
    progress.total.processed = progress.total.completed = before


class PreemptionCheckpoint(Callback):
    def __init__(self, flag: SignalFlag, checkpoint_dir, every_n_batches: int = CHECK_EVERY_N_BATCHES):
        self.flag = flag
        self.path = os.path.join(str(checkpoint_dir), PREEMPT_CHECKPOINT)
        self.every_n_batches = every_n_batches
        # Safe points this process passed since fit began: the same sequence on every rank (each runs every
        # accumulation window, every statistics batch and validation batches up to _val_batches), so all ranks
        # reach the all-reduce at the same point, also after a resume.
        self._checks = 0
        self._val_batches: list[int] | None = None   # per validation set: batches every rank runs (DDP)

    @staticmethod
    def _distributed(trainer: pl.Trainer) -> bool:
        return trainer.world_size > 1 and torch.distributed.is_initialized()

    def _agreed_reason(self, trainer: pl.Trainer) -> str | None:
        """The reason to stop now, the same on every rank; None to go on."""
        if not self._distributed(trainer):
            return self.flag.reason   # one process: a Python attribute, no tensor, no sync
        self._checks += 1
        if (self._checks - 1) % self.every_n_batches:
            return None
        t = torch.tensor([_CODES[self.flag.reason]], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return _REASONS[int(t.item())]

    def check(self, trainer: pl.Trainer) -> None:
        """A safe point: save what the resume needs and raise :class:`Preempted` if the run must stop."""
        reason = self._agreed_reason(trainer)
        if reason is None:
            return
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            if trainer.validating:
                _redo_validation_on_resume(trainer)
            trainer.save_checkpoint(self.path)
            where = " in a validation, which the resumed run redoes" if trainer.validating else ""
            log.warning("saved %s at step %d%s; stopping (%s)", self.path, trainer.global_step, where, reason)
            raise Preempted(reason)
        # Evaluation after training, or the sanity check before it: nothing was trained since the checkpoint
        # this process started from (last.ckpt of the last epoch after training), which stays the resume point.
        log.warning("stopping (%s) in the evaluation; the resumed run starts from the last checkpoint and "
                    "evaluates again", reason)
        raise Preempted(reason, "stopped in the evaluation; the resumed run evaluates again")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._checks = 0
        self.flag.reinstall()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        # Only where an accumulation window starts (Lightning steps after batch i when (i + 1) % k == 0 and at the
        # epoch's end): inside one, the gradient of its earlier batches would be in no checkpoint.
        if batch_idx % trainer.accumulate_grad_batches == 0:
            self.check(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flag.reinstall()

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_batches = None
        if self._distributed(trainer):
            # Validation sets are split over ranks unpadded, so ranks may run different batch counts: the safe
            # points are the batches every rank runs (one all-reduce per validation).
            counts = [int(min(n, 2 ** 62)) for n in trainer._evaluation_loop.max_batches]
            t = torch.tensor(counts, device=trainer.strategy.root_device, dtype=torch.long)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
            self._val_batches = [int(n) for n in t.tolist()]
        self.check(trainer)

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if self._val_batches is None or batch_idx < self._val_batches[dataloader_idx]:
            self.check(trainer)


def safe_point(trainer: pl.Trainer) -> None:
    """A safe point outside Lightning's hooks (each batch of the batch-average re-estimation): stop here if the
    run must (:meth:`PreemptionCheckpoint.check`); nothing without a :class:`PreemptionCheckpoint`."""
    for callback in getattr(trainer, "callbacks", ()):   # a bare estimate (tests, analyses) has no Trainer's callbacks
        if isinstance(callback, PreemptionCheckpoint):
            callback.check(trainer)


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
