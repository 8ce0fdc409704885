"""The Lightning data module: one training set, any number of named evaluation sets.

Samplers are made here (the Trainer runs with ``use_distributed_sampler=False``):
- training batches come from :class:`~ibnnet.data.sampling.EpochBatchSampler`, whose order is a function
  of (seed, epoch) and which resumes at the batch a checkpoint stopped at (the position is this module's
  checkpointed state, read from Lightning's loop progress when the checkpoint is written);
- evaluation under DDP never pads or repeats samples: every image is evaluated exactly once across all
  processes, which makes a 2-process confusion matrix identical to a 1-process one.
Every loader has its own generator, so creating one never draws from the global RNG (which training
steps use, e.g. dropout, and which checkpoints restore).
"""
from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import DataLoader, SequentialSampler

from ..errors import ConfigError
from .registry import DATASETS, absent_reason, build_dataset
from .sampling import EpochBatchSampler
from .transforms.pipeline import TransformedDataset, build_transform

log = logging.getLogger("ibnnet")


class DataModule(pl.LightningDataModule):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.task = cfg.task
        self.train_set = None
        self.val_sets: dict[str, TransformedDataset] = {}
        # per evaluation set: the label indices a prediction may take (ImageNet-R's 200 classes), or None
        self.val_logit_classes: list[list[int] | None] = []
        self._raw_train = None
        self.resume_position: tuple[int, int] | None = None   # (epoch, batches trained), from a checkpoint

    def val_specs(self) -> list:
        """The evaluation sets to use: optional ones whose folder is missing are skipped, with a warning; a
        spec standing for several sets (ImageNet-C: one per corruption and severity) is expanded."""
        specs = []
        for spec in self.cfg.data.val:
            absent = absent_reason(spec, self.cfg.paths.data) if spec.optional else None
            if absent is not None:
                log.warning("evaluation set %s skipped: %s (optional)", spec.name, absent)
                continue
            expand = DATASETS[spec.dataset].expand
            specs += expand(spec) if expand is not None else [spec]
        return specs

    @property
    def val_names(self) -> list[str]:
        return [s.name for s in self.val_specs()]

    def _make(self, spec, train: bool):
        entry = DATASETS[spec.dataset]
        if entry.task != self.task:
            raise ConfigError(f"dataset {spec.dataset!r} ({spec.name}) is for {entry.task}, "
                             f"but this run's task is {self.task}")
        d = self.cfg.data
        raw = build_dataset(spec, self.cfg.paths.data, d)
        transform = build_transform(spec, entry.augment, d.augment, train)
        return raw, TransformedDataset(raw, transform, seed=self.cfg.trainer.seed)

    def raw_train_dataset(self):
        if self._raw_train is None:
            self._raw_train, self.train_set = self._make(self.cfg.data.train, train=True)
        return self._raw_train

    @property
    def num_classes(self) -> int:
        return self.cfg.data.num_classes or int(self.raw_train_dataset().num_classes)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.raw_train_dataset()
        if not self.val_sets:
            made = {spec.name: self._make(spec, train=False) for spec in self.val_specs()}
            self.val_sets = {name: ds for name, (_, ds) in made.items()}
            self.val_logit_classes = [getattr(raw, "logit_classes", None) for raw, _ in made.values()]

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size <= 1:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader(self, dataset, persistent: bool = True, **kw) -> DataLoader:
        workers = self.cfg.data.num_workers
        return DataLoader(dataset, num_workers=workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=persistent and workers > 0, generator=torch.Generator().manual_seed(0),
                          **kw)

    def train_batch_sampler(self) -> EpochBatchSampler:
        if self.train_set is None:
            self.setup("fit")
        world, rank = self._world()
        return EpochBatchSampler(len(self.train_set), self.cfg.data.batch_size, self.cfg.trainer.seed,
                                 rank=rank, world_size=world, resume=self.resume_position)

    def train_dataloader(self) -> DataLoader:
        batch_sampler = self.train_batch_sampler()
        return self._loader(self.train_set, batch_sampler=batch_sampler)

    # Lightning saves this in every checkpoint and gives it back before the train loader is made.
    def state_dict(self) -> dict:
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:   # also saved from validation in fit
            return {}
        epoch = trainer.current_epoch
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        if done >= trainer.num_training_batches:   # an end-of-epoch checkpoint: resume at the next epoch
            epoch, done = epoch + 1, 0
        return {"train_position": [int(epoch), int(done)]}

    def load_state_dict(self, state: dict) -> None:
        position = state.get("train_position")
        self.resume_position = (int(position[0]), int(position[1])) if position else None
        if self.resume_position:
            log.info("training data resumes at epoch %d after %d batches", *self.resume_position)

    def val_dataloader(self) -> list[DataLoader]:
        if not self.val_sets:
            self.setup("validate")
        world, rank = self._world()
        # Lightning iterates the sets one after another, but a persistent loader's workers (and pin-memory thread)
        # outlive its set: with ImageNet-C's 75 sets all would stay alive to the end. One or two sets (the usual
        # in-domain / cross-domain pair) keep theirs, so each validation does not pay their start-up again; with
        # more, a set's workers end when it is done and at most one set's are alive. Workers load by index
        # with per-sample seeds, so this changes no number.
        persistent = len(self.val_sets) <= 2
        loaders = []
        for ds in self.val_sets.values():
            sampler = (UnrepeatedDistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False)
                       if world > 1 else SequentialSampler(ds))
            loaders.append(self._loader(ds, persistent, batch_size=self.cfg.data.eval_batch_size, sampler=sampler,
                                        drop_last=False))
        return loaders
