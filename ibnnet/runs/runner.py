"""Executing one prepared run folder: train (or resume), evaluate, write ``metrics.json``.

Every launcher ends here: ``ibnnet train`` in-process, the local sweep launcher in a subprocess per
run, and each SLURM array task through ``srun ibnnet run RUN_DIR``.  Under DDP every process runs this
code; only rank 0 writes state and results.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from ..config import compose, to_plain
from ..errors import MissingPathError, UserError
from ..files import atomic_write_json
from .claims import Claim, ClaimLost, adopt, fence, try_claim
from .env import cpu_isa_record, git_state, host, is_rank_zero, package_versions, slurm_job
from .folder import (
    DONE,
    FAILED,
    INTERRUPTED,
    REQUEUED,
    CheckpointError,
    RunFolder,
    config_hash,
)
from .preemption import (
    INTERRUPT,
    PREEMPTED,
    TIME_LIMIT,
    Preempted,
    PreemptionCheckpoint,
    SignalFlag,
    requeue_self,
    under_slurm_step,
)

log = logging.getLogger("ibnnet")


class RunClaimed(Exception):
    """Another live process (worker, SLURM task) holds the run folder's claim."""


# The exit code of a run stopped by Ctrl-C (SIGINT), as a shell reports a process SIGINT ended (128 + 2). A run stopped
# by a scheduler's signal (or SIGTERM outside SLURM) exits 0: it stopped as planned, to be resumed.
EXIT_INTERRUPTED = 130


class RequeueRequested(Exception):
    """Training stopped to be requeued or rerun (a signal: SLURM time limit, preemption, SIGTERM, Ctrl-C); the run
    is not finished."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def prepare(cfg, root_override: str | None = None) -> RunFolder:
    """Create (or refresh) the folder of ``cfg`` and write its resolved config."""
    from .folder import run_dir
    folder = RunFolder(run_dir(cfg) if root_override is None else Path(root_override))
    if is_rank_zero():
        folder.write_config(cfg)
    return folder


def _file_logging(folder: RunFolder) -> logging.Handler:
    handler = logging.FileHandler(folder.log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("ibnnet", "pytorch_lightning", "lightning.pytorch"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("ibnnet").setLevel(logging.INFO)
    return handler


def execute(path: str | Path) -> dict[str, Any] | None:
    """Run the folder at ``path``; returns its metrics (None on non-zero ranks). Finished runs are skipped.

    Raises :class:`RunClaimed` when another live process holds the run (see :mod:`.claims`).
    """
    folder = RunFolder(Path(path))
    # First thing: under SLURM the default action of SIGUSR1 is to terminate the process. Outside SLURM,
    # SIGTERM (a cluster without SLURM, `kill`) also checkpoints at the next batch, so nothing is lost.
    flag = SignalFlag().install(slurm=under_slurm_step())
    try:
        if not folder.config_path.is_file():
            raise MissingPathError(f"{folder.path}: not a run folder (no config.yaml)")
        cfg = compose(folder.config_path)
        rank0 = is_rank_zero()
        if folder.is_done():
            if rank0:
                print(f"[ibnnet] {folder.path}: already done, skipping")
            return folder.metrics()
        if not rank0:   # started by (or beside) rank 0, which holds the claim and writes state
            train_and_evaluate(cfg, folder, flag)
            return None
        lc = cfg.launcher
        # The claim a sweep worker took for this process, else our own: a claim that is not provably dead is
        # watched until its holder beats (alive: refused) or for launcher.claim_timeout_s (stale: taken over).
        claim = adopt(folder.path, lc.heartbeat_s, lc.claim_timeout_s) \
            or try_claim(folder.path, lc.heartbeat_s, lc.claim_timeout_s, wait=True)
        if not isinstance(claim, Claim):
            raise RunClaimed(f"{folder.path}: being trained by {claim.describe()}")
        claim.start_heartbeat()
        try:
            if folder.is_done():   # finished by another worker between our check and our claim
                print(f"[ibnnet] {folder.path}: already done, skipping")
                return folder.metrics()
            return _execute_claimed(cfg, folder, flag)
        except ClaimLost as e:   # taken over: the new holder owns the folder; not a word more in it
            log.error("%s; stopped without writing anything more", e)
            raise RunClaimed(str(e)) from e
        finally:
            claim.release()
    finally:
        flag.restore()


def _execute_claimed(cfg, folder: RunFolder, flag: SignalFlag) -> dict[str, Any]:
    handler = _file_logging(folder)
    try:
        folder.start_attempt({"host": host(), "pid": os.getpid(), **slurm_job()})
        folder.remove_partial_files()   # we hold the claim: whoever wrote these was killed mid-write
        try:
            resume = folder.resume_checkpoint()
            attempts = folder.state()["attempts"]
            attempts[-1]["resume_from"] = resume.name if resume else None
            folder.update_state(attempts=attempts)
            log.info("run %s (%s)", folder.path, "resuming from " + resume.name if resume else "fresh start")
            from .console import library_output_to
            with library_output_to(handler):   # the libraries' notes and warnings: train.log, not the console
                result = train_and_evaluate(cfg, folder, flag, resume)
        except RequeueRequested as e:
            _handle_requeue(cfg, folder, e)
            raise
        except ClaimLost:
            raise    # nothing recorded: the run belongs to another process now
        except BaseException as e:
            lines = traceback.format_exception(type(e), e, e.__traceback__)
            folder.end_attempt(FAILED, error=f"{type(e).__name__}: {e}\n{''.join(lines[-6:])}")
            # To train.log only: the command line reports it on the console (a user error in one line,
            # anything else with this traceback). train.log gets the traceback of anything but a user error.
            text = f"run failed: {type(e).__name__}: {e}"
            if not isinstance(e, UserError):
                text += "\n" + "".join(lines).rstrip()
            handler.handle(logging.makeLogRecord({"name": "ibnnet", "levelno": logging.ERROR, "levelname": "ERROR",
                                                  "msg": "%s", "args": (text,)}))
            try:
                e.run_log = str(folder.log_path)   # the command line shows where to look
            except AttributeError:
                pass
            raise
        return _finish(cfg, folder, result)
    finally:
        for name in ("ibnnet", "pytorch_lightning", "lightning.pytorch"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()


def _finish(cfg, folder: RunFolder, result: dict[str, Any]) -> dict[str, Any]:
    """The result first (metrics.json marks the run done), then the state, then the files only a resume needed:
    a kill or a full disk between two steps leaves a run that is done with its result, or not done and resumable."""
    metrics = {
        "run_id": folder.path.name,
        "experiment": cfg.experiment,
        "task": cfg.task,
        "grid": to_plain(cfg.grid) if cfg.grid is not None else {},
        "metrics": result["metrics"],
        # final = "metrics" (after the last epoch); best = the best validation epoch (ibnnet/tasks/base.py)
        **({"best": result["best"]} if result.get("best") else {}),
        "epochs": result["epoch"],
        "global_step": result["global_step"],
        "world_size": result["world_size"],
        **({"emulated_devices": cfg.trainer.devices} if cfg.trainer.physical_devices else {}),
        "num_nodes": cfg.trainer.num_nodes,
        "config_hash": config_hash(cfg),
        "git": git_state(),
        "versions": package_versions(),
        "reproducibility": reproducibility(cfg),
        "wall_time_s": round(folder.wall_time(), 1),
        "host": host(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **({"class_names": result["class_names"]} if result.get("class_names") else {}),
        # which copy of the training images was read (`ibnnet data shrink`): it changes the input statistics
        **({"train_data": result["train_data"]} if "train_data" in result else {}),
        **result.get("inference", {}),   # inference mode of "metrics"; moving-average metrics beside batch-average
    }
    # Temporary files a writer left when it stopped mid-write: one killed before this attempt (removed when it
    # started), or one stopped since by losing its claim to this process.
    folder.remove_partial_files()
    fence(folder.metrics_path)
    atomic_write_json(folder.metrics_path, metrics)
    folder.end_attempt(DONE)
    for name in ("preempt.ckpt", "last.prev.ckpt"):   # finished: these were only needed to resume
        (folder.checkpoint_dir / name).unlink(missing_ok=True)
    from .wandb_results import publish_run_summary
    checkpoints = [folder.checkpoint_dir / n for n in ("last.ckpt", "best.ckpt")] \
        if cfg.logger.wandb.checkpoints == "reference" else []
    publish_run_summary(result.get("loggers") or [], metrics, checkpoints)   # the same numbers where users look
    print(f"[ibnnet] {folder.path}: done -> {folder.metrics_path}")
    return metrics


def _handle_requeue(cfg, folder: RunFolder, e: RequeueRequested) -> None:
    """Rank 0 after a stop signal: record the state first, then (time limit) requeue ourselves. Ctrl-C, and SIGTERM
    outside SLURM, leave the run interrupted: a plain rerun resumes it."""
    if e.reason != TIME_LIMIT:
        if e.reason == PREEMPTED and under_slurm_step():
            folder.end_attempt(REQUEUED, error=f"{e}; the scheduler requeues the job")
        else:
            folder.end_attempt(INTERRUPTED, error=f"{e}; run the sweep (or `ibnnet run {folder.path}`) again to "
                                                  f"resume exactly where it stopped")
        return
    folder.end_attempt(REQUEUED, error=f"{e}, requeueing")
    requeued, detail = requeue_self(cfg.launcher.slurm.max_requeues)
    log.warning(detail)
    if not requeued:
        folder.update_state(status=FAILED, error=detail)
        raise RuntimeError(detail)


def train_and_evaluate(cfg, folder: RunFolder, flag: SignalFlag | None = None,
                       resume: Path | None = None) -> dict[str, Any]:
    """Train (from ``resume`` if given) and evaluate; every DDP rank runs this.

    ``trainer.max_epochs=0`` (without max_steps): evaluation only, of the starting weights (``model.pretrained``
    or ``model.pretrained_file``), e.g. the official ImageNet weights on the robustness sets. Raises
    :class:`RequeueRequested` when a signal stopped it at a safe point (:mod:`.preemption`).
    """
    if flag is not None:
        flag.abortable = True   # from here on a second Ctrl-C stops at once, leaving the last checkpoint to resume
    try:
        return _train_and_evaluate(cfg, folder, flag, resume)
    except Preempted as e:
        raise RequeueRequested(e.reason, e.detail) from None
    finally:
        if flag is not None:
            flag.abortable = False


def _train_and_evaluate(cfg, folder: RunFolder, flag: SignalFlag | None, resume: Path | None) -> dict[str, Any]:
    import pytorch_lightning as pl

    from ..config.emulation import physical_config
    from ..data.datamodule import DataModule
    cfg = physical_config(cfg)  # what the processes run: fewer devices with ghost batches, if emulating
    t = cfg.trainer
    prepare_process(cfg)
    pl.seed_everything(t.seed, workers=True, verbose=False)
    if resume is None and not is_rank_zero():
        resume = folder.resume_checkpoint()   # the ranks rank 0 did not start itself find it alike
    dm = DataModule(cfg)
    task = build_task(cfg, dm.num_classes, dm.val_names)
    if resume is None:
        # Only a fresh start reads the starting weights: a resume finds every weight in its checkpoint
        # (and must work when a `run:` source folder or the download cache is gone).
        task.load_initial_weights()
        step = None
    else:
        # Checked (and loaded) the way evaluate and predict load it, so a checkpoint that does not fit this
        # config is an error naming the keys; Lightning then restores the optimizer, loops and callbacks from it.
        step = int(load_run_checkpoint(task, resume, mmap=True)["global_step"])
    if t.compile:
        task.compile_model()
    trainer = make_trainer(cfg, folder, flag=flag, resume_step=step)
    if trainer.is_global_zero:
        from .console import wandb_line
        line = wandb_line(trainer.loggers, cfg.experiment)
        if line:
            print(line, flush=True)
    with fail_fast(trainer):
        return _fit_and_evaluate(trainer, task, dm, t, resume)


# --- the one way to build a run's model, read its checkpoint back and make its Trainer ------------------------------
# Train and resume (above), evaluate, predict and analyze all use these, so that a command scores the model the run
# trained: built from the run's config and its checkpoint loaded strictly. Foreign weights (official releases,
# timm files, model.pretrained_file) are fitted by ibnnet.models.load_weights instead, which may leave a classifier
# of another class count out.

def prepare_process(cfg) -> None:
    """Before anything is built: refuse a device that cannot run ``cfg``, then set the process-wide numerics the
    run's numbers depend on (threads, TF32, cuDNN autotuning), the same for training and for evaluation."""
    from ..models.compiling import training_device_type
    device_type = training_device_type(cfg.trainer.accelerator)
    check_device_support(cfg, device_type, cuda_capability() if device_type == "cuda" else None)
    apply_numerics(cfg.trainer)


def build_task(cfg, num_classes: int, val_names: list[str]):
    """The Lightning task (model, loss, metrics) of ``cfg``, without its starting weights (see
    ``task.load_initial_weights`` and :func:`load_run_checkpoint`)."""
    from ..tasks import TASKS
    return TASKS[cfg.task](to_plain(cfg), num_classes, list(val_names))


_RUN_CHECKPOINT_KEYS = ("state_dict", "global_step", "epoch", "pytorch-lightning_version")


def is_run_checkpoint(obj: Any) -> bool:
    """Whether a loaded file is a Lightning training checkpoint (a run's last/best/preempt.ckpt), not bare weights."""
    from collections.abc import Mapping
    return isinstance(obj, Mapping) and all(k in obj for k in _RUN_CHECKPOINT_KEYS) \
        and isinstance(obj["state_dict"], Mapping)


def read_run_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """A run's checkpoint, read safely (tensors only, ``mmap``: memory-mapped); a file that is not one is a
    :class:`ibnnet.models.weights.WeightsError` (unreadable) or :class:`CheckpointError` (weights, not a run's)."""
    from ..models.weights import read_checkpoint
    ckpt = read_checkpoint(path, mmap=mmap)
    if not is_run_checkpoint(ckpt):
        keys = sorted(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a checkpoint of a run (a Lightning checkpoint has "
                              f"{', '.join(_RUN_CHECKPOINT_KEYS)}; this file has {keys})")
    return ckpt


def load_run_checkpoint(task, path: str | Path, ckpt: dict[str, Any] | None = None,
                        mmap: bool = False) -> dict[str, Any]:
    """Load a run's checkpoint into ``task`` (built by :func:`build_task`) strictly: every key of the model, no
    other, the same shapes. Otherwise :class:`CheckpointError` names the file, the model and the keys.
    Returns the checkpoint (its ``epoch``, ``global_step``, ``hyper_parameters``)."""
    from ..models.weights import describe_mismatch
    ckpt = read_run_checkpoint(path, mmap=mmap) if ckpt is None else ckpt
    problem = describe_mismatch(ckpt["state_dict"], task)
    if problem:
        saved = (ckpt.get("hyper_parameters") or {})
        trained = ((saved.get("cfg") or {}).get("model") or {}).get("name", "?")
        raise CheckpointError(
            f"{path}: does not fit the model this config builds ({task.cfg.model.name}, {task.num_classes} classes); "
            f"the checkpoint is of {trained} with {saved.get('num_classes', '?')} classes. {problem} "
            f"(shapes: checkpoint vs model)")
    task.load_state_dict(ckpt["state_dict"], strict=True)
    task.on_load_checkpoint(ckpt)   # the best-epoch record, as Lightning restores it
    return ckpt


def load_evaluation_weights(task, path: str | Path) -> dict[str, Any] | None:
    """The weights evaluate and predict score: a run's checkpoint strictly (:func:`load_run_checkpoint`; returned),
    any other weight file (an official release, a bare state_dict) through ``load_weights``, whose classifier must
    fit too: scoring a head left at its random initialisation would give chance numbers without a word."""
    from ..models import load_weights
    from ..models.weights import read_checkpoint
    ckpt = read_checkpoint(path, mmap=True)
    if is_run_checkpoint(ckpt):
        return load_run_checkpoint(task, path, ckpt=ckpt)
    load_weights(task.network, path, num_classes=task.num_classes)
    return None


def task_from_run_checkpoint(path: str | Path):
    """The model a run trained, from its checkpoint alone (the config and class count it saved), weights loaded
    strictly: for analyses given a checkpoint without its run's config."""
    from omegaconf import OmegaConf
    ckpt = read_run_checkpoint(path, mmap=True)
    saved = ckpt.get("hyper_parameters") or {}
    if not isinstance(saved.get("cfg"), dict) or "num_classes" not in saved:
        raise CheckpointError(f"{path}: a Lightning checkpoint without an ibnnet run's config (hyper_parameters.cfg)")
    task = build_task(OmegaConf.create(saved["cfg"]), saved["num_classes"], saved.get("val_names") or [])
    load_run_checkpoint(task, path, ckpt=ckpt)
    return task


def make_trainer(cfg, folder: RunFolder | None = None, *, flag: SignalFlag | None = None,
                 resume_step: int | None = None, devices: int = 1, progress: bool | None = None,
                 callbacks: list | None = None):
    """The Trainer of ``cfg``. With ``folder``: the run's training Trainer (its loggers, checkpoints, exactness
    and preemption callbacks; ``resume_step``: the step a resumed run's loggers continue from). Without: an
    evaluation Trainer for evaluate and predict on ``devices`` processes of this machine, with the run's
    accelerator, precision, determinism and validation limit, no logger and no checkpoints (it calls
    :func:`prepare_process` itself)."""
    import pytorch_lightning as pl

    from ..models.compiling import training_device_type
    t = cfg.trainer
    common = dict(accelerator=t.accelerator, precision=t.precision, deterministic=t.deterministic,
                  limit_val_batches=t.limit_val_batches, use_distributed_sampler=False)
    if folder is None:
        prepare_process(cfg)
        return pl.Trainer(**common, devices=devices, strategy=build_strategy("ddp" if devices > 1 else "auto", devices),
                          logger=False, enable_checkpointing=False, callbacks=callbacks or [],
                          enable_progress_bar=t.enable_progress_bar if progress is None else progress)
    from .callbacks import build_callbacks, build_plugins
    from .exact import ReseedEachBatch, SampleLog
    from .loggers import build_loggers
    exact = [ReseedEachBatch(t.seed)] + ([SampleLog(folder.path / "logs")] if t.log_sample_indices else [])
    from ..progress import progress_enabled
    bar = progress_enabled(progress, default=t.enable_progress_bar)   # a terminal: a bar; else a line per epoch
    strategy = build_strategy(t.strategy, process_count(t.devices, t.num_nodes, training_device_type(t.accelerator)))
    return pl.Trainer(
        **common,
        default_root_dir=str(folder.path),
        max_epochs=t.max_epochs, max_steps=t.max_steps, limit_train_batches=t.limit_train_batches,
        devices=t.devices, num_nodes=t.num_nodes, strategy=strategy, check_val_every_n_epoch=t.check_val_every_n_epoch,
        log_every_n_steps=t.log_every_n_steps, accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val, enable_progress_bar=bar,
        logger=build_loggers(cfg, folder, folder.path.name, resume_step),
        callbacks=exact + build_callbacks(cfg, folder, bar) + (callbacks or [])
        + ([PreemptionCheckpoint(flag, folder.checkpoint_dir)] if flag is not None else []),
        plugins=build_plugins(cfg),
    )


def _fit_and_evaluate(trainer, task, dm, t, resume: Path | None) -> dict[str, Any]:
    import warnings

    from .callbacks import evaluate_both_inference_modes
    if evaluation_only(t):
        trainer.validate(task, datamodule=dm, verbose=False)
        inference = evaluate_both_inference_modes(trainer, task, dm)
        return {"metrics": task.last_val, "best": None, "epoch": 0, "global_step": 0, "loggers": trainer.loggers,
                "world_size": trainer.world_size, "inference": {**inference, "evaluation_only": True}}
    with warnings.catch_warnings():
        # Our loader does resume mid-epoch, through the data module's checkpointed position
        # (ibnnet.data.sampling); Lightning only knows about loaders with their own state_dict.
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
        trainer.fit(task, datamodule=dm, ckpt_path=str(resume) if resume else None)
    # The final evaluation: a signal stops it without a checkpoint (last.ckpt holds this model), and the resumed
    # run, whose fit ends at once, evaluates again.
    if dm.val_names:
        log.info("trained to step %d: final evaluation", trainer.global_step)
    if dm.val_names and task.last_val_epoch != trainer.current_epoch - 1:
        trainer.validate(task, datamodule=dm, verbose=False)
    inference = evaluate_both_inference_modes(trainer, task, dm) if dm.val_names else {}
    class_names = getattr(dm.raw_train_dataset(), "classes", None)
    shrunk = getattr(dm.raw_train_dataset(), "shrunk", None)   # the reduced-resolution copy read, if any
    return {
        "train_data": {"shrunk_copy": shrunk} if shrunk else {"shrunk_copy": None},
        "metrics": task.last_val,
        "best": task.best_summary(),
        "epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
        "class_names": list(class_names) if class_names is not None and len(class_names) <= 100 else None,
        "inference": inference,
        "loggers": trainer.loggers,   # not recorded: _finish puts metrics.json into the wandb run's summary
    }


DDP_TIMEOUT_ENV = "IBNNET_DDP_TIMEOUT_S"
# NCCL's default is 30 minutes: a rank that died before a collective (a barrier, a metric sync) left the others
# waiting that long. 10 minutes still covers the longest legitimate wait we know of: ranks compiling the first
# step (trainer.compile) with different Inductor cache states, or rank 0 writing a large checkpoint.
DEFAULT_DDP_TIMEOUT_S = 600.0


def ddp_timeout():
    """The process-group timeout of every DDP run: ``$IBNNET_DDP_TIMEOUT_S`` seconds, else 600."""
    from datetime import timedelta

    from ..config import ConfigError
    raw = os.environ.get(DDP_TIMEOUT_ENV, "").strip()
    try:
        seconds = float(raw) if raw else DEFAULT_DDP_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"{DDP_TIMEOUT_ENV}={raw!r}: must be a number of seconds > 0 (the DDP process-group timeout)")
    return timedelta(seconds=seconds)


