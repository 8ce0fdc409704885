"""Callbacks and plugins every run uses: checkpoints, SN batch-average statistics, atomic saves."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from ..layers import estimate_batch_average_stats
from .rundir import RunFolder

log = logging.getLogger("ibnnet")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, quota); the previous one is intact."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file beside the target, then rename: a kill or a full disk mid-save
    keeps the old file. The previous ``last.ckpt`` stays as ``last.prev.ckpt`` (a hard link: no copy), the
    fallback should the newest one ever be unreadable."""

    KEEP_PREVIOUS = ("last.ckpt",)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            torch.save(checkpoint, tmp)
            if path.name in self.KEEP_PREVIOUS and path.exists():
                previous = path.with_name(path.stem + ".prev.ckpt")
                link = path.with_name(f".{previous.name}.{os.getpid()}.tmp")
                link.unlink(missing_ok=True)
                os.link(path, link)
                os.replace(link, previous)
            os.replace(tmp, path)
        except BaseException as e:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(e, (OSError, RuntimeError)) and not isinstance(e, CheckpointWriteError):
                free = shutil.disk_usage(path.parent).free
                kept = f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} existed"
                raise CheckpointWriteError(
                    f"{path}: could not write the checkpoint ({type(e).__name__}: {str(e).strip()[:200]}); "
                    f"{free / 2**20:.1f} MiB free on that file system; {kept}. Free space (or move "
                    f"paths.runs) and run again: it resumes from the last checkpoint") from e
            raise


class BatchAverageStats(Callback):
    """SN's batch-average inference: before each evaluation, re-estimate normalization statistics
    from K training batches with the network frozen (paper appendix A)."""

    def __init__(self, num_batches: int):
        self.num_batches = num_batches

    def _estimate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.datamodule.train_dataloader()
        device = pl_module.device

        def forward(module, batch):
            return module(batch[0].to(device, non_blocking=True))

        used = estimate_batch_average_stats(pl_module, loader, self.num_batches, forward_fn=forward)
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            # Each process saw different batches; average so that every process evaluates the same model.
            for buf_name, buf in pl_module.named_buffers():
                if buf_name.endswith(("running_mean", "running_var")):
                    torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
                    buf.div_(trainer.world_size)
        log.info("batch-average statistics from %d training batches", used)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._estimate(trainer, pl_module)


def primary_metric(cfg) -> tuple[str, str] | None:
    if not cfg.data.val:
        return None
    first = cfg.data.val[0].name
    return (f"val/{first}/top1_err", "min") if cfg.task == "classification" else (f"val/{first}/miou", "max")


def build_callbacks(cfg, folder: RunFolder) -> list[Callback]:
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
    if cfg.trainer.batch_average_batches > 0:
        callbacks.append(BatchAverageStats(cfg.trainer.batch_average_batches))
    return callbacks


def build_plugins(cfg) -> list:
    plugins: list = [AtomicCheckpointIO()]
    from .preemption import under_slurm_step
    if under_slurm_step():
        from lightning_fabric.plugins.environments import SLURMEnvironment
        # Requeueing is ours (ibnnet.launch.preemption); Lightning's would save mid-batch and double-handle.
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins
