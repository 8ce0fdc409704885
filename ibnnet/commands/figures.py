"""ibnnet analyze sn-weights | plot curves: the papers' figures from finished runs."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import ConfigError, MissingPathError
from ..progress import add_progress_option, progress_bar, progress_enabled

log = logging.getLogger("ibnnet")


def _experiment_args(p: argparse.ArgumentParser, positional_optional: bool = False) -> None:
    p.add_argument("experiment", nargs="?" if positional_optional else None,
                   help="experiment file, or its name under experiments/ (e.g. sn_table2)")
    p.add_argument("--scale", help="experiment scale (e.g. reduced, full); default: the cheapest (fewest GPU-hours)")
    p.add_argument("--cells", nargs="+", metavar="PATTERN",
                   help="only these cells (glob or substring of the cell name, e.g. 'norm=SN' '8x2')")
    p.add_argument("--runs", help="runs root (default: paths.runs of the experiment's config)")
    p.add_argument("--out", help="output folder (default: results/<experiment>[/<scale>]/...)")
    p.add_argument("--title", help="figure title")
    p.add_argument("overrides", nargs="*", help="config overrides as key=value (as given to sweep)")


def add_sn_weights_parser(asub) -> None:
    p = asub.add_parser(
        "sn-weights", help="SN Fig. 4 / Fig. 7: importance weights of IN/LN/BN in every SN layer",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Softmax of each SN layer's mean_weight / var_weight. Fig. 4: averaged over the network, "
                    "one group per run (batch setting); Fig. 7: per layer, by residual stage, 3x3-conv, 1x1-conv "
                    "and shortcut layers told apart. Writes network.csv/png, layers.csv, layers_<run>.png.\n\n"
                    "  ibnnet analyze sn-weights sn_table2 --cells norm=SN\n"
                    "  ibnnet analyze sn-weights --checkpoint 8x32=a.ckpt --checkpoint 8x2=b.pth")
    _experiment_args(p, positional_optional=True)
    p.add_argument("--checkpoint", action="append", metavar="[LABEL=]FILE",
                   help="a weight file or Lightning checkpoint instead of (or besides) an experiment's runs")
    p.add_argument("--which", choices=("last", "best"), default="last", help="run checkpoint to read")
    add_progress_option(p)


def add_figure_commands(sub) -> None:
    p = sub.add_parser("plot", help="figures from the runs of an experiment")
    psub = p.add_subparsers(dest="plot_command", required=True, metavar="FIGURE")
    c = psub.add_parser(
        "curves", help="train/val learning curves of chosen cells on one figure (SN Fig. 5/6)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Curves from each run folder's logs/metrics.csv against epochs trained; a panel per metric, "
                    "a colour per cell, train dashed, validation solid. Writes curves.png and curves.csv.\n\n"
                    "  ibnnet plot curves sn_table2 --cells 'norm=SN_setting=8x32' 'norm=BN_setting=8x32'\n"
                    "  ibnnet plot curves ibn_table4 --metrics 'train/loss_epoch' 'val/*/miou'")
    _experiment_args(c)
    c.add_argument("--metrics", nargs="+", metavar="COLUMN",
                   help="log columns (globs) to draw; default: top-1 train/val accuracy (classification), "
                        "train loss and val mIoU (segmentation)")


def _split_label(spec: str) -> tuple[str, str]:
    label, sep, path = spec.partition("=")
    if not sep or not label or "/" in label:
        return Path(spec).stem, spec
    return label, path


def _results_dir(exp, overrides, sub: str) -> Path:
    root = exp.compose_cell(exp.cells[0], tuple(overrides)).paths.results
    return exp.results_dir(root) / sub


def cmd_sn_weights(args) -> int:
    from ..analysis.curves import experiment_runs
    from ..analysis.sn_weights import load_state_dict, sn_layers, write_sn_weights
    from ..models.weights import WeightsError

    if not args.experiment and not args.checkpoint:
        raise ConfigError("give an experiment (e.g. sn_table2) or at least one --checkpoint [LABEL=]FILE")
    sources: list[tuple[str, Path, bool]] = []  # (label, file, from an experiment: skip non-SN runs)
    out = Path(args.out) if args.out else Path("results") / "sn_weights"
    title = args.title or "SN importance weights"
    if args.experiment:
        exp, runs = experiment_runs(args.experiment, args.scale, args.cells, args.overrides, finished=True,
                                    runs_root=args.runs)
        sources += [(r.label, r.folder / "checkpoints" / f"{args.which}.ckpt", True) for r in runs]
        out = Path(args.out) if args.out else _results_dir(exp, args.overrides, "sn_weights")
        title = args.title or f"{exp.title.split(':')[0]}: SN importance weights"
    sources += [(*_split_label(spec), False) for spec in args.checkpoint or []]
    labels = [s[0] for s in sources]
    dupes = sorted({lb for lb in labels if labels.count(lb) > 1})
    if dupes:
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
        results[label] = sn_layers(sd)
    if skipped:
        print(f"[ibnnet] skipped (no SN layers): {', '.join(skipped)}", file=sys.stderr)
    if not results:
        raise MissingPathError(f"{args.experiment}: none of the {len(sources)} runs found has SN layers "
                                "(choose SN cells with --cells)")
    paths = write_sn_weights(results, out, title)
    for label, layers in results.items():
        print(f"{label}: {len(layers)} SN layers")
    print((out / "network.csv").read_text())
    print(f"[ibnnet] written: {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def cmd_curves(args) -> int:
    from ..analysis.curves import experiment_runs, write_curves

    exp, runs = experiment_runs(args.experiment, args.scale, args.cells, args.overrides, runs_root=args.runs)
    out = Path(args.out) if args.out else _results_dir(exp, args.overrides, "curves")
    title = args.title or exp.title.split(":")[0] + ": learning curves"
    paths = write_curves(runs, args.metrics, out, title)
    print(f"[ibnnet] {len(runs)} runs: {', '.join(r.label for r in runs)}")
    print(f"[ibnnet] written: {paths['png']}, {paths['csv']}", file=sys.stderr)
    return 0


def run(args) -> int:
    if args.command == "analyze":
        return cmd_sn_weights(args)
    if args.plot_command == "curves":
        return cmd_curves(args)
    raise ConfigError(f"unknown figure {args.plot_command!r}")
