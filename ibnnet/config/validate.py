"""Range and choice checks the type system cannot express."""
from __future__ import annotations

import difflib
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

TASKS = ("classification", "segmentation")
SCHEDULES = ("step", "cosine", "poly", "constant")
OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "64-true")
# Whole-model half precision: no fp32 master weights (an SGD update of lr x grad, ~1e-4 of a weight, rounds
# away in bf16's 8-bit mantissa) and BN/SN running statistics and SN's importance weights kept in half precision.
HALF_TRUE = ("bf16-true", "16-true")
WANDB_MODES = ("auto", "online", "offline", "disabled")
LAUNCHERS = ("local", "slurm")
SEG_HEADS = ("fcn", "aspp", "deeplabv2")
EVAL_MODES = ("whole", "slide")
# IBN Table 1 (unclipped float, default) and the uint8 rounded+clipped variants; see ibnnet/data/transforms/appearance.py
APPEARANCES = ("none", "rgb+50", "r+50", "std1.5", "rgb+50_clip", "r+50_clip", "std1.5_clip")

Problem = tuple[str, Any, str]

# An experiment's name becomes folder names (runs, results, _slurm) and the SLURM job's name: nothing that a shell,
# sbatch's filename patterns (%) or a path (/, ..) would read as more than a name. sanitize() leaves it unchanged.
_EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,78}[A-Za-z0-9_])?")


def experiment_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an experiment, or None."""
    if _EXPERIMENT_NAME.fullmatch(name):
        return None
    return ("an experiment name may have only letters, digits, '_', '-' and '.', begin with a letter or digit, "
            "not end with '-' or '.', and be at most 80 characters long (it names folders and the SLURM job)")


def dataset_label(spec: DictConfig) -> str:
    base = spec.dataset.replace("builtin_", "")
    part = spec.domain if spec.dataset.startswith("builtin") else spec.split
    label = f"{base}_{part}"
    return label if spec.appearance == "none" else f"{label}_{spec.appearance}"


# The official SN code's ITER_COMPUTE_BATCH_AVEARGE: training batches averaged for batch-average inference.
SN_BATCH_AVERAGE_BATCHES = 200
# trainer.best_metric: the metrics of the first evaluation set a run's best epoch may be chosen by.
BEST_METRICS = {"classification": ("top1_err", "top5_err", "top1_acc", "top5_acc"),
                "segmentation": ("miou", "pixel_acc")}


def best_metric(cfg: DictConfig) -> tuple[str, str]:
    """(metric of the first evaluation set, min | max) that chooses a run's best epoch (trainer.best_metric)."""
    # select: the config of a task restored from a checkpoint written before the key existed lacks it
    metric = OmegaConf.select(cfg, "trainer.best_metric", default=None) or (
        "top1_err" if cfg.task == "classification" else "miou")
    return metric, ("min" if metric.endswith("_err") else "max")


def needs_batch_average(cfg: DictConfig) -> bool:
    """A trained SN model with a BN branch: SN sec. 3 "Inference": "When applying SN in test, BN uses batch
    average after training without computing moving average". An evaluation-only run scores its weights with
    the statistics they hold; without a BN branch (``sn_using_bn: false``) there is nothing to estimate."""
    from ..layers import canonical_norm
    from ..models import MODELS
    from .emulation import effective_norm

    if cfg.model.name not in MODELS:   # validate() names the unknown model
        return False
    try:
        norm = canonical_norm(effective_norm(cfg.model))
    except (ValueError, KeyError):   # validate() names the unknown norm
        return False
    trains = cfg.trainer.max_epochs > 0 or (cfg.trainer.max_steps or 0) > 0
    return norm == "sn" and bool(cfg.model.sn_using_bn) and trains


def fill_defaults(cfg: DictConfig) -> None:
    """Values derived from others: eval-set names, the eval batch size, SN's batch-average inference."""
    if cfg.trainer.batch_average_batches is None:
        cfg.trainer.batch_average_batches = SN_BATCH_AVERAGE_BATCHES if needs_batch_average(cfg) else 0
    for spec in cfg.data.val:
        if not spec.name:
            spec.name = dataset_label(spec)
    if not cfg.data.train.name:
        cfg.data.train.name = dataset_label(cfg.data.train)
    if cfg.data.eval_batch_size == 0:
        cfg.data.eval_batch_size = cfg.data.batch_size


