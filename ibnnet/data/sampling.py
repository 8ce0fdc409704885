"""Training batches whose order is a pure function of (seed, epoch), resumable at any batch.

Why our own batch sampler rather than ``RandomSampler``/``DistributedSampler`` + torchdata's
``StatefulDataLoader``: a bit-identical resume needs three things, and only this shape gives all of them
without depending on how many batches the DataLoader's workers prefetched when the checkpoint was taken:

- the order of epoch ``e`` is ``randperm(n, seed + e)``, sharded over ranks as DistributedSampler does, so
  a restarted process sees in epoch ``e`` exactly what an uninterrupted one would;
- a resume position ``(epoch, batches already trained)`` taken from Lightning's loop progress (which
  counts *trained* batches, not fetched ones), so the resumed epoch skips exactly those batches;
- every item is ``(epoch, index)``: the dataset seeds each sample's augmentation from
  (seed, epoch, index) (:class:`~ibnnet.data.transforms.pipeline.TransformedDataset`), so worker count, worker
  restarts and prefetching never change what a sample looks like.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Shuffled full batches of ``(epoch, index)`` for one rank; ``set_epoch`` is called by Lightning.

    ``resume=(epoch, batches_done)`` makes the first iteration of that epoch start after the batches a
    checkpoint already trained; later epochs start from their first batch.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, resume: tuple[int, int] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        # drop_last semantics: every rank gets the same number of full batches (BN/SN statistics of a tiny
        # last batch are noise, ghost batches need full batches, and DDP needs equal step counts).
        self.batches_per_epoch = num_samples // world_size // batch_size
        self.epoch = resume[0] if resume else 0
        self._resume = resume

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def sampler(self) -> "EpochBatchSampler":
        # Lightning calls set_epoch on `loader.batch_sampler.sampler` (torch's BatchSampler layout).
        return self

    def order(self, epoch: int) -> list[int]:
        """This rank's sample indices of ``epoch``, in training order (full batches only)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            perm = list(range(self.num_samples))
        used = self.batches_per_epoch * self.batch_size * self.world_size
        return perm[:used][self.rank::self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        skip = 0
        if self._resume is not None and self._resume[0] == epoch:
            skip = self._resume[1]
        self._resume = None   # a position applies to the first pass over its epoch only
        indices = self.order(epoch)
        for b in range(skip, self.batches_per_epoch):
            yield [(epoch, i) for i in indices[b * self.batch_size:(b + 1) * self.batch_size]]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample: distinct for every (seed, epoch, index), stable across runs."""
    # A fixed 64-bit mix (splitmix64 finaliser) rather than Python's hash(), which is salted per process.
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    return x & (2**63 - 1)


def seed_torch(seed: int) -> None:
    """Seed torch's CPU generator, and CUDA's when CUDA is running: ``torch.manual_seed`` without its cost on
    a CUDA build before CUDA starts, where every call queues a lazy CUDA seeding together with a formatted
    stack trace (measured: ~1.5 ms per call, most of the demo's per-sample loading time, and a queue that
    only grows). CPU results are the same as with ``torch.manual_seed``."""
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)
