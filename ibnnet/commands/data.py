"""ibnnet data check | analyze divergence | evaluate."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config.loader import ConfigError, load_yaml
from ..config.schema import PathsConfig


def add_data_commands(sub) -> None:
    p = sub.add_parser("data", help="dataset utilities")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    c = dsub.add_parser("check", help="validate a dataset folder and say what to fix",
                        description="Counts per split, missing labels, image/label size mismatches, label values "
                                    "outside the known ids; exits 1 if there are problems.")
    c.add_argument("name", choices=("imagenet", "cityscapes", "gta5"))
    c.add_argument("root")
    c.add_argument("--no-label-values", action="store_true", help="skip decoding labels (faster)")

    p = sub.add_parser("analyze", help="analyses of trained models")
    asub = p.add_subparsers(dest="analyze_command", required=True, metavar="ANALYSIS")
    d = asub.add_parser("divergence", help="IBN sec. 4.3 / Fig. 5: feature divergence between two image sets",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Symmetric KL divergence of per-channel feature statistics at the 17 ReLU "
                                    "outputs of ResNet-50's main path, between two image sets.\n\n"
                                    "  ibnnet analyze divergence experiments/ibn_fig5.yaml            # the figure\n"
                                    "  ibnnet analyze divergence --set-a DIR --set-b DIR:500-999 \\\n"
                                    "      --model ResNet50=resnet50_bn --model IBN-b=resnet50_ibn_b@my.pth")
    d.add_argument("experiment", nargs="?", help="an analysis file (e.g. experiments/ibn_fig5.yaml)")
    d.add_argument("--pair", action="append", help="only these pairs of the analysis file")
    d.add_argument("--set-a", help="image folder, or DIR:LO-HI for a class-folder range")
    d.add_argument("--set-b", help="image folder, or DIR:LO-HI")
    d.add_argument("--model", action="append", metavar="[LABEL=]NAME[@WEIGHTS]",
                   help="model to analyse (official weights unless @WEIGHTS or --no-pretrained)")
    d.add_argument("--no-pretrained", action="store_true", help="random weights (for testing the pipeline)")
    d.add_argument("--max-images", type=int, default=0, help="seeded subset of each set (0 = all)")
    d.add_argument("--image-size", type=int, default=224)
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--num-workers", type=int, default=4)
    d.add_argument("--device", default=None, help="default: cuda if available")
    d.add_argument("--out", help="output folder (default: results/<experiment or 'divergence'>)")
    d.add_argument("--title", default="Feature divergence")
    from .figures import add_sn_weights_parser
    add_sn_weights_parser(asub)

    e = sub.add_parser("evaluate", help="evaluate one checkpoint on every eval set and appearance transform",
                       description="IBN Table 1 in one command: the config's evaluation sets, each also under "
                                   "the appearance transforms (RGB+50, R+50, std x1.5) and an optional styled "
                                   "copy (Monet/CycleGAN folder), one row per transform.")
    e.add_argument("config", help="run config (e.g. configs/imagenet.yaml or a run's config.yaml)")
    e.add_argument("--checkpoint", help="weights file or Lightning checkpoint; default: the config's pretrained")
    e.add_argument("--appearance", default="none,rgb+50,r+50,std1.5",
                   help="comma-separated transforms (default: all of Table 1's)")
    e.add_argument("--styled", metavar="DIR", help="a styled copy of the eval set in class folders (DIR/<split>/...)")
    e.add_argument("--out", help="folder for evaluation.json/.md (default: results/evaluate/<model>)")
    e.add_argument("--devices", type=int, default=1, help="processes (GPUs, or CPU processes with gloo) under DDP")
    e.add_argument("overrides", nargs="*", help="config overrides as key=value")


def run(args) -> int:
    if args.command == "data":
        return cmd_data_check(args)
    if args.command == "analyze":
        return cmd_divergence(args)
    return cmd_evaluate(args)


def cmd_data_check(args) -> int:
    from ..data.check import check_dataset
    report = check_dataset(args.name, args.root, check_label_values=not args.no_label_values)
    print(report.render())
    return 0 if report.ok else 1


def _parse_model(spec: str) -> tuple[str, str, str | None]:
    label, _, rest = spec.rpartition("=")
    name, _, weights = rest.partition("@")
    return (label or name), name, (weights or None)


def _load_models(specs: list[str], pretrained: bool):
    import timm

    from ..models import MODELS, load_weights, releases_for
    models = {}
    for spec in specs:
        label, name, weights = _parse_model(spec)
        if name not in MODELS:
            raise ConfigError(f"--model {spec}: unknown model {name!r}")
        if weights:
            model = timm.create_model(name)
            load_weights(model, weights)
        else:
            use = pretrained and bool(releases_for(name))
            if pretrained and not use:
                raise ConfigError(f"--model {spec}: {name} has no official weights; give NAME@WEIGHTS")
            model = timm.create_model(name, pretrained=use)
        models[label] = model.eval()
    return models


def cmd_divergence(args) -> int:
    import torch
    from omegaconf import OmegaConf

    from ..analysis.divergence import ImageSet, divergence_report, parse_image_set, run_divergence
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    jobs = []  # (name, set_a, set_b, models, max_images, title)
    if args.experiment:
        path = Path(args.experiment)
        if not path.is_file():
            from ..launch.grid import EXPERIMENTS_DIR
            path = EXPERIMENTS_DIR / f"{args.experiment}.yaml"
        # paths.* resolve as in run configs (IBNNET_DATA, IBNNET_RUNS), so pairs can say ${paths.data}/...
        raw = OmegaConf.merge({"paths": OmegaConf.structured(PathsConfig)}, load_yaml(path))
        data = OmegaConf.to_container(raw, resolve=True)
        unknown = set(data) - {"analysis", "title", "models", "pairs", "image_size", "batch_size", "paths", "notes"}
        if data.get("analysis") != "divergence" or unknown:
            raise ConfigError(f"{path}: not a divergence analysis file (analysis: divergence; unknown keys "
                              f"{sorted(unknown)})")
        specs = args.model or [f"{k}={v}" for k, v in data["models"].items()]
        models = _load_models(specs, not args.no_pretrained)
        out_root = Path(args.out or Path(data["paths"]["results"]) / path.stem)
        for name, pair in data["pairs"].items():
            if args.pair and name not in args.pair:
                continue
            jobs.append((name, pair["a"], pair["b"], pair.get("max_images", args.max_images),
                         f"{data.get('title', 'Feature divergence')}: {pair.get('label', name)}", out_root / name))
        size = data.get("image_size", args.image_size)
    else:
        if not (args.set_a and args.set_b and args.model):
            raise ConfigError("give an analysis file, or --set-a, --set-b and at least one --model")
        models = _load_models(args.model, not args.no_pretrained)
        jobs.append(("divergence", args.set_a, args.set_b, args.max_images, args.title,
                     Path(args.out or "results/divergence")))
        size = args.image_size
    for name, a, b, max_images, title, out in jobs:
        sets = []
        for spec in (a, b):
            root, classes = parse_image_set(spec)
            sets.append(ImageSet(root, image_size=size, max_images=max_images, classes=classes,
                                 resize_size=int(size * 256 / 224)))
        print(f"[ibnnet] {name}: {len(sets[0])} vs {len(sets[1])} images, {len(models)} models on {device}")
        layers, results = run_divergence(models, sets[0], sets[1], batch_size=args.batch_size, device=device,
                                         num_workers=args.num_workers)
        paths = divergence_report(results, layers, out, title)
        print(paths["md"].read_text())
        print(f"[ibnnet] written: {', '.join(str(p) for p in paths.values())}")
    return 0


def cmd_evaluate(args) -> int:
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from ..config import compose
    from ..config.loader import Source
    from ..data.appearance import APPEARANCES
    from ..data.datamodule import DataModule
    from ..launch.files import atomic_write_json, atomic_write_text
    from ..models import load_weights
    from ..tasks import TASKS

    kinds = [k.strip() for k in args.appearance.split(",") if k.strip()]
    bad = [k for k in kinds if k not in APPEARANCES]
    if bad:
        raise ConfigError(f"--appearance: unknown transform(s) {bad}; choose from {', '.join(APPEARANCES)}")
    base = compose(args.config, args.overrides)
    if not base.data.val:
        raise ConfigError(f"{args.config}: no evaluation sets (data.val) to evaluate on")
    val = []
    for spec in OmegaConf.to_container(base.data.val):
        for kind in kinds:
            val.append(dict(spec, appearance=kind, name=spec["name"] if kind == "none" else f"{spec['name']}_{kind}"))
    if args.styled:
        first = OmegaConf.to_container(base.data.val)[0]
        val.append(dict(first, name="styled", dataset="image_folder", root=args.styled, appearance="none"))
    extra = [Source("evaluate", OmegaConf.create({"data": {"val": val}}))]
    cfg = compose(args.config, args.overrides, extra=extra)
    dm = DataModule(cfg)
    task = TASKS[cfg.task](OmegaConf.to_container(cfg, resolve=True), cfg.data.num_classes or dm.num_classes,
                           dm.val_names)
    if args.checkpoint:
        load_weights(task.network, args.checkpoint)
    trainer = pl.Trainer(accelerator=cfg.trainer.accelerator, devices=args.devices,
                         strategy="ddp" if args.devices > 1 else "auto", precision=cfg.trainer.precision,
                         logger=False, enable_progress_bar=cfg.trainer.enable_progress_bar,
                         limit_val_batches=cfg.trainer.limit_val_batches, use_distributed_sampler=False)
    trainer.validate(task, datamodule=dm, verbose=False)
    if not trainer.is_global_zero:
        return 0
    results = task.last_val
    metrics = ("top1_err", "top5_err") if cfg.task == "classification" else ("miou", "pixel_acc")
    lines = [f"# Evaluation of {args.checkpoint or cfg.model.name}", "",
             "| eval set | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, values in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[m]:.2f}" for m in metrics) + " |")
    table = "\n".join(lines) + "\n"
    out = Path(args.out or Path(cfg.paths.results) / "evaluate" / cfg.model.name)
    atomic_write_text(out / "evaluation.md", table)
    atomic_write_json(out / "evaluation.json", {"checkpoint": args.checkpoint, "model": cfg.model.name,
                                                "world_size": trainer.world_size, "results": results})
    print(table)
    print(f"[ibnnet] written: {out / 'evaluation.md'}, {out / 'evaluation.json'}", file=sys.stderr)
    return 0
