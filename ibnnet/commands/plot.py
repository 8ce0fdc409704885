"""ibnnet plot curves: learning curves of chosen cells from their run folders (SN Fig. 5/6)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from .common import experiment_args, log_figures, results_dir, take_experiment_from_cells


def add_plot_commands(sub) -> None:
    p = sub.add_parser("plot", help="figures from the runs of an experiment")
    psub = p.add_subparsers(dest="plot_command", required=True, metavar="FIGURE")
    c = psub.add_parser(
        "curves", help="train/val learning curves of chosen cells on one figure (SN Fig. 5/6)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Curves from each run folder's logs/metrics.csv against epochs trained; a panel per metric, "
                    "a colour per cell, train dashed, validation solid. Writes curves.png and curves.csv.\n\n"
                    "  ibnnet plot curves sn_table2 --cells 'norm=SN_setting=8x32' 'norm=BN_setting=8x32'\n"
                    "  ibnnet plot curves ibn_table4 --metrics 'train/loss_epoch' 'val/*/miou'")
    experiment_args(c, positional_optional=True)   # required; optional here so --cells before it can give it back
    c.add_argument("--metrics", nargs="+", metavar="COLUMN",
                   help="log columns (globs) to draw; default: top-1 train/val accuracy (classification), "
                        "train loss and val mIoU (segmentation)")


def cmd_curves(args) -> int:
    from ..analysis.curves import experiment_runs, write_curves

    take_experiment_from_cells(args)
    if not args.experiment:
        raise ConfigError("plot curves: name the experiment (e.g. ibnnet plot curves sn_table2 --cells norm=SN)")
    exp, runs = experiment_runs(args.experiment, args.scale, args.cells, args.overrides, runs_root=args.runs,
                                where=args.where)
    out = Path(args.out) if args.out else results_dir(exp, args.overrides, "curves")
    title = args.title or exp.title.split(":")[0] + ": learning curves"
    paths = write_curves(runs, args.metrics, out, title)
    log_figures(exp.compose_cell(exp.cells[0], tuple(args.overrides)), exp.name, exp.scale, out, paths)
    print(f"[ibnnet] {len(runs)} runs: {', '.join(r.label for r in runs)}")
    print(f"[ibnnet] written: {paths['png']}, {paths['csv']}", file=sys.stderr)
    return 0


def run(args) -> int:
    if args.plot_command == "curves":
        return cmd_curves(args)
    raise ConfigError(f"unknown figure {args.plot_command!r}")
