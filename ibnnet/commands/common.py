"""What several commands share: the experiment arguments of figure commands, output folders, download bars."""
from __future__ import annotations

import argparse
from pathlib import Path


def experiment_args(p: argparse.ArgumentParser, positional_optional: bool = False) -> None:
    p.add_argument("experiment", nargs="?" if positional_optional else None,
                   help="experiment file, or its name under experiments/ (e.g. sn_table2)")
    p.add_argument("--scale", help="experiment scale (e.g. reduced, full); default: the cheapest (fewest GPU-hours)")
    p.add_argument("--cells", nargs="+", metavar="PATTERN",
                   help="only these cells (glob or substring of the cell name, e.g. 'norm=SN' '8x2')")
    p.add_argument("--runs", help="runs root (default: paths.runs of the experiment's config)")
    p.add_argument("--out", help="output folder (default: results/<experiment>[/<scale>]/...)")
    p.add_argument("--title", help="figure title")
    p.add_argument("overrides", nargs="*", help="config overrides as key=value (as given to sweep)")


def take_experiment_from_cells(args) -> None:
    """``--cells A B EXP k=v``: --cells takes every word up to the next option, the experiment included. Give it
    back: the first --cells word that names an experiment file is the experiment, the words after it are the
    overrides (where argparse would have put them after the experiment). Then require the experiment."""
    from ..errors import ConfigError
    from ..experiments.grid import resolve_experiment_path
    if not args.experiment and args.cells:
        for i, word in enumerate(args.cells):
            try:
                resolve_experiment_path(word)
            except ConfigError:
                continue
            args.experiment, args.overrides = word, [*args.cells[i + 1:], *args.overrides]
            args.cells = args.cells[:i]
            breakdef results_dir(exp, overrides, sub: str) -> Path:
    root = exp.compose_cell(exp.cells[0], tuple(overrides)).paths.results
    return exp.results_dir(root) / sub


def download_progress(enabled: bool) -> None:
    """A progress bar for the weight files timm downloads (pretrained=True), like every other bar here."""
    from timm.models import set_pretrained_download_progress
    set_pretrained_download_progress(enabled)
