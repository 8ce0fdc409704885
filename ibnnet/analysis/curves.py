"""Learning curves from the run folders' CSV logs (SN paper Fig. 5 / Fig. 6, IBN-style train/val curves).

Each run folder has ``logs/metrics.csv``, written by Lightning's CSV logger (:mod:`ibnnet.runs.loggers`):
one row per logging call with the columns ``epoch``, ``step`` and one column per logged key, empty where
that call did not log the key (``train/loss_epoch``, ``train/top1_acc``, ``val/<eval set>/top1_acc``,
``val/<eval set>/miou``, ...).  A curve is one column against the number of epochs trained
(``epoch + 1``: validation after the first epoch is at x = 1, as in the papers' plots).
"""
from __future__ import annotations

import csv
import fnmatch
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError, DataError, MissingPathError
from ..files import atomic_write_bytes, atomic_write_text

# What a figure shows by default: SN Fig. 6 plots top-1 train/val accuracy; segmentation shows loss and mIoU.
DEFAULT_METRICS = {"classification": ("train/top1_acc", "val/*/top1_acc"),
                   "segmentation": ("train/loss_epoch", "val/*/miou")}


@dataclass
class RunRef:
    label: str          # what the legend calls the run (its distinguishing grid labels)
    cell: str           # the experiment cell's name
    folder: Path
    task: str


def short_labels(cells: Sequence[dict[str, str]], names: Sequence[str]) -> list[str]:
    """Legend labels: the grid labels that differ between the selected cells (all of them if only one).

    Axes are those of any cell: an extra cell that has an axis the others lack (sn_table5's ADE20K cells,
    ``dataset``) is told apart by it; a cell without a label of its own there is named in full."""
    axes = list(dict.fromkeys(a for c in cells for a in c))
    varying = [a for a in axes if len({c.get(a) for c in cells}) > 1]
    out = []
    for labels, name in zip(cells, names):
        shown = [str(labels[a]) for a in (varying or axes) if a in labels]
        out.append(" ".join(shown) if shown else name)
    return out


def experiment_runs(experiment: str, scale: str | None = None, cells: Sequence[str] | None = None,
                    overrides: Sequence[str] = (), finished: bool = False, runs_root: str | None = None,
                    where: list[str] | None = None):
    """(experiment, [RunRef]) for the cells of ``experiment`` whose run folder exists (and has finished).

    ``cells`` are patterns as in ``ibnnet sweep --only`` (glob, or substring without wildcards); a run is
    kept when it matches any.  A cell's run is found as ``table`` and ``status`` find it: the one its
    settings name, or the only one on disk; several variants are an error that lists them, and ``where``
    (KEY=VALUE) picks one.  Raises FileNotFoundError naming the experiment when no run is found.
    """
    from ..experiments.discover import experiment_runs as cell_runs
    from ..experiments.discover import single_folders
    from ..experiments.grid import load_experiment, select

    exp = load_experiment(experiment, scale)
    overrides = (*overrides, f"paths.runs={runs_root}") if runs_root else tuple(overrides)
    triples = [(c, cfg, f) for c, cfg, f in single_folders(cell_runs(exp, overrides, where)) if f is not None]
    if cells:
        chosen = {id(t) for pattern in cells for t in select(triples, pattern)}
        unmatched = [p for p in cells if not select(triples, p)]
        if unmatched:
            raise ConfigError(f"{exp.name}: no cell matches {', '.join(map(repr, unmatched))} "
                             f"(cells: {', '.join(c.name for c, _, _ in triples)})")
        triples = [t for t in triples if id(t) in chosen]
    present = [t for t in triples if (t[2].is_done() if finished else (t[2].path / "logs" / "metrics.csv").is_file())]
    if not present:
        where = triples[0][2].path.parent if triples else "?"
        scale_note = f" at scale {exp.scale!r}" if exp.scale else ""
        what = "finished runs" if finished else "runs with a logs/metrics.csv"
        raise MissingPathError(f"experiment {exp.name}{scale_note}: no {what} under {where} for "
                                f"{len(triples)} cell(s); run `ibnnet sweep {exp.name}"
                                f"{' --scale ' + exp.scale if exp.scale else ''}` first, or pass --scale")
    labels = short_labels([dict(c.labels) for c, _, _ in present], [c.name for c, _, _ in present])
    return exp, [RunRef(lb, c.name, f.path, cfg.task) for lb, (c, cfg, f) in zip(labels, present)]


