"""ibnnet evaluate: one checkpoint on every evaluation set, under each appearance transform (IBN Table 1)."""
from __future__ import annotations

import sys
from pathlib import Path

from ..config.loader import ConfigError
from ..progress import add_progress_option, progress_enabled
from .common import download_progress


def add_evaluate_command(sub) -> None:
    e = sub.add_parser("evaluate", help="evaluate one checkpoint on every eval set and appearance transform",
                       description="IBN Table 1 in one command: the config's evaluation sets, each also under "
                                   "the appearance transforms (RGB+50, R+50, std x1.5) and an optional styled "
                                   "copy (Monet/CycleGAN folder), one row per transform.")
    e.add_argument("config", help="run config (e.g. configs/imagenet.yaml or a run's config.yaml)")
    e.add_argument("--checkpoint", help="a run's checkpoint (loaded strictly into the model its config builds) or "
                                        "a weights file; default for a run folder's config.yaml: the checkpoint "
                                        "its experiment's table reports (last.ckpt, or best.ckpt for table.select: "
                                        "best), else the config's starting weights")
    e.add_argument("--appearance", default="none,rgb+50,r+50,std1.5",
                   help="comma-separated transforms (default: all of Table 1's, unclipped float; "
                        "rgb+50_clip, r+50_clip, std1.5_clip: the uint8 rounded and clipped variants)")
    e.add_argument("--styled", metavar="DIR", help="a styled copy of the eval set in class folders (DIR/<split>/...)")
    e.add_argument("--out", help="folder for evaluation.json/.md (default: results/evaluate/<model>)")
    e.add_argument("--devices", type=int, default=1, help="processes (GPUs, or CPU processes with gloo) under DDP")
    add_progress_option(e)
    e.add_argument("overrides", nargs="*", help="config overrides as key=value")


def styled_eval_spec(cfg, styled_root: str) -> dict:
    """The evaluation set of a styled copy of ``cfg``'s first evaluation set (``evaluate --styled``)."""
    from omegaconf import OmegaConf

    from ..data.registry import dataset_root
    first = OmegaConf.to_container(cfg.data.val)[0]
    # Labels by folder name from the real evaluation set, so missing styled classes shift nothing.
    ref = dataset_root(cfg.data.val[0], cfg.paths.data)
    return dict(first, name="styled", dataset="image_folder", root=styled_root, appearance="none",
                classes_root=str(ref / first["split"]) if ref is not None else None)


def run(args) -> int:
    from omegaconf import OmegaConf

    from ..config import compose
    from ..config.emulation import physical_config
    from ..config.loader import Source
    from ..data.datamodule import DataModule
    from ..data.transforms.appearance import ALL_APPEARANCES
    from ..files import atomic_write_json, atomic_write_text
    from ..runs.callbacks import BatchAverageStats, evaluate_both_inference_modes
    from ..runs.runner import build_task, fail_fast, load_evaluation_weights, make_trainer
    from .common import reported_checkpoint

    kinds = [k.strip() for k in args.appearance.split(",") if k.strip()]
    bad = [k for k in kinds if k not in ALL_APPEARANCES]
    if bad:
        raise ConfigError(f"--appearance: unknown transform(s) {bad}; choose from {', '.join(ALL_APPEARANCES)}")
    checkpoint = args.checkpoint
    if checkpoint is None:
        reported = reported_checkpoint(args.config, compose(args.config, args.overrides))
        if reported is not None:
            checkpoint = reported[0]
            print(f"[ibnnet] checkpoint {checkpoint}: {reported[1]}", file=sys.stderr)
    # The weights evaluated are the checkpoint's: recorded as the starting weights, which is also what lets an
    # evaluation-only config (trainer.max_epochs: 0, configs/imagenet_robustness.yaml) take a checkpoint.
    weights = ([Source("--checkpoint", OmegaConf.create({"model": {"pretrained": False,
                                                                   "pretrained_file": str(checkpoint)}}))]
               if checkpoint else [])
    base = compose(args.config, args.overrides, extra=weights)
    if not base.data.val:
        raise ConfigError(f"{args.config}: no evaluation sets (data.val) to evaluate on")
    val = []
    for spec in OmegaConf.to_container(base.data.val):
        for kind in kinds:
            val.append(dict(spec, appearance=kind, name=spec["name"] if kind == "none" else f"{spec['name']}_{kind}"))
    if args.styled:
        val.append(styled_eval_spec(base, args.styled))
    extra = weights + [Source("evaluate", OmegaConf.create({"data": {"val": val}}))]
    cfg = compose(args.config, args.overrides, extra=extra)
    progress = progress_enabled(args.progress, default=cfg.trainer.enable_progress_bar)
    download_progress(progress)
    # The run's own config as its processes ran it (ghost batches, if emulating), builder, numerics and Trainer
    # settings (ibnnet/runs/runner.py): a run's checkpoint scores here exactly what the run reported.
    cfg = physical_config(cfg)
    dm = DataModule(cfg)
    task = build_task(cfg, dm.num_classes, dm.val_names)
    if checkpoint:
        load_evaluation_weights(task, checkpoint)
    else:   # no checkpoint: the configured starting weights (e.g. the official release) are evaluated
        task.load_initial_weights()
    k = cfg.trainer.batch_average_batches
    # SN's batch-average inference, as the run's final evaluation did: statistics from K training batches
    callbacks = [BatchAverageStats(k)] if k > 0 else []
    trainer = make_trainer(cfg, devices=args.devices, progress=progress, callbacks=callbacks)
    with fail_fast(trainer):
        trainer.validate(task, datamodule=dm, verbose=False)
        inference = evaluate_both_inference_modes(trainer, task, dm)
    if not trainer.is_global_zero:
        return 0
    results = task.last_val
    metrics = ("top1_err", "top5_err") if cfg.task == "classification" else ("miou", "pixel_acc")
    # ImageNet-C's summary row (ibnnet/data/datasets/robustness.py) also has mCE and relative mCE
    metrics += tuple(m for m in ("mce", "relative_mce") if any(m in v for v in results.values()))
    lines = [f"# Evaluation of {checkpoint or cfg.model.name}", "",
             "| eval set | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, values in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[m]:.2f}" if m in values else "–" for m in metrics) + " |")
    table = "\n".join(lines) + "\n"
    out = Path(args.out or Path(cfg.paths.results) / "evaluate" / cfg.model.name)
    atomic_write_text(out / "evaluation.md", table)
    atomic_write_json(out / "evaluation.json", {"checkpoint": str(checkpoint) if checkpoint else None,
                                                "model": cfg.model.name, "world_size": trainer.world_size,
                                                "results": results, **inference})
    print(table)
    print(f"[ibnnet] written: {out / 'evaluation.md'}, {out / 'evaluation.json'}", file=sys.stderr)
    return 0
