"""Callbacks and plugins every run uses: checkpoints, SN batch-average statistics, atomic saves."""
from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from ..config.validate import best_metric
from ..data.transforms.pipeline import normalize_batch
from ..errors import UserError
from ..layers import estimate_batch_average_stats
from .claims import ClaimLost, fence
from .folder import RunFolder
from .preemption import safe_point

log = logging.getLogger("ibnnet")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous one is intact."""


class CheckpointDiskFullError(UserError, CheckpointWriteError):
    """No space (or quota) left for a checkpoint: the message says how much is free and what to do, so the
    command line shows it in one line. Other write failures stay :class:`CheckpointWriteError` (a traceback)."""


def _caused_by(e: BaseException | None, *errnos: int) -> bool:
    """One of ``errnos`` anywhere in the exception chain (torch reports a failed write as a RuntimeError)."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno in errnos:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _disk_full(e: BaseException | None) -> bool:
    return _caused_by(e, errno.ENOSPC, errno.EDQUOT)


_ESTALE_RETRIES = 3


def _retry_stale(write, path: Path):
    """``write()``, again after ESTALE: an NFS file handle went stale under us (the server restarted, a folder was
    replaced on another client); a fresh lookup of the same path works, so the whole write is done again."""
    for attempt in range(_ESTALE_RETRIES + 1):
        try:
            return write()
        except (OSError, RuntimeError) as e:
            if attempt == _ESTALE_RETRIES or not _caused_by(e, errno.ESTALE) or isinstance(e, ClaimLost):
                raise
            log.warning("%s: %s; writing it again", path, e.__cause__ or e)
            time.sleep(0.5 * (attempt + 1))