def read_log(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "epoch" not in reader.fieldnames:
            raise DataError(f"{path}: not a Lightning CSV log (no 'epoch' column in the header)")
        return list(reader.fieldnames), list(reader)


def curves_of(path: str | os.PathLike, patterns: Sequence[str]) -> dict[str, list[tuple[float, float]]]:
    """column -> [(epochs trained, value)] for the log's columns matching any glob in ``patterns``.

    Several values in one epoch (step-level keys such as ``train/loss_step``) are averaged per epoch.
    """
    header, rows = read_log(path)
    columns = [c for c in header if c not in ("epoch", "step") and any(fnmatch.fnmatchcase(c, p) for p in patterns)]
    out: dict[str, list[tuple[float, float]]] = {}
    for col in columns:
        per_epoch: dict[int, list[float]] = {}
        for r in rows:
            v, e = r.get(col, ""), r.get("epoch", "")
            if v in ("", None) or e in ("", None):
                continue
            value = float(v)
            if math.isfinite(value):
                per_epoch.setdefault(int(float(e)), []).append(value)
        if per_epoch:
            out[col] = [(e + 1, sum(vs) / len(vs)) for e, vs in sorted(per_epoch.items())]
    return out


def _kind(column: str) -> str:
    return column.rsplit("/", 1)[-1]


def write_curves(runs: Sequence[RunRef], patterns: Sequence[str] | None, out_dir: str | os.PathLike,
                 title: str) -> dict[str, Path]:
    """curves.csv (every plotted point) and curves.png (a panel per metric, a colour per run)."""
    data = []  # (run, column, points)
    for run in runs:
        pats = list(patterns) if patterns else list(DEFAULT_METRICS.get(run.task, ("*",)))
        for col, pts in curves_of(run.folder / "logs" / "metrics.csv", pats).items():
            data.append((run, col, pts))
    if not data:
        raise ConfigError(f"{title}: none of the metrics {list(patterns or [])or 'default'} appear in the logs of "
                         f"{', '.join(r.folder.name for r in runs)}")
    out = Path(out_dir)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "cell", "run", "metric", "epoch", "value"])
    for run, col, pts in data:
        for x, y in pts:
            w.writerow([run.label, run.cell, run.folder.name, col, x, repr(y)])
    paths = {"csv": out / "curves.csv", "png": out / "curves.png"}
    atomic_write_text(paths["csv"], buf.getvalue())
    atomic_write_bytes(paths["png"], _plot(data, runs, title))
    return paths


def _plot(data, runs: Sequence[RunRef], title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    kinds = list(dict.fromkeys(_kind(col) for _, col, _ in data))
    fig = Figure(figsize=(6.5 * len(kinds), 4.5))
    FigureCanvasAgg(fig)
    colors = {id(r): f"C{i % 10}" for i, r in enumerate(runs)}
    # Train dashed, validation solid (SN Fig. 6 (b, c)); further eval sets get their own styles.
    val_sets = list(dict.fromkeys(col.split("/")[1] for _, col, _ in data if col.startswith("val/")))
    styles = ["-", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1))]
    for k, kind in enumerate(kinds):
        ax = fig.add_subplot(1, len(kinds), k + 1)
        for run, col, pts in data:
            if _kind(col) != kind:
                continue
            if col.startswith("val/"):
                vset = col.split("/")[1]
                style = styles[val_sets.index(vset) % len(styles)]
                name = f"{run.label} val" + (f" ({vset})" if len(val_sets) > 1 else "")
            else:
                style = "--"
                name = f"{run.label} {col.rsplit('/', 1)[0]}"
            xs, ys = zip(*pts)
            ax.plot(xs, ys, linestyle=style, color=colors[id(run)], marker="o" if len(xs) < 15 else None,
                    markersize=3, label=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epochs")
        ax.set_ylabel(kind)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        if k == 0:
            ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()