def validate(cfg: DictConfig) -> list[Problem]:
    from ..data.registry import DATASETS
    from ..layers import NORM_KINDS, canonical_norm
    from ..models import MODELS, canonical_ibn

    out: list[Problem] = []

    def check(ok: bool, key: str, value: Any, msg: str) -> None:
        if not ok:
            out.append((key, value, msg))

    def choice(key: str, value: Any, options) -> None:
        if value not in options:
            close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            out.append((key, value, f"must be one of {', '.join(map(str, options))}{hint}"))

    choice("task", cfg.task, TASKS)
    problem = experiment_name_problem(str(cfg.experiment))
    check(problem is None, "experiment", cfg.experiment, problem or "")
    m = cfg.model
    choice("model.name", m.name, sorted(MODELS))
    if m.ibn is not None:
        try:
            canonical_ibn(m.ibn)
        except ValueError as e:
            out.append(("model.ibn", m.ibn, str(e)))
    if m.norm is not None:
        try:
            canonical_norm(m.norm)
        except ValueError:
            choice("model.norm", m.norm, NORM_KINDS)
    if m.in_ratio is not None:
        r = m.in_ratio
        check(r == "full" or (isinstance(r, (int, float)) and 0 <= r <= 1), "model.in_ratio", r,
              "must be a number in [0, 1] or 'full'")
    if m.ibn_groups is not None:
        check(all(g in (1, 2, 3, 4) for g in m.ibn_groups), "model.ibn_groups", list(m.ibn_groups),
              "must list residual groups among 1, 2, 3, 4")
    check(m.gn_groups >= 1, "model.gn_groups", m.gn_groups, "must be >= 1")
    check(m.ghost_batch_size >= 0, "model.ghost_batch_size", m.ghost_batch_size, "must be >= 0")
    check(0 <= m.sn_momentum <= 1, "model.sn_momentum", m.sn_momentum, "must be in [0, 1]")
    if m.drop_rate is not None:
        check(0 <= m.drop_rate < 1, "model.drop_rate", m.drop_rate, "must be in [0, 1)")

    d = cfg.data
    specs = [("data.train", d.train)] + [(f"data.val[{i}]", s) for i, s in enumerate(d.val)]
    for key, spec in specs:
        choice(f"{key}.dataset", spec.dataset, sorted(DATASETS))
        check(0 < spec.fraction <= 1, f"{key}.fraction", spec.fraction, "must be in (0, 1]")
        check(spec.num_samples >= 0, f"{key}.num_samples", spec.num_samples, "must be >= 0")
        choice(f"{key}.appearance", spec.appearance, APPEARANCES)
        choice(f"{key}.domain", spec.domain, ("synthetic", "real"))
        check(len(spec.scales) >= 1 and all(x > 0 for x in spec.scales), f"{key}.scales", list(spec.scales),
              "must be a non-empty list of positive scales")
        if cfg.task == "classification":
            check(list(spec.scales) == [1.0] and not spec.flip, f"{key}.scales", list(spec.scales),
                  "multi-scale/flip testing is for segmentation")
            check(spec.sizes is None, f"{key}.sizes", spec.sizes, "test input sizes are for segmentation")
        if spec.sizes is not None:
            check(len(spec.sizes) >= 1 and all(s >= 8 for s in spec.sizes), f"{key}.sizes", list(spec.sizes),
                  "must be a non-empty list of input sizes >= 8 (the image is resized to s x s)")
            check(list(spec.scales) == [1.0], f"{key}.sizes", list(spec.sizes),
                  f"replaces `scales` (given: {list(spec.scales)}); give one of the two")
        if spec.corruptions is not None or spec.severities is not None:
            from ..data.datasets.robustness import ALL_CORRUPTIONS, SEVERITIES
            check(spec.dataset == "imagenet_c", f"{key}.corruptions", spec.dataset, "are for dataset imagenet_c")
            for c in spec.corruptions or []:   # the 15 of the mCE and the 4 extras (reported apart)
                choice(f"{key}.corruptions", c, ALL_CORRUPTIONS)
            cs = list(spec.corruptions or [])
            check(len(set(cs)) == len(cs), f"{key}.corruptions", cs, "lists a corruption twice")
            for s in spec.severities or []:
                choice(f"{key}.severities", s, SEVERITIES)
        if spec.resize is not None:
            check(len(spec.resize) == 2 and all(v > 0 for v in spec.resize), f"{key}.resize", list(spec.resize),
                  "must be [width, height] > 0")
    for key, spec in specs:
        check(bool(re.fullmatch(r"[A-Za-z0-9_.+=-]+", spec.name)), f"{key}.name", spec.name,
              "must be letters, digits and _ . + = - (it names metrics and files)")
    names = [s.name for s in d.val]
    dupes = sorted({n for n in names if names.count(n) > 1})
    check(not dupes, "data.val", names, f"evaluation sets need distinct names (repeated: {dupes})")
    check(d.batch_size >= 1, "data.batch_size", d.batch_size, "must be >= 1")
    check(d.eval_batch_size >= 0, "data.eval_batch_size", d.eval_batch_size, "must be >= 0")
    check(d.num_workers >= 0, "data.num_workers", d.num_workers, "must be >= 0")
    check(d.num_classes >= 0, "data.num_classes", d.num_classes, "must be >= 0")
    check(d.class_subset >= 0, "data.class_subset", d.class_subset, "must be >= 0")
    a = d.augment
    check(a.image_size >= 8, "data.augment.image_size", a.image_size, "must be >= 8")
    check(a.eval_resize >= a.image_size, "data.augment.eval_resize", a.eval_resize, "must be >= image_size")
    check(a.pca_lighting >= 0, "data.augment.pca_lighting", a.pca_lighting, "must be >= 0 (0 = off)")
    check(len(a.crop_size) == 2 and min(a.crop_size) >= 8, "data.augment.crop_size", list(a.crop_size),
          "must be [height, width], each >= 8")
    for key, rng in (("scale_range", a.scale_range), ("aspect_range", a.aspect_range)):
        check(len(rng) == 2 and 0 < rng[0] <= rng[1], f"data.augment.{key}", list(rng), "must be [low, high], 0 < low <= high")

    o = cfg.optim
    choice("optim.name", o.name, OPTIMIZERS)
    if o.lr is not None:
        check(o.lr > 0, "optim.lr", o.lr, "must be > 0")
    check(o.base_lr > 0, "optim.base_lr", o.base_lr, "must be > 0")
    check(o.base_batch >= 1, "optim.base_batch", o.base_batch, "must be >= 1")
    check(0 <= o.momentum < 1, "optim.momentum", o.momentum, "must be in [0, 1)")
    check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    choice("optim.schedule", o.schedule, SCHEDULES)
    ms = list(o.milestones)
    check(all(x > 0 for x in ms) and ms == sorted(ms), "optim.milestones", ms, "must be increasing positive epochs")
    check(0 < o.gamma <= 1, "optim.gamma", o.gamma, "must be in (0, 1]")
    check(o.warmup_epochs >= 0, "optim.warmup_epochs", o.warmup_epochs, "must be >= 0")
    check(o.poly_power > 0, "optim.poly_power", o.poly_power, "must be > 0")
    check(o.backbone_lr_mult > 0, "optim.backbone_lr_mult", o.backbone_lr_mult, "must be > 0")

    s = cfg.segmentation
    choice("segmentation.head", s.head, SEG_HEADS)
    check(s.aux_weight >= 0, "segmentation.aux_weight", s.aux_weight, "must be >= 0")
    choice("segmentation.output_stride", s.output_stride, (8, 16, 32))
    choice("segmentation.eval_mode", s.eval_mode, EVAL_MODES)
    for key in ("slide_crop", "slide_stride"):
        v = list(s[key])
        check(len(v) == 2 and min(v) >= 1, f"segmentation.{key}", v, "must be [height, width] >= 1")

    t = cfg.trainer
    check(t.max_epochs >= 0, "trainer.max_epochs", t.max_epochs, "must be >= 1, or 0 to only evaluate")
    if t.max_epochs == 0 and t.max_steps <= 0:   # evaluation only: the starting weights are what is scored
        check(bool(m.pretrained or m.pretrained_file), "trainer.max_epochs", 0,
              "evaluates the starting weights only: set model.pretrained=true or model.pretrained_file")
        check(len(d.val) > 0, "trainer.max_epochs", 0, "evaluates only, but data.val has no evaluation sets")
    check(t.devices == "auto" or (isinstance(t.devices, int) and t.devices >= 1), "trainer.devices", t.devices,
          "must be a positive integer or 'auto'")
    check(t.num_nodes >= 1, "trainer.num_nodes", t.num_nodes, "must be >= 1")
    if t.physical_devices:
        logical = t.devices if isinstance(t.devices, int) else 0
        check(0 < t.physical_devices <= logical and logical % t.physical_devices == 0, "trainer.physical_devices",
              t.physical_devices, f"must divide trainer.devices={t.devices}")
        check(m.norm != "syncbn", "trainer.physical_devices", t.physical_devices,
              "cannot emulate SyncBN statistics; use norm bn (ghost batches) or run on real devices")
    if str(t.precision) in HALF_TRUE:
        out.append(("trainer.precision", str(t.precision),
                    "trains without fp32 master weights (small updates round away) and keeps BN/SN running "
                    "statistics and SN weights in half precision; use bf16-mixed or 16-mixed"))
    else:
        choice("trainer.precision", str(t.precision), PRECISIONS)
    check(t.check_val_every_n_epoch >= 1, "trainer.check_val_every_n_epoch", t.check_val_every_n_epoch, "must be >= 1")
    check(t.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches", t.accumulate_grad_batches, "must be >= 1")
    check(t.num_threads >= 0, "trainer.num_threads", t.num_threads, "must be >= 0 (0 = PyTorch's default)")
    choice("trainer.float32_matmul_precision", t.float32_matmul_precision, ("highest", "high", "medium"))
    check(t.batch_average_batches >= 0, "trainer.batch_average_batches", t.batch_average_batches, "must be >= 0")
    if t.best_metric is not None and cfg.task in BEST_METRICS:
        choice("trainer.best_metric", t.best_metric, BEST_METRICS[cfg.task])
    for key in ("limit_train_batches", "limit_val_batches"):
        v = t[key]
        check(v is None or v > 0, f"trainer.{key}", v, "must be > 0 (a fraction or a number of batches)")

    choice("logger.wandb.mode", cfg.logger.wandb.mode, WANDB_MODES)
    choice("logger.wandb.checkpoints", cfg.logger.wandb.checkpoints, ("none", "reference"))
    choice("launcher.name", cfg.launcher.name, LAUNCHERS)
    check(cfg.launcher.heartbeat_s > 0, "launcher.heartbeat_s", cfg.launcher.heartbeat_s, "must be > 0")
    check(cfg.launcher.claim_timeout_s > 2 * cfg.launcher.heartbeat_s, "launcher.claim_timeout_s",
          cfg.launcher.claim_timeout_s, "must be more than twice launcher.heartbeat_s")
    sl = cfg.launcher.slurm
    check(sl.cpus_per_task >= 1, "launcher.slurm.cpus_per_task", sl.cpus_per_task, "must be >= 1")
    for key in ("gpus_per_node", "array_parallelism", "signal_seconds", "max_requeues"):
        check(sl[key] is None or sl[key] >= 0, f"launcher.slurm.{key}", sl[key], "must be >= 0")
    if cfg.launcher.name == "slurm":
        check(isinstance(t.devices, int), "trainer.devices", t.devices,
              "must be a number under SLURM (one task per device, --ntasks-per-node)")
        if sl.gpus_per_node and isinstance(t.devices, int):
            procs = t.physical_devices or t.devices
            check(sl.gpus_per_node == procs, "launcher.slurm.gpus_per_node", sl.gpus_per_node,
                  f"must equal the processes per node, {procs} (trainer.physical_devices or trainer.devices)")
    return out
