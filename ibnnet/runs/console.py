"""What a run prints: its own lines on the console, everything the libraries say in its train.log.

- On a terminal, Lightning's progress bar (one per run); in a pipe or a SLURM log, no ``\\r`` frames or escape
  codes but one line per epoch: loss, the first evaluation metric of each set, images/s and the time left.
- Lightning's and PyTorch's notes and warnings (the model summary, the srun hint, tips, deprecations) go to the
  run's train.log only; wandb is silenced and one ibnnet line says where its files are.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Iterator

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

# Loggers of the libraries a run uses (and Python's warnings, through logging.captureWarnings).
LIBRARY_LOGGERS = ("lightning.pytorch", "pytorch_lightning", "lightning_fabric", "lightning.fabric", "torch",
                   "py.warnings")


@contextlib.contextmanager
def library_output_to(handler: logging.Handler) -> Iterator[None]:
    """While a run trains: the libraries' log records and Python warnings go to ``handler`` (train.log) alone."""
    saved = []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate, logger.level))
        logger.handlers = [handler]
        logger.propagate = False
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)   # the model summary and Lightning's notes are INFO
    logging.captureWarnings(True)
    silent = os.environ.get("WANDB_SILENT")
    os.environ.setdefault("WANDB_SILENT", "true")   # its `wandb sync` hint would contradict `ibnnet sync`
    try:
        yield
    finally:
        logging.captureWarnings(False)
        if silent is None:
            os.environ.pop("WANDB_SILENT", None)
        for logger, handlers, propagate, level in saved:
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class EpochLines(Callback):
    """One line per training epoch on stdout, for consoles that are not terminals (pipes, SLURM logs)."""

    def __init__(self, val_metric: str, print_fn=print):
        self.val_metric = val_metric      # e.g. top1_err / miou: the first metric shown per evaluation set
        self.print = print_fn
        self._start = self._epoch_start = 0.0
        self._train_time = 0.0
        self._images = 0
        self._epochs_timed = 0
        self._validated = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()
        self._epochs_timed = 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = not trainer.sanity_checking

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = False   # the metrics of an epoch without evaluation would be the last epoch's
        self._epoch_start = time.perf_counter()
        self._images = 0
        self._train_time = 0.0
        self._batch_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._train_time += time.perf_counter() - self._batch_start
        first = batch[0] if isinstance(batch, (list, tuple)) else batch
        self._images += int(getattr(first, "shape", [0])[0] or 0) * max(1, trainer.world_size)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        self._epochs_timed += 1
        m = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        loss = m.get("train/loss_epoch")
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        for key in sorted(k for k in m if k.startswith("val/") and k.endswith("/" + self.val_metric)
                          and self._validated):
            parts.append(f"{key.split('/')[1]} {self.val_metric} {float(m[key]):.2f}")
        if self._train_time > 0:
            parts.append(f"{self._images / self._train_time:.0f} img/s")
        elapsed = time.perf_counter() - self._start
        left = (trainer.max_epochs or 0) - trainer.current_epoch - 1
        if left > 0:
            parts.append(f"ETA {_clock(elapsed / self._epochs_timed * left)}")
        else:
            parts.append(f"{_clock(elapsed)} in all")
        self.print("[ibnnet] " + ", ".join(parts), flush=True)


def wandb_line(loggers: list, experiment: str) -> str | None:
    """The one line about wandb: where an offline run's files are (and how to upload them), or the run's URL."""
    from pytorch_lightning.loggers import WandbLogger
    for logger in loggers:
        if isinstance(logger, WandbLogger) and not getattr(logger, "_broken", False):
            run = logger.experiment
            if not hasattr(run, "dir"):
                return None
            if getattr(getattr(run, "settings", None), "_offline", False) or getattr(run, "offline", False):
                folder = os.path.dirname(os.path.dirname(run.dir))   # <run folder>/wandb/offline-run-*/files
                return f"[ibnnet] wandb (offline): {folder}; `ibnnet sync {experiment}` uploads it"
            url = getattr(run, "url", None)
            return f"[ibnnet] wandb: {url}" if url else None
    return None


__all__ = ["EpochLines", "LIBRARY_LOGGERS", "library_output_to", "wandb_line"]