def _link_as(source: Path, target: Path) -> None:
    """Make ``target`` a second name of ``source``'s file, atomically (a temporary link renamed over it)."""
    link = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    link.unlink(missing_ok=True)
    try:
        os.link(source, link)
        fence(target)
        os.replace(link, target)
    except BaseException:
        link.unlink(missing_ok=True)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file beside the target, then rename: a kill or a full disk mid-save
    keeps the old file. The previous ``last.ckpt`` stays as ``last.prev.ckpt`` (a hard link: no copy), the
    fallback should the newest one ever be unreadable."""

    KEEP_PREVIOUS = ("last.ckpt",)
    # best.ckpt of the epoch last.ckpt was also saved at holds the same weights: one file, two names (a hard link;
    # the next atomic save of either name replaces only that name). 3 demo cells kept 770 MB of twins before.
    SAME_WHEN_SAME_STEP = {"last.ckpt": "best.ckpt", "best.ckpt": "last.ckpt"}

    def __init__(self) -> None:
        super().__init__()
        self._saved_step: dict[Path, int] = {}   # the global step each file of this process was saved at

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        self._write(checkpoint, Path(path))
        path, step = Path(path), checkpoint.get("global_step")
        self._saved_step[path] = step
        twin_name = self.SAME_WHEN_SAME_STEP.get(path.name)   # preempt.ckpt and others have none
        twin = path.with_name(twin_name) if twin_name else None
        if twin is not None and step is not None and self._saved_step.get(twin) == step and twin.is_file():
            _retry_stale(lambda: _link_as(path, twin), twin)

    def _write(self, checkpoint: dict[str, Any], path: Path) -> None:
        _retry_stale(lambda: self._write_once(checkpoint, path), path)

    def _write_once(self, checkpoint: dict[str, Any], path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            # Our own file object: on a failed write it is closed (and its space freed with the unlink) at
            # once, not when torch's writer is garbage-collected, so the error can still be recorded.
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            if path.name in self.KEEP_PREVIOUS and path.exists():
                _link_as(path, path.with_name(path.stem + ".prev.ckpt"))
            fence(path)   # a process that was taken over must not replace the new holder's checkpoint
            os.replace(tmp, path)
        except BaseException as e:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(e, (OSError, RuntimeError)) and not isinstance(e, (CheckpointWriteError, ClaimLost)):
                free = shutil.disk_usage(path.parent).free
                kept = f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} existed"
                why = "no space left on device" if _disk_full(e) else f"{type(e).__name__}: {str(e).strip()[:200]}"
                raise (CheckpointDiskFullError if _disk_full(e) else CheckpointWriteError)(
                    f"{path}: could not write the checkpoint ({why}); {free / 2**20:.1f} MiB free there once "
                    f"the partial file was removed; {kept}. Free space (or move paths.runs) and run again: "
                    f"it resumes from the last checkpoint") from e
            raise


_STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def statistics_loader(datamodule, seed: int, world_size: int = 1, rank: int = 0) -> DataLoader:
    """Training images through the EVALUATION transform (ImageNet: resize 256, centre crop 224; no flip, no
    colour noise), shuffled with ``seed``, in batches of the run's per-process batch size. The official SN code
    estimates its batch-average statistics from exactly such un-augmented training batches."""
    from ..data.registry import DATASETS
    from ..data.transforms.pipeline import TransformedDataset, build_transform

    cfg = datamodule.cfg
    spec = cfg.data.train
    dataset = TransformedDataset(datamodule.raw_train_dataset(),
                                 build_transform(spec, DATASETS[spec.dataset].augment, cfg.data.augment, train=False))
    if world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                     drop_last=True)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    # drop_last: every estimate is over a full (ghost) batch of the cell's size.
    return DataLoader(dataset, batch_size=cfg.data.batch_size, sampler=sampler, drop_last=True,
                      num_workers=cfg.data.num_workers, pin_memory=torch.cuda.is_available())


class BatchAverageStats(Callback):
    """SN's batch-average inference (SN sec. 3 "Inference", appendix A): freeze the network and set the BN
    statistics from K training batches instead of the moving averages.

    The batches come from :func:`statistics_loader` (un-augmented training images) at the run's per-process
    batch size; under ghost emulation every layer splits them into ghost batches of the emulated per-GPU size,
    so K physical batches give the same K x (#GPUs) per-GPU estimates as K batches on each real GPU, which
    DDP then averages over processes. The moving averages are put back after each such evaluation: training
    and checkpoints keep them, and both inference modes of one model can be reported.

    ``every_eval``: before every validation while training (the curve of SN Fig. 5); otherwise only for the
    final evaluation, run by :func:`evaluate_both_inference_modes`.
    """

    def __init__(self, num_batches: int, every_eval: bool = False):
        self.num_batches = num_batches
        self.every_eval = every_eval
        self.active = every_eval
        self.batches_used = 0
        self._saved: dict[str, torch.Tensor] | None = None

    def estimate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
        device = pl_module.device
        seed = trainer.datamodule.cfg.trainer.seed
        loader = statistics_loader(trainer.datamodule, seed, trainer.world_size, trainer.global_rank)

        def forward(module, batch):
            # the loader hands over uint8 images: normalise as the task does after a batch transfer
            return module(normalize_batch(batch[0].to(device, non_blocking=True)))

        def batches():   # each batch a safe point: a stop signal need not wait for the (long) estimate to end
            for batch in loader:
                safe_point(trainer)
                yield batch

        used = estimate_batch_average_stats(pl_module, batches(), self.num_batches, forward_fn=forward)
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            # Each process saw different batches; average so that every process evaluates the same model.
            for buf_name, buf in pl_module.named_buffers():
                if buf_name.endswith(("running_mean", "running_var")):
                    torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
                    buf.div_(trainer.world_size)
        if used < self.num_batches:
            log.warning("batch-average statistics: only %d of %d training batches available", used, self.num_batches)
        log.info("batch-average statistics from %d un-augmented training batches", used)
        return used

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.active and not trainer.sanity_checking:
            self._saved = {n: b.clone() for n, b in pl_module.named_buffers() if n.endswith(_STAT_BUFFERS)}
            self.batches_used = self.estimate(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._saved is not None:
            buffers = dict(pl_module.named_buffers())
            for name, value in self._saved.items():
                buffers[name].copy_(value)
            self._saved = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.on_validation_end(trainer, pl_module)   # stopped mid-validation: the model keeps its moving averages

    def state_dict(self) -> dict[str, Any]:
        # The batches of the last estimate, reported with the evaluation it made: a run resumed from the last
        # epoch's last.ckpt reports that epoch's evaluation (saved with the model) without estimating again.
        return {"batches_used": self.batches_used}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches_used = int(state_dict.get("batches_used", self.batches_used))

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # Saved during a batch-average validation (a stop signal there): the moving averages, which training
        # continues from, not the estimate in the model now.
        if self._saved is not None:
            state = checkpoint["state_dict"]
            for name, value in self._saved.items():
                if name in state:
                    state[name] = value.clone()


def evaluate_both_inference_modes(trainer: pl.Trainer, task, datamodule) -> dict[str, Any]:
    """After training: the final model evaluated with moving averages and with batch-average statistics.

    ``task.last_val`` must hold the final epoch's evaluation. Returns the metrics.json entries: ``inference``
    (the mode of ``metrics``: batch_average when the run has ``trainer.batch_average_batches``, else
    moving_average, i.e. whatever running statistics the model keeps), ``batch_average`` (K and batches used),
    ``metrics_moving_average``; ``task.last_val`` becomes the batch-average evaluation (what tables show).
    """
    callback = next((c for c in trainer.callbacks if isinstance(c, BatchAverageStats)), None)
    if callback is None or not task.last_val:
        return {"inference": "moving_average"}
    if callback.every_eval:
        batch_average = task.last_val   # the last validation already ran with batch-average statistics
        callback.active = False
        trainer.validate(task, datamodule=datamodule, verbose=False)
        moving = task.last_val
        callback.active = True
    else:
        moving = task.last_val
        callback.active = True
        trainer.validate(task, datamodule=datamodule, verbose=False)
        batch_average = task.last_val
        callback.active = False
    task.last_val = batch_average
    return {"inference": "batch_average",
            "batch_average": {"batches": callback.num_batches, "batches_used": callback.batches_used,
                              "loader": "training images, evaluation transform"},
            "metrics_moving_average": moving}


def primary_metric(cfg) -> tuple[str, str] | None:
    """The logged metric best.ckpt follows: trainer.best_metric of the first evaluation set."""
    if not cfg.data.val:
        return None
    metric, mode = best_metric(cfg)
    return f"val/{cfg.data.val[0].name}/{metric}", mode


def build_callbacks(cfg, folder: RunFolder, progress_bar: bool | None = None) -> list[Callback]:
    """``progress_bar``: Lightning's bar (a terminal), else one line per epoch (default: the config's setting)."""
    callbacks: list[Callback] = [
        # last.ckpt after every training epoch, whether or not that epoch is evaluated. (save_last would not
        # do: Lightning writes it only in steps where a top-k checkpoint was written too.)
        ModelCheckpoint(dirpath=folder.checkpoint_dir, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                        save_on_train_epoch_end=True, enable_version_counter=False),
    ]
    primary = primary_metric(cfg)
    if primary:
        callbacks.append(ModelCheckpoint(dirpath=folder.checkpoint_dir, filename="best", monitor=primary[0],
                                         mode=primary[1], save_top_k=1, auto_insert_metric_name=False,
                                         enable_version_counter=False))
    if cfg.trainer.enable_progress_bar if progress_bar is None else progress_bar:
        # The bar shows the step loss, and every refresh reads it from the GPU (.item(), a host-device sync):
        # refresh as often as the loggers write (trainer.log_every_n_steps), not every step.
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, cfg.trainer.log_every_n_steps)))
    else:
        from .console import EpochLines
        callbacks.append(EpochLines(best_metric(cfg)[0]))
    if cfg.trainer.batch_average_batches > 0:
        callbacks.append(BatchAverageStats(cfg.trainer.batch_average_batches, cfg.trainer.batch_average_every_eval))
    return callbacks


def build_plugins(cfg) -> list:
    plugins: list = [AtomicCheckpointIO()]
    from .preemption import under_slurm_step
    if under_slurm_step():
        from lightning_fabric.plugins.environments import SLURMEnvironment
        # Requeueing is ours (ibnnet.runs.preemption); Lightning's would save mid-batch and double-handle.
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins
