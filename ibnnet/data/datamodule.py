"""The Lightning data module: one training set, any number of named evaluation sets.

Samplers are made here (the Trainer runs with ``use_distributed_sampler=False``) so that evaluation
under DDP never pads or repeats samples: every image is evaluated exactly once across all processes,
which makes a 2-process confusion matrix identical to a 1-process one.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

import logging

from .registry import DATASETS, build_dataset, dataset_root
from .transforms import TransformedDataset, build_transform

log = logging.getLogger("ibnnet")


class DataModule(pl.LightningDataModule):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.task = cfg.task
        self.train_set = None
        self.val_sets: dict[str, TransformedDataset] = {}
        self._raw_train = None

    def val_specs(self) -> list:
        """The evaluation sets to use: optional ones whose folder is missing are skipped, with a warning."""
        specs = []
        for spec in self.cfg.data.val:
            root = dataset_root(spec, self.cfg.paths.data) if spec.optional else None
            if root is not None and not root.exists():
                log.warning("evaluation set %s skipped: %s does not exist (optional)", spec.name, root)
                continue
            specs.append(spec)
        return specs

    @property
    def val_names(self) -> list[str]:
        return [s.name for s in self.val_specs()]

    def _make(self, spec, train: bool):
        entry = DATASETS[spec.dataset]
        if entry.task != self.task:
            raise ValueError(f"dataset {spec.dataset!r} ({spec.name}) is for {entry.task}, "
                             f"but this run's task is {self.task}")
        d = self.cfg.data
        raw = build_dataset(spec, self.cfg.paths.data, d)
        return raw, TransformedDataset(raw, build_transform(spec, entry.augment, d.augment, train))

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
            self.val_sets = {spec.name: self._make(spec, train=False)[1] for spec in self.val_specs()}

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size <= 1:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader(self, dataset, batch_size: int, sampler, drop_last: bool) -> DataLoader:
        workers = self.cfg.data.num_workers
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        world, rank = self._world()
        seed = self.cfg.trainer.seed
        if world > 1:
            sampler = DistributedSampler(self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                         drop_last=True)
        else:
            sampler = RandomSampler(self.train_set, generator=torch.Generator().manual_seed(seed))
        # drop_last: BN/SN statistics of a tiny last batch are noise, and ghost batches need full batches.
        return self._loader(self.train_set, self.cfg.data.batch_size, sampler, drop_last=True)

    def val_dataloader(self) -> list[DataLoader]:
        if not self.val_sets:
            self.setup("validate")
        world, rank = self._world()
        loaders = []
        for ds in self.val_sets.values():
            sampler = (UnrepeatedDistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False)
                       if world > 1 else SequentialSampler(ds))
            loaders.append(self._loader(ds, self.cfg.data.eval_batch_size, sampler, drop_last=False))
        return loaders
