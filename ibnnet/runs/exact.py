"""What makes a resumed run bit-identical to an uninterrupted one, besides the data order.

The data side (which samples, how they are augmented) is :mod:`ibnnet.data.sampling`. What remains is
the randomness of the training step itself (dropout, stochastic depth, anything a model draws): every
training batch re-seeds the global RNGs from (seed, epoch, batch, rank). That is stronger than saving
RNG states in the checkpoint: whatever draws from the global RNGs between two steps (evaluation,
SN's batch-average re-estimation with dropout, a DataLoader's base seed, a checkpoint restore) cannot
shift the next step's randomness, so the last.ckpt of a run resumed at any point equals the
uninterrupted run's.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from ..data.sampling import sample_seed, seed_torch
from ..files import atomic_write_text

_STEP_DOMAIN = 0x5EED_57E9   # keeps step seeds apart from the samples' augmentation seeds


class ReseedEachBatch(Callback):
    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        position = trainer.current_epoch * max(1, int(trainer.num_training_batches)) + batch_idx
        s = sample_seed(self.seed ^ _STEP_DOMAIN, position, trainer.global_rank)
        seed_torch(s)                   # CPU, and every CUDA device once CUDA runs
        random.seed(s)
        np.random.seed(s % 2**32)


class SampleLog(Callback):
    """``logs/samples-rank<r>.jsonl``: the sample indices of every trained batch (``trainer.log_sample_indices``).

    One line per batch after its optimizer step: ``{"epoch", "batch", "step", "indices"}``. On resume the
    lines of batches the checkpoint had not trained are dropped first, so the file always tells exactly
    which samples the model in ``last.ckpt`` (and the finished model) was trained on, and in which order.
    """

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self._file = None

    def _path(self, rank: int) -> Path:
        return self.log_dir / f"samples-rank{rank}.jsonl"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = self._path(trainer.global_rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        resume = getattr(trainer.datamodule, "resume_position", None)
        keep: list[str] = []
        if resume is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:   # a line cut short by a kill
                    continue
                if (row["epoch"], row["batch"]) < tuple(resume):
                    keep.append(line + "\n")
        # replaced whole, never rewritten in place: a kill meanwhile leaves the old log, not a truncated one
        atomic_write_text(path, "".join(keep))
        self._file = open(path, "a")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self._file is None or not isinstance(batch, (tuple, list)) or len(batch) < 3:
            return
        row = {"epoch": trainer.current_epoch, "batch": batch_idx, "step": trainer.global_step,
               "indices": batch[2].tolist()}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_sample_log(log_dir: Path, rank: int = 0) -> list[dict]:
    path = Path(log_dir) / f"samples-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
