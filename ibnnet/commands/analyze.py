"""ibnnet analyze divergence | analyze sn-weights: IBN Fig. 5 and SN Fig. 4/7 from trained models."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..config.loader import load_yaml
from ..config.schema import PathsConfig
from ..errors import ConfigError, MissingPathError
from ..progress import add_progress_option, progress_bar, progress_enabled
from .common import download_progress, experiment_args, log_figures, results_dir, take_experiment_from_cells

log = logging.getLogger("ibnnet")


def add_analyze_commands(sub) -> None:
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
    d.add_argument("--image-size", type=int, default=224,
                   help="centre crop fed to the models, after a resize to size*256/224 (default 224; an analysis "
                        "file's image_size wins)")
    d.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    d.add_argument("--num-workers", type=int, default=4, help="image-decoding worker processes (default 4)")
    d.add_argument("--device", default=None, help="default: cuda if available")
    d.add_argument("--out", help="output folder (default: results/<experiment or 'divergence'>)")
    d.add_argument("--title", default="Feature divergence", help="figure title without an analysis file")
    add_progress_option(d)
    add_sn_weights_parser(asub)


def add_sn_weights_parser(asub) -> None:
    p = asub.add_parser(
        "sn-weights", help="SN Fig. 4 / Fig. 7 / Fig. 9: importance weights of IN/LN/BN in every SN layer",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Softmax of each SN layer's mean_weight / var_weight. Fig. 4: averaged over the network, "
                    "one group per run (batch setting); Fig. 7: per layer, by residual stage, 3x3-conv, 1x1-conv "
                    "and shortcut layers told apart. Writes network.csv/png, layers.csv, layers_<run>.png. "
                    "Fig. 9 (--by-dataset): the SN models of SN Table 5 by training dataset, datasets.csv/png.\n\n"
                    "  ibnnet analyze sn-weights sn_table2 --cells norm=SN\n"
                    "  ibnnet analyze sn-weights sn_table5 --cells norm=SN --by-dataset --scale full\n"
                    "  ibnnet analyze sn-weights --checkpoint 8x32=a.ckpt --checkpoint 8x2=b.pth\n"
                    "  ibnnet analyze sn-weights sn_vs_ibn_dg --cells model=SN --ibn-placement")
    experiment_args(p, positional_optional=True)
    p.add_argument("--checkpoint", action="append", metavar="[LABEL=]FILE",
                   help="a weight file or Lightning checkpoint instead of (or besides) an experiment's runs")
    p.add_argument("--which", choices=("last", "best"), default="last", help="run checkpoint to read")
    p.add_argument("--by-dataset", action="store_true",
                   help="SN Fig. 9: label each run by the dataset it was trained on (an experiment's runs; a "
                        "--checkpoint by its LABEL) and write datasets.csv/png, the backbone's SN layers per dataset")
    p.add_argument("--ibn-placement", action="store_true",
                   help="also write placement_<run>.csv/png: each SN layer's IN importance beside the IN that "
                        "IBN-a and IBN-b place there (ResNet-50)")
    add_progress_option(p)


def run(args) -> int:
    return cmd_sn_weights(args) if args.analyze_command == "sn-weights" else cmd_divergence(args)


def _parse_model(spec: str) -> tuple[str, str, str | None]:
    label, _, rest = spec.rpartition("=")
    name, _, weights = rest.partition("@")
    return (label or name), name, (weights or None)


def _load_models(specs: list[str], pretrained: bool):
    import timm

    from ..models import MODELS, load_weights, releases_for
    from ..models.weights import read_checkpoint
    from ..runs.runner import is_run_checkpoint, task_from_run_checkpoint
    models = {}
    for spec in specs:
        label, name, weights = _parse_model(spec)
        if name not in MODELS:
            raise ConfigError(f"--model {spec}: unknown model {name!r}")
        if weights and is_run_checkpoint(read_checkpoint(weights, mmap=True)):
            # A run's checkpoint: the model that run trained (its config's in_ratio, norm, classes), loaded strictly.
            task = task_from_run_checkpoint(weights)
            if task.cfg.model.name != name or task.cfg.task != "classification":
                raise ConfigError(f"--model {spec}: {weights} is a checkpoint of a {task.cfg.task} run of "
                                  f"{task.cfg.model.name}, not a classification model {name}")
            model = task.network
        elif weights:
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

    from ..analysis.divergence import (
        ImageSet,
        divergence_report,
        parse_image_set,
        run_divergence,
    )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    progress = progress_enabled(args.progress)
    download_progress(progress)
    jobs = []  # (name, set_a, set_b, models, max_images, title)
    if args.experiment:
        from ..experiments.grid import resolve_experiment_path
        path = resolve_experiment_path(args.experiment)
        # paths.* resolve as in run configs (IBNNET_DATA, IBNNET_RUNS), so pairs can say ${paths.data}/...
        raw = OmegaConf.merge({"paths": OmegaConf.structured(PathsConfig)}, load_yaml(path))
        data = OmegaConf.to_container(raw, resolve=True)
        unknown = set(data) - {"analysis", "title", "models", "pairs", "image_size", "batch_size", "paths", "notes"}
        if data.get("analysis") != "divergence" or unknown:
            raise ConfigError(f"{path}: not a divergence analysis file (analysis: divergence; unknown keys "
                              f"{sorted(unknown)})")
        specs = args.model or [f"{k}={v}" for k, v in data["models"].items()]
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
        specs = args.model
        jobs.append(("divergence", args.set_a, args.set_b, args.max_images, args.title,
                     Path(args.out or "results/divergence")))
        size = args.image_size
    # Every image folder is checked before any weights are loaded (or downloaded: minutes on a slow link).
    image_sets = {}
    for name, a, b, max_images, title, out in jobs:
        image_sets[name] = [ImageSet(root, image_size=size, max_images=max_images, classes=classes,
                                     resize_size=int(size * 256 / 224))
                            for root, classes in (parse_image_set(spec) for spec in (a, b))]
    models = _load_models(specs, not args.no_pretrained)
    for name, a, b, max_images, title, out in jobs:
        sets = image_sets[name]
        print(f"[ibnnet] {name}: {len(sets[0])} vs {len(sets[1])} images, {len(models)} models on {device}")
        layers, results = run_divergence(models, sets[0], sets[1], batch_size=args.batch_size, device=device,
                                         num_workers=args.num_workers, progress=progress)
        paths = divergence_report(results, layers, out, title)
        log_figures(None, path.stem if args.experiment else "divergence", None, out, paths)
        print(paths["md"].read_text())
        print(f"[ibnnet] written: {', '.join(str(p) for p in paths.values())}")
    return 0


def _split_label(spec: str) -> tuple[str, str]:
    label, sep, path = spec.partition("=")
    if not sep or not label or "/" in label:
        return Path(spec).stem, spec
    return label, path


# How Fig. 9 names the datasets a run was trained on (data.train.dataset in its config.yaml).
_DATASET_NAMES = {"ade20k": "ADE20K", "cityscapes": "Cityscapes", "gta5": "GTA5", "synthia": "SYNTHIA",
                  "bdd100k": "BDD100K", "mapillary": "Mapillary", "imagenet": "ImageNet"}


def _training_dataset(folder: Path) -> str:
    """The display name of the dataset the run in ``folder`` was trained on."""
    from omegaconf import OmegaConf
    path = folder / "config.yaml"
    try:
        dataset = str(OmegaConf.select(OmegaConf.load(path), "data.train.dataset"))
    except (OSError, ValueError) as e:
        raise MissingPathError(f"{path}: cannot read the run's training dataset ({e})") from None
    return _DATASET_NAMES.get(dataset, dataset)


def cmd_sn_weights(args) -> int:
    from ..analysis.curves import experiment_runs
    from ..analysis.sn_weights import load_state_dict, sn_layers, write_sn_weights
    from ..models.weights import WeightsError

    take_experiment_from_cells(args)
    if not args.experiment and not args.checkpoint:
        raise ConfigError("give an experiment (e.g. sn_table2) or at least one --checkpoint [LABEL=]FILE")
    sources: list[tuple[str, Path, bool]] = []  # (label, file, from an experiment: skip non-SN runs)
    out = Path(args.out) if args.out else Path("results") / "sn_weights"
    title = args.title or "SN importance weights"
    if args.experiment:
        exp, runs = experiment_runs(args.experiment, args.scale, args.cells, args.overrides, finished=True,
                                    runs_root=args.runs, where=args.where)
        sources += [(_training_dataset(r.folder) if args.by_dataset else r.label,
                     r.folder / "checkpoints" / f"{args.which}.ckpt", True) for r in runs]
        out = Path(args.out) if args.out else results_dir(exp, args.overrides, "sn_weights")
        title = args.title or f"{exp.title.split(':')[0]}: SN importance weights"
    sources += [(*_split_label(spec), False) for spec in args.checkpoint or []]
    labels = [s[0] for s in sources]
    dupes = sorted({lb for lb in labels if labels.count(lb) > 1})
    if dupes and not args.by_dataset:   # by dataset: only the SN runs must differ (checked as they are read)
        raise ConfigError(f"several inputs are labelled {dupes}; name them with --checkpoint LABEL=FILE")
    results, skipped = {}, []
    for label, path, optional in progress_bar(sources, enabled=progress_enabled(args.progress) and len(sources) > 1,
                                              desc="checkpoints", unit="ckpt"):
        try:
            sd = load_state_dict(path)
        except WeightsError as e:
            if optional and "no Switchable Normalization" in str(e):
                skipped.append(label)  # a BN/GN cell of the same experiment
                continue
            raise
        if label in results:
            raise ConfigError(f"two SN models were trained on {label}; Fig. 9 compares one per dataset: choose "
                              "them with --cells (e.g. --cells norm=SN)")
        results[label] = sn_layers(sd)
    if skipped:
        print(f"[ibnnet] skipped (no SN layers): {', '.join(skipped)}", file=sys.stderr)
    if not results:
        raise MissingPathError(f"{args.experiment}: none of the {len(sources)} runs found has SN layers "
                                "(choose SN cells with --cells)")
    paths = write_sn_weights(results, out, title)
    if args.by_dataset:
        from ..analysis.sn_weights import write_dataset_figure
        paths.update(write_dataset_figure(results, out, args.title or (
            f"{title.split(':')[0]}: SN importance weights by training dataset (SN Fig. 9)")))
    if args.ibn_placement:
        from ..analysis.sn_placement import write_placement
        for label, layers in results.items():
            paths.update({f"placement_{k}:{label}": v for k, v in write_placement(label, layers, out).items()})
    for label, layers in results.items():
        print(f"{label}: {len(layers)} SN layers")
    if args.experiment:
        log_figures(exp.compose_cell(exp.cells[0], tuple(args.overrides)), exp.name, exp.scale, out, paths)
    else:
        log_figures(None, "sn_weights", None, out, paths)
    print((out / "network.csv").read_text())
    print(f"[ibnnet] written: {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0
