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
    p.add_argument("--where", action="append", metavar="KEY=VALUE",
                   help="only runs whose config has KEY=VALUE (repeatable), to pick among variants of a cell")
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
            break


def log_figures(cfg, experiment: str, scale: str | None, out: Path, paths: dict) -> None:
    """The PNGs an analyze/plot command wrote, into the experiment's wandb results run (offline, beside them;
    `ibnnet sync` uploads it). ``cfg``: a run config of the experiment (its logger settings), or None."""
    from omegaconf import OmegaConf

    from ..config.schema import RunConfig
    from ..runs.wandb_results import publish_results
    images = {Path(p).stem: Path(p) for p in paths.values() if str(p).endswith(".png")}
    if images:
        publish_results(cfg if cfg is not None else OmegaConf.structured(RunConfig), experiment, scale, out,
                        images=images)


def results_dir(exp, overrides, sub: str) -> Path:
    root = exp.compose_cell(exp.cells[0], tuple(overrides)).paths.results
    return exp.results_dir(root) / sub


def download_progress(enabled: bool) -> None:
    """A progress bar for the weight files timm downloads (pretrained=True), like every other bar here."""
    from timm.models import set_pretrained_download_progress
    set_pretrained_download_progress(enabled)


def reported_checkpoint(config_path: str | Path, cfg) -> tuple[Path, str] | None:
    """For a run folder's ``config.yaml``: the checkpoint whose numbers the experiment's table shows for that
    run, and a line saying which and why (``last.ckpt``, the final model, unless the table has
    ``select: best``: ``best.ckpt``, the best validation epoch). None for any other config, and for a run that
    trained nothing (its table shows the starting weights)."""
    from ..runs.folder import CheckpointError, RunFolder
    from ..runs.runner import read_run_checkpoint
    config_path = Path(config_path)
    folder = RunFolder(config_path.resolve().parent)
    if config_path.name != "config.yaml" or not folder.checkpoint_dir.is_dir():
        return None
    last = folder.checkpoint_dir / "last.ckpt"
    metrics = folder.metrics()
    if not isinstance(metrics, dict):
        saved = [p for p in (folder.checkpoint_dir / "preempt.ckpt", last) if p.is_file()]
        if not saved:
            raise CheckpointError(f"{folder.path}: the run has not finished and has no checkpoint yet "
                                  f"(looked for preempt.ckpt, last.ckpt in {folder.checkpoint_dir})")
        newest = max(saved, key=lambda p: p.stat().st_mtime)
        return newest, "the latest model; the run has not finished (no metrics.json), so no table reports it yet"
    if metrics.get("evaluation_only"):
        return None   # trainer.max_epochs: 0 scored the starting weights, which is what evaluate then loads
    select, why = table_select(cfg)
    best = metrics.get("best") or {}
    if select == "best" and best.get("metrics"):
        path = folder.checkpoint_dir / "best.ckpt"
        if not path.is_file() and last.is_file() and read_run_checkpoint(last, mmap=True)["epoch"] == best["epoch"]:
            path = last   # the best epoch was the last one and only last.ckpt holds it
        return path, f"the model of epoch {best['epoch']}, the best validation epoch; {why}"
    if select == "best":
        why += "; this run has no best-epoch record, so the table shows its final numbers"
    return last, f"the final model; {why}"


def table_select(cfg) -> tuple[str, str]:
    """``final`` or ``best``: which numbers of a run the table of its experiment (``cfg.experiment``) shows, and why."""
    from ..errors import UserError
    from ..experiments.grid import load_experiment
    if cfg.experiment == "default":
        return "final", "runs of `ibnnet train` report the numbers after the last epoch"
    try:
        exp = load_experiment(cfg.experiment, scale=cfg.scale or None)
    except UserError as e:
        return "final", f"experiment {cfg.experiment!r} could not be read ({e}): taking the final numbers"
    if exp.table.get("select", "final") == "best":
        return "best", f"the {exp.name} table reports each run's best validation epoch (table.select: best)"
    return "final", f"the {exp.name} table reports the numbers after the last epoch"