def process_count(devices, num_nodes: int, device_type: str) -> int:
    """Training processes of a run: ``devices`` x ``num_nodes`` (``devices=auto``: every GPU, or one CPU process)."""
    if isinstance(devices, int):
        return devices * num_nodes
    return (max(1, torch.cuda.device_count()) if device_type == "cuda" else 1) * num_nodes


def build_strategy(strategy: str, processes: int):
    """``trainer.strategy`` for ``pl.Trainer``: DDP (what ``auto`` picks for several processes) with the short
    process-group timeout of :func:`ddp_timeout`; one process under ``auto`` stays ``auto`` (no process group)."""
    if strategy == "auto" and processes <= 1:
        return "auto"
    from pytorch_lightning.strategies import DDPStrategy
    if strategy in ("auto", "ddp"):
        return DDPStrategy(timeout=ddp_timeout())
    if strategy in ("ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false"):
        return DDPStrategy(timeout=ddp_timeout(), find_unused_parameters=strategy.endswith("true"))
    return strategy


class fail_fast:
    """Around a trainer's calls and barriers: when this process fails, the processes it launched (Lightning
    starts ranks 1..N-1 as children of rank 0 outside SLURM) are killed at once instead of waiting in their
    next collective for the process-group timeout. A failing child is caught by Lightning's own observer in
    rank 0, a failing SLURM task by ``srun --kill-on-bad-exit``; a preemption stop is coordinated, not a failure."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer

    def __enter__(self) -> "fail_fast":
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if error is None or not isinstance(error, Exception) or isinstance(error, (Preempted, RequeueRequested)):
            return False
        # Lightning's subprocess launcher (the one that starts ranks as children) keeps them in ``procs`` and
        # has ``kill``; other launchers have neither. Duck-typed: the class itself is private to Lightning.
        launcher = getattr(self.trainer.strategy, "launcher", None)
        procs = [p for p in getattr(launcher, "procs", None) or [] if p.poll() is None]
        if procs and callable(getattr(launcher, "kill", None)):
            import signal
            log.error("rank %d failed (%s: %s); stopping the %d other process(es) it started",
                      self.trainer.global_rank, type(error).__name__, error, len(procs))
            launcher.kill(signal.SIGKILL)
        return False


def check_device_support(cfg, device_type: str, capability: tuple[int, int] | None = None) -> None:
    """Refuse, before anything is built, a run that the GPU it lands on cannot train.

    ``device_type``: where training runs (``cpu``, ``cuda``); ``capability``: the CUDA compute capability
    of the GPU (None: unknown, e.g. ROCm, where bf16 is not checked). Raises :class:`ConfigError`.
    """
    from ..config import ConfigError
    t = cfg.trainer
    if device_type != "cuda":
        return
    if t.deterministic and cfg.task == "segmentation":
        # Bilinear upsampling's backward and the 4-D (per-pixel) NLL loss have no deterministic CUDA kernel:
        # torch.use_deterministic_algorithms makes the first training step raise.
        raise ConfigError("trainer.deterministic=true: task segmentation has no deterministic CUDA kernels "
                          "(bilinear upsampling backward, per-pixel NLL loss); set trainer.deterministic=false "
                          "(seeded, not bit-reproducible) or train on CPU with trainer.accelerator=cpu")
    if str(t.precision).startswith("bf16") and capability is not None and capability < (8, 0):
        raise ConfigError(f"trainer.precision={t.precision}: this GPU (compute capability "
                          f"{capability[0]}.{capability[1]}) has no bf16 arithmetic (it needs 8.0, Ampere or "
                          f"newer); use trainer.precision=16-mixed")


def cuda_capability() -> tuple[int, int] | None:
    """The compute capability of this process's GPU; None on ROCm (bf16 there is not a capability number)."""
    if not torch.cuda.is_available() or torch.version.hip:
        return None
    return tuple(torch.cuda.get_device_capability())


