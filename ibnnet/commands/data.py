"""ibnnet data check | data stylize | data shrink | analyze divergence | evaluate."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..config.loader import ConfigError, load_yaml
from ..config.schema import PathsConfig
from ..progress import add_progress_option, progress_enabled


def add_data_commands(sub) -> None:
    p = sub.add_parser("data", help="dataset utilities")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    c = dsub.add_parser("check", help="validate a dataset folder and say what to fix",
                        description="Counts per split, missing labels, image/label size mismatches, label values "
                                    "outside the known ids; exits 1 if there are problems.")
    c.add_argument("name", choices=("imagenet", "cityscapes", "gta5"))
    c.add_argument("root")
    c.add_argument("--no-label-values", action="store_true", help="skip decoding labels (faster)")
    add_progress_option(c)
    st = dsub.add_parser("stylize", help="IBN Tables 1/3 'Monet' set: a class-folder image set through CycleGAN",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Translate every image of SRC/<class>/<image> with CycleGAN's photo->Monet "
                                     "generator (Zhu et al. 2017; IBN sec. 4.1: \"style transform, which is "
                                     "realized using CycleGAN\") and write DST/<class>/<image> with the same "
                                     "names and sizes. Resumable: files already in DST are skipped.\n\n"
                                     "  ibnnet data stylize $IBNNET_DATA/imagenet/val $IBNNET_DATA/imagenet_monet/val")
    st.add_argument("src", help="class-folder image set, e.g. ImageNet val sorted into <wnid>/ folders")
    st.add_argument("dst", help="output folder (created); same class folders and file names as SRC")
    st.add_argument("--weights", help="generator file (official latest_net_G.pth format); default: download "
                                      "style_monet.pth from the CycleGAN authors' server once and cache it")
    st.add_argument("--batch-size", type=int, default=8, help="images per step (same-size images share a forward)")
    st.add_argument("--device", default=None, help="default: cuda if available")
    st.add_argument("--quality", type=int, default=95, help="JPEG quality of .jpeg/.jpg outputs")
    add_progress_option(st)
    k = dsub.add_parser("shrink", help="reduced-resolution copy of ImageNet for low-res training (FFCV-style)",
                        description="Copy SRC/{train,val}/<wnid>/* to DST at short side N (aspect kept), re-encoded "
                                    "as JPEG; resumable (done files are skipped), parallel, with a progress bar. "
                                    "Runs with data.shrunk_short_side=N (the reduced ImageNet scales: 160) train "
                                    "on SRC-N when it is complete. What changes in the data: data/README.md.")
    k.add_argument("name", choices=("imagenet",))
    k.add_argument("src", help="ImageNet root (with train/ and/or val/ class folders)")
    k.add_argument("dst", nargs="?", help="destination (default: SRC-N, where the training runs look)")
    k.add_argument("--short-side", type=int, required=True, metavar="N", help="shorter side in pixels (e.g. 160)")
    k.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images (default 90)")
    k.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all CPUs)")
    k.add_argument("--split", action="append", choices=("train", "val"),
                   help="only this split (repeatable; default: every split present)")
    add_progress_option(k)

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
    add_progress_option(d)
    from .figures import add_sn_weights_parser
    add_sn_weights_parser(asub)

    e = sub.add_parser("evaluate", help="evaluate one checkpoint on every eval set and appearance transform",
                       description="IBN Table 1 in one command: the config's evaluation sets, each also under "
                                   "the appearance transforms (RGB+50, R+50, std x1.5) and an optional styled "
                                   "copy (Monet/CycleGAN folder), one row per transform.")
    e.add_argument("config", help="run config (e.g. configs/imagenet.yaml or a run's config.yaml)")
    e.add_argument("--checkpoint", help="weights file or Lightning checkpoint; default: the config's pretrained")
    e.add_argument("--appearance", default="none,rgb+50,r+50,std1.5",
                   help="comma-separated transforms (default: all of Table 1's, unclipped float; "
                        "rgb+50_clip, r+50_clip, std1.5_clip: the uint8 rounded and clipped variants)")
    e.add_argument("--styled", metavar="DIR", help="a styled copy of the eval set in class folders (DIR/<split>/...)")
    e.add_argument("--out", help="folder for evaluation.json/.md (default: results/evaluate/<model>)")
    e.add_argument("--devices", type=int, default=1, help="processes (GPUs, or CPU processes with gloo) under DDP")
    add_progress_option(e)
    e.add_argument("overrides", nargs="*", help="config overrides as key=value")


def run(args) -> int:
    if args.command == "data":
        handlers = {"stylize": cmd_stylize, "shrink": cmd_data_shrink}
        return handlers.get(args.data_command, cmd_data_check)(args)
    if args.command == "analyze":
        return cmd_divergence(args)
    return cmd_evaluate(args)


def cmd_data_check(args) -> int:
    from ..data.check import check_dataset
    report = check_dataset(args.name, args.root, check_label_values=not args.no_label_values,
                           progress=progress_enabled(args.progress))
    print(report.render())
    return 0 if report.ok else 1


def cmd_stylize(args) -> int:
    import torch

    from ..data.stylize import download_style_monet, load_generator, stylize_folder
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 1 <= args.quality <= 100:
        raise ConfigError(f"--quality must be in 1..100, got {args.quality}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    progress = progress_enabled(args.progress)
    weights = args.weights or download_style_monet(progress=progress)
    generator = load_generator(weights)
    counts = stylize_folder(generator, args.src, args.dst, batch_size=args.batch_size, device=device,
                            progress=progress, quality=args.quality)
    print(f"[ibnnet] {args.dst}: {counts['written']} images written, {counts['skipped']} already there, "
          f"{counts['classes']} class folders (weights {weights})")
    return 0


def cmd_data_shrink(args) -> int:
    from ..data.shrink import MARKER, shrink_imagenet
    src = Path(args.src)
    dst = Path(args.dst) if args.dst else src.with_name(f"{src.name}-{args.short_side}")
    if dst.name != f"{src.name}-{args.short_side}":
        print(f"[ibnnet] note: training runs look for the copy at {src.name}-{args.short_side} beside {src.name}; "
              f"{dst} is used only if you pass it as the dataset root", file=sys.stderr)
    results = shrink_imagenet(src, dst, args.short_side, quality=args.quality, workers=args.workers,
                              splits=tuple(args.split) if args.split else None,
                              progress=progress_enabled(args.progress))
    failed = 0
    for split, r in results.items():
        print(f"[ibnnet] {split}: {r.written} resized, {r.copied} copied (already small), {r.skipped} done before, "
              f"{len(r.failed)} failed, {r.seconds:.0f} s")
        for path, err in r.failed[:10]:
            print(f"  failed: {path}: {err}", file=sys.stderr)
        failed += len(r.failed)
    if failed:
        print(f"[ibnnet] {failed} images failed: those splits stay marked incomplete in {dst / MARKER}; "
              f"fix or remove the files and run the command again", file=sys.stderr)
        return 1
    print(f"[ibnnet] {dst}: short side {args.short_side}, JPEG quality {args.quality}, complete")
    return 0


def _download_progress(enabled: bool) -> None:
    """A progress bar for the weight files timm downloads (pretrained=True), like every other bar here."""
    from timm.models import set_pretrained_download_progress
    set_pretrained_download_progress(enabled)


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
    progress = progress_enabled(args.progress)
    _download_progress(progress)
    jobs = []  # (name, set_a, set_b, models, max_images, title)
    if args.experiment:
        from ..launch.grid import resolve_experiment_path
        path = resolve_experiment_path(args.experiment)
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
                                         num_workers=args.num_workers, progress=progress)
        paths = divergence_report(results, layers, out, title)
        print(paths["md"].read_text())
        print(f"[ibnnet] written: {', '.join(str(p) for p in paths.values())}")
    return 0


def styled_eval_spec(cfg, styled_root: str) -> dict:
    """The evaluation set of a styled copy of ``cfg``'s first evaluation set (``evaluate --styled``)."""
    from omegaconf import OmegaConf

    from ..data.registry import dataset_root
    first = OmegaConf.to_container(cfg.data.val)[0]
    # Labels by folder name from the real evaluation set, so missing styled classes shift nothing.
    ref = dataset_root(cfg.data.val[0], cfg.paths.data)
    return dict(first, name="styled", dataset="image_folder", root=styled_root, appearance="none",
                classes_root=str(ref / first["split"]) if ref is not None else None)


