"""ibnnet predict: segmentation predictions as the Cityscapes benchmark reads them.

One 8-bit PNG of Cityscapes LABEL ids (7 = road, ..., 33 = bicycle; not the 19 train ids) per image, at
the image's own size, named after it: ``<out>/<eval set>/<city>/<city>_<seq>_<frame>_leftImg8bit.png``
for Cityscapes (the server and cityscapesscripts' evalPixelLevelSemanticLabeling match
``<city>_<seq>_<frame>*.png`` anywhere below the results folder), ``<out>/<eval set>/<frame>.png`` for
GTA5.  Inference is the segmentation task's own (``SegmentationTask.predict_scores``: the eval set's
test scales and flip, whole-image or sliding window as configured), so the mIoU of ``ibnnet evaluate``
and that of the official evaluator on these files are the same number; tests/test_predict.py checks it.

Resumable: an image whose PNG exists is not predicted again (each PNG is written atomically, so an
existing file is complete).  Under DDP every process predicts a disjoint share of the images.
"""
from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config.loader import ConfigError
from ..data.labels import IGNORE_INDEX, LABEL_TO_TRAIN_ID, NUM_CLASSES


def add_predict_command(sub) -> None:
    p = sub.add_parser(
        "predict", help="segmentation predictions as Cityscapes label-id PNGs (benchmark format)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a segmentation model over the config's evaluation sets (or another split of them) and "
                    "write one PNG of Cityscapes label ids per image, named after the image, under a folder "
                    "per evaluation set: what the Cityscapes benchmark server and cityscapesscripts read.\n\n"
                    "  ibnnet predict runs/sn_table5/<run>/config.yaml \\\n"
                    "      --out results/sn_table5/test_predictions --split test\n"
                    "  CITYSCAPES_RESULTS=results/pred/cityscapes csEvalPixelLevelSemanticLabeling")
    p.add_argument("config", help="segmentation run config (e.g. configs/segmentation.yaml or a run's config.yaml)")
    p.add_argument("--checkpoint", help="a run's checkpoint (loaded strictly into the model its config builds) or a "
                                        "weights file; default for a run folder's config.yaml: the checkpoint its "
                                        "experiment's table reports (last.ckpt, or best.ckpt for table.select: "
                                        "best), else model.pretrained_file")
    p.add_argument("--out", required=True, help="output folder (one subfolder per evaluation set)")
    p.add_argument("--split", help="predict this split of every evaluation set instead of its own (e.g. test)")
    p.add_argument("--sets", nargs="+", metavar="NAME", help="only these evaluation sets (data.val[].name)")
    p.add_argument("--devices", type=int, default=1, help="processes (GPUs, or CPU processes with gloo) under DDP")
    p.add_argument("--overwrite", action="store_true", help="predict again images whose PNG exists")
    from ..progress import add_progress_option
    add_progress_option(p)
    p.add_argument("overrides", nargs="*", help="config overrides as key=value")


def train_to_label_id_lut() -> np.ndarray:
    """256-entry uint8 table: train id -> Cityscapes label id; 255 (ignore) -> 0 (unlabeled)."""
    lut = np.zeros(256, dtype=np.uint8)
    for label_id, train_id in LABEL_TO_TRAIN_ID.items():
        if label_id >= 0 and train_id != IGNORE_INDEX:
            lut[train_id] = label_id
    return lut


def encode_label_png(label_ids: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(label_ids, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


class PngWriter:
    """Encodes and writes prediction PNGs on a few threads while the model predicts the next batch (PIL's zlib
    encoder releases the GIL). At most ``max_pending`` images wait, so memory stays bounded; the bytes are
    those of :func:`encode_label_png`, each file written atomically. :meth:`close` waits for the rest and
    raises the first error."""

    def __init__(self, workers: int = 0, max_pending: int = 0):
        import os
        import threading
        from concurrent.futures import ThreadPoolExecutor
        workers = workers or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ibnnet-png")
        self._slots = threading.BoundedSemaphore(max_pending or 2 * workers)
        self._error: BaseException | None = None

    def submit(self, path: Path, label_ids) -> None:
        """Queue one label map (an array, or a callable giving it in the worker thread); blocks while full."""
        if self._error is not None:
            raise self._error
        self._slots.acquire()
        try:
            future = self._pool.submit(self._write, path, label_ids)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(self._done)

    @staticmethod
    def _write(path: Path, label_ids) -> None:
        from ..files import atomic_write_bytes
        atomic_write_bytes(path, encode_label_png(label_ids() if callable(label_ids) else label_ids))

    def _done(self, future) -> None:
        self._slots.release()
        if not future.cancelled() and future.exception() is not None and self._error is None:
            self._error = future.exception()

    def close(self, cancel: bool = False) -> None:
        """Wait for every queued image (``cancel``: drop those not started; after a failure elsewhere)."""
        self._pool.shutdown(wait=True, cancel_futures=cancel)
        if self._error is not None and not cancel:
            raise self._error


def prediction_name(raw, image_path: str) -> Path:
    """Output path (relative to the eval set's folder) of one image: its path below the images folder, as .png."""
    rel = Path(image_path).relative_to(raw.images_dir)
    return rel.with_suffix(".png")


@dataclass
class _Job:
    name: str
    spec: object
    dataset: object          # _Images
    folder: Path


class _Images(torch.utils.data.Dataset):
    """The eval transform of an image set (no labels read), with each item's index and original size."""

    def __init__(self, raw, transform, indices: list[int]):
        self.raw, self.transform, self.indices = raw, transform, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        from torchvision import tv_tensors

        from ..data.images import decode_rgb
        index = self.indices[i]
        image = decode_rgb(self.raw.samples[index][0], self.raw.decoder)
        h, w = int(image.shape[-2]), int(image.shape[-1])
        x = self.transform(tv_tensors.Image(image)).as_subclass(torch.Tensor)
        return x, index, h, w


def _jobs(cfg, out: Path, overwrite: bool) -> list[_Job]:
    from ..data.datamodule import DataModule
    from ..data.registry import DATASETS, build_dataset
    from ..data.transforms.pipeline import build_transform

    dm = DataModule(cfg)
    jobs = []
    for spec in dm.val_specs():
        entry = DATASETS[spec.dataset]
        raw = build_dataset(spec, cfg.paths.data, cfg.data)
        if not hasattr(raw, "samples") or not hasattr(raw, "images_dir"):
            raise ConfigError(f"evaluation set {spec.name}: dataset {spec.dataset!r} has no image files to name "
                              "predictions after (predict is for Cityscapes and GTA5)")
        folder = out / spec.name
        pending = [i for i in range(len(raw.samples))
                   if overwrite or not (folder / prediction_name(raw, raw.samples[i][0])).is_file()]
        transform = build_transform(spec, entry.augment, cfg.data.augment, train=False)
        jobs.append(_Job(spec.name, spec, _Images(raw, transform, pending), folder))
        print(f"[ibnnet] {spec.name}: {len(raw.samples)} images, {len(raw.samples) - len(pending)} already "
              f"predicted, scales {list(spec.scales)}{' + flip' if spec.flip else ''} -> {folder}", file=sys.stderr)
    return jobs


def _predictor(task, jobs: list[_Job], batch_size: int, num_workers: int, writer: PngWriter):
    import pytorch_lightning as pl
    from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, SequentialSampler

    from ..data.transforms.pipeline import normalize_batch

    lut = train_to_label_id_lut()

    class Predictor(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.task = task

        def predict_dataloader(self):
            world, rank = self.trainer.world_size, self.trainer.global_rank
            loaders = []
            for job in jobs:
                # Unrepeated: under DDP no image is padded in twice (two processes writing one file).
                sampler = (UnrepeatedDistributedSampler(job.dataset, num_replicas=world, rank=rank, shuffle=False)
                           if world > 1 else SequentialSampler(job.dataset))
                loaders.append(DataLoader(job.dataset, batch_size=batch_size, sampler=sampler,
                                          num_workers=num_workers, pin_memory=torch.cuda.is_available()))
            return loaders

        def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
            x, indices, hs, ws = batch
            x = normalize_batch(x)   # workers hand over uint8 (multi-scale resizing needs the float image)
            job = jobs[dataloader_idx]
            scores = self.task.predict_scores(x, job.spec.scales, job.spec.flip, getattr(job.spec, "sizes", None))
            for k in range(x.shape[0]):
                s = scores[k:k + 1]
                size = (int(hs[k]), int(ws[k]))
                if tuple(s.shape[-2:]) != size:  # an eval set resized on load (GTA5): back to the file's size
                    s = F.interpolate(s.float(), size=size, mode="bilinear", align_corners=False)
                train_ids = s.argmax(1)[0].to("cpu", torch.uint8).numpy()   # < 256 classes (NUM_CLASSES)
                raw = job.dataset.raw
                path = job.folder / prediction_name(raw, raw.samples[int(indices[k])][0])
                # label ids, PNG encoding and the write on the writer's threads; the GPU goes on meanwhile
                writer.submit(path, lambda ids=train_ids: lut[ids])

    return Predictor()


def cmd_predict(args) -> int:
    from omegaconf import OmegaConf

    from ..config import compose
    from ..config.loader import Source
    from ..files import atomic_write_json
    from ..progress import progress_enabled
    from ..runs.runner import build_task, fail_fast, load_evaluation_weights, make_trainer
    from .common import reported_checkpoint

    base = compose(args.config, args.overrides)
    if base.task != "segmentation":
        raise ConfigError(f"{args.config}: task is {base.task!r}; predict writes segmentation label maps")
    if not base.data.val:
        raise ConfigError(f"{args.config}: no evaluation sets (data.val) to predict")
    specs = OmegaConf.to_container(base.data.val)
    if args.sets:
        unknown = sorted(set(args.sets) - {s["name"] for s in specs})
        if unknown:
            raise ConfigError(f"--sets: no evaluation set named {unknown} in {args.config} "
                              f"(sets: {', '.join(s['name'] for s in specs)})")
        specs = [s for s in specs if s["name"] in args.sets]
    if args.split:
        # A set predicted on another split gets its own folder, so val and test files never mix.
        specs = [dict(s, split=args.split, name=s["name"] if s["split"] == args.split else f"{s['name']}_{args.split}")
                 for s in specs]
    cfg = compose(args.config, args.overrides,
                  extra=[Source("predict", OmegaConf.create({"data": {"val": specs}}))])
    num_classes = cfg.data.num_classes or NUM_CLASSES
    if num_classes != NUM_CLASSES:
        raise ConfigError(f"{args.config}: data.num_classes={num_classes}; Cityscapes label-id files need the "
                          f"{NUM_CLASSES} Cityscapes classes")
    checkpoint = args.checkpoint
    if checkpoint is None:
        reported = reported_checkpoint(args.config, cfg)
        if reported is not None:
            checkpoint = reported[0]
            print(f"[ibnnet] checkpoint {checkpoint}: {reported[1]}", file=sys.stderr)
    if not checkpoint and not cfg.model.pretrained_file:
        raise ConfigError("predict needs trained weights: give --checkpoint FILE (or model.pretrained_file=...)")

    out = Path(args.out)
    jobs = _jobs(cfg, out, args.overwrite)
    todo = [j for j in jobs if len(j.dataset)]
    total = sum(len(j.dataset) for j in todo)
    if todo:
        task = build_task(cfg, num_classes, [j.name for j in jobs])
        if checkpoint:
            load_evaluation_weights(task, checkpoint)
        else:   # model.pretrained_file: a segmentation file (backbone and head) or a backbone's
            task.load_initial_weights()
        trainer = make_trainer(cfg, devices=args.devices, progress=progress_enabled(args.progress))
        writer = PngWriter()
        predictor = _predictor(task, todo, cfg.data.eval_batch_size or cfg.data.batch_size, cfg.data.num_workers,
                               writer)
        import warnings
        with fail_fast(trainer):
            try:
                with warnings.catch_warnings():
                    # predict_step writes files and returns nothing, on purpose.
                    warnings.filterwarnings("ignore", message="predict returned None")
                    trainer.predict(predictor, return_predictions=False)
            except BaseException:
                writer.close(cancel=True)
                raise
            writer.close()   # before the barrier: rank 0 then finds every file of every rank
            trainer.strategy.barrier("predictions written")
        if not trainer.is_global_zero:
            return 0
    missing = [str(j.folder / prediction_name(j.dataset.raw, j.dataset.raw.samples[i][0]))
               for j in jobs for i in range(len(j.dataset.raw.samples))
               if not (j.folder / prediction_name(j.dataset.raw, j.dataset.raw.samples[i][0])).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} predictions were not written, e.g. {missing[:3]}")
    atomic_write_json(out / "predictions.json", {
        "config": str(args.config), "overrides": list(args.overrides),
        "checkpoint": str(checkpoint) if checkpoint else cfg.model.pretrained_file,
        "model": cfg.model.name, "format": "Cityscapes label ids (8-bit PNG, image size)",
        "sets": {j.name: {"dataset": j.spec.dataset, "split": j.spec.split, "images": len(j.dataset.raw.samples),
                          "scales": list(j.spec.scales), "flip": bool(j.spec.flip), "folder": str(j.folder)}
                 for j in jobs}})
    print(f"[ibnnet] {total} predictions written, {sum(len(j.dataset.raw.samples) for j in jobs) - total} kept; "
          f"{', '.join(str(j.folder) for j in jobs)}")
    return 0


def run(args) -> int:
    return cmd_predict(args)