def evaluation_only(t) -> bool:
    """``trainer.max_epochs=0`` and no ``max_steps``: score the starting weights, train nothing."""
    return t.max_epochs == 0 and (t.max_steps is None or t.max_steps <= 0)


def apply_numerics(t) -> None:
    """Process-wide settings that decide the numbers: threads, TF32 and cuDNN autotuning on CUDA (recorded by
    reproducibility())."""
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    # Deterministic mode (torch.use_deterministic_algorithms, set by Lightning) also fills every new tensor with
    # NaN by default, a debugging aid against kernels that read memory they never wrote; those fills cost 3 % of
    # the demo's training step. Our kernels read no uninitialized memory (the bit-identical resume and rerun
    # tests would see it), and PyTorch's docs say a valid program stays deterministic without the fill.
    torch.utils.deterministic.fill_uninitialized_memory = not t.deterministic
    if torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda"):
        torch.set_float32_matmul_precision(t.float32_matmul_precision)
        # cuDNN's convolutions take TF32 by default whatever the matmul precision says: one setting for both.
        torch.backends.cudnn.allow_tf32 = t.float32_matmul_precision != "highest"
        # Autotuning picks the fastest algorithm per shape, which may differ between runs: off when deterministic.
        torch.backends.cudnn.benchmark = not t.deterministic


def reproducibility(cfg) -> dict[str, Any]:
    """What determines a run's numbers besides its config, recorded in metrics.json."""
    import platform
    out: dict[str, Any] = {
        "seed": cfg.trainer.seed,
        "deterministic": bool(cfg.trainer.deterministic),
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
    }
    out["cpu_kernels"] = cpu_isa_record()
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version()
        out["gpu"] = torch.cuda.get_device_name()
        out["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        out["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor()


def main(argv: list[str] | None = None) -> int:
    """``python -m ibnnet.runs.runner RUN_DIR``: what each launched process executes."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ibnnet.runs.runner RUN_DIR", file=sys.stderr)
        return 2
    try:
        execute(args[0])
    except RequeueRequested as e:
        return EXIT_INTERRUPTED if e.reason == INTERRUPT else 0
    return 0  # errors propagate as exceptions (non-zero exit)


if __name__ == "__main__":
    sys.exit(main())