def cmd_evaluate(args) -> int:
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from ..config import compose
    from ..config.loader import Source
    from ..data.appearance import ALL_APPEARANCES
    from ..data.datamodule import DataModule
    from ..launch.files import atomic_write_json, atomic_write_text
    from ..models import load_weights
    from ..tasks import TASKS

    kinds = [k.strip() for k in args.appearance.split(",") if k.strip()]
    bad = [k for k in kinds if k not in ALL_APPEARANCES]
    if bad:
        raise ConfigError(f"--appearance: unknown transform(s) {bad}; choose from {', '.join(ALL_APPEARANCES)}")
    base = compose(args.config, args.overrides)
    if not base.data.val:
        raise ConfigError(f"{args.config}: no evaluation sets (data.val) to evaluate on")
    val = []
    for spec in OmegaConf.to_container(base.data.val):
        for kind in kinds:
            val.append(dict(spec, appearance=kind, name=spec["name"] if kind == "none" else f"{spec['name']}_{kind}"))
    if args.styled:
        val.append(styled_eval_spec(base, args.styled))
    extra = [Source("evaluate", OmegaConf.create({"data": {"val": val}}))]
    cfg = compose(args.config, args.overrides, extra=extra)
    progress = progress_enabled(args.progress, default=cfg.trainer.enable_progress_bar)
    _download_progress(progress)
    dm = DataModule(cfg)
    task = TASKS[cfg.task](OmegaConf.to_container(cfg, resolve=True), cfg.data.num_classes or dm.num_classes,
                           dm.val_names)
    if args.checkpoint:
        load_weights(task.network, args.checkpoint)
    else:   # no checkpoint: the configured starting weights (e.g. the official release) are evaluated
        task.load_initial_weights()
    trainer = pl.Trainer(accelerator=cfg.trainer.accelerator, devices=args.devices,
                         strategy="ddp" if args.devices > 1 else "auto", precision=cfg.trainer.precision,
                         logger=False, enable_progress_bar=progress,
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
