"""Experiment tables: our numbers beside the paper's, rendered from the run folders alone.

Records are long-form: one per (cell, evaluation set), holding the cell's axis labels, the eval-set
name, the run's status and its metrics.  A table pivots them into the paper's layout: ``rows`` and
``columns`` are grid axes or ``eval``; each shown cell holds ``metrics`` joined by "/" as the papers do
(e.g. top-1/top-5 error), next to the paper's value and the difference.

``table.select`` picks which numbers of each run: ``final`` (default; ``metrics.json``'s ``metrics``, after
the last epoch) or ``best`` (its ``best.metrics``: the whole evaluation of the validation epoch with the best
``trainer.best_metric``, as the official IBN-Net ``imagenet.py``'s ``model_best.pth``; see ibnnet/tasks/base.py).
A run without a best record (finished before it existed) falls back to its final numbers, with a warning.
"""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

from ..experiments.grid import Experiment
from ..files import atomic_output, atomic_write_text
from ..runs.folder import BROKEN, DONE, PENDING
from .records import Record

log = logging.getLogger("ibnnet")

METRIC_LABELS = {"top1_err": "top-1 err", "top5_err": "top-5 err", "top1_acc": "top-1 acc", "top5_acc": "top-5 acc",
                 "miou": "mIoU", "pixel_acc": "pixel acc", "mce": "mCE", "relative_mce": "relative mCE",
                 "miou16": "mIoU-16", "miou13": "mIoU-13"}

# ImageNet-C's extras (reported apart from the mCE, as plain errors: no published AlexNet normaliser)
METRIC_LABELS.update({"extra_err": "extras' mean err", "err_speckle_noise": "speckle noise err",
                      "err_gaussian_blur": "gaussian blur err", "err_spatter": "spatter err",
                      "err_saturate": "saturate err"})


def select_metrics(metrics: dict[str, Any], select: str, where: str = "") -> dict[str, Any]:
    """Per-eval-set metrics of one ``metrics.json``: the final ones or those of the best epoch."""
    if select == "best":
        best = metrics.get("best") or {}
        if best.get("metrics"):
            return best["metrics"]
        if metrics.get("metrics"):
            log.warning("%s: no best-epoch record in metrics.json; the table shows its final metrics", where)
    return metrics.get("metrics") or {}


def collect(exp: Experiment, overrides: tuple[str, ...] = (), where: list[str] | None = None,
            discover: bool = True) -> list[Record]:
    from ..experiments.discover import experiment_runs, single_folders
    records = []
    select = exp.table.get("select", "final")
    for cell, cfg, folder in single_folders(experiment_runs(exp, overrides, where, discover)):
        if folder is None:   # --where excluded every run of this cell
            records += [Record(dict(cell.labels), spec.name, PENDING, "", {}) for spec in cfg.data.val]
            continue
        metrics = folder.metrics() or {}
        per_eval = select_metrics(metrics, select, str(folder.path))
        status = DONE if folder.is_done() else BROKEN if folder.problem() else folder.state().get("status", PENDING)
        for spec in cfg.data.val:
            values = per_eval.get(spec.name) or {}
            records.append(Record(dict(cell.labels), spec.name, status, folder.path.name,
                                  {k: v for k, v in values.items() if isinstance(v, (int, float))},
                                  bool(metrics.get("evaluation_only"))))
    return records


def paper_value(exp: Experiment, labels: dict[str, str], eval_name: str, metric: str) -> float | None:
    for entry in exp.paper:
        keys = {k: v for k, v in entry.items() if k in exp.axes or k == "eval"}
        if all(str(labels.get(k)) == str(v) for k, v in keys.items() if k != "eval") and \
                ("eval" not in keys or str(keys["eval"]) == eval_name) and metric in entry:
            value = entry[metric]
            return None if value in (None, "-", "") else float(value)
    return None


def _fmt(values: list[float | None], fmt: str) -> str:
    if all(v is None for v in values):
        return "–"
    return "/".join("–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v) for v in values)


def _delta(ours: list[float | None], paper: list[float | None], fmt: str) -> str:
    pairs = [(a, b) for a, b in zip(ours, paper)]
    if any(a is None or b is None for a, b in pairs):
        return ""
    return "/".join(("+" if a - b >= 0 else "") + fmt.format(a - b) for a, b in pairs)


def _ordered(values: list[str]) -> list[str]:
    seen: list[str] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def build_table(exp: Experiment, records: list[Record]) -> dict[str, Any]:
    t = exp.table
    rows_key = t.get("rows") or (exp.axes[0] if exp.axes else "eval")
    cols_key = t.get("columns")
    metrics = list(t.get("metrics") or (["top1_err", "top5_err"] if _is_cls(records) else ["miou", "pixel_acc"]))
    # Evaluation sets whose cells show other metrics (ImageNet-C: mCE / relative mCE instead of an error)
    eval_metrics = {str(k): list(v) for k, v in (t.get("eval_metrics") or {}).items()}
    fmt = t.get("format", "{:.2f}")
    eval_labels = t.get("eval_labels") or {}

    join = t.get("join", " / ")

    def key_of(rec: Record, key) -> str:
        if key is None:
            return ""
        if isinstance(key, list):  # a composite key, e.g. IBN Table 6's "train -> test" rows
            return join.join(eval_labels.get(rec.eval, rec.eval) if k == "eval" else rec.labels.get(k, "")
                             for k in key)
        return rec.eval if key == "eval" else rec.labels.get(key, "")

    row_values = _ordered([key_of(r, rows_key) for r in records])
    col_values = _ordered([key_of(r, cols_key) for r in records]) if cols_key else [""]
    grid: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        grid.setdefault((key_of(r, rows_key), key_of(r, cols_key)), []).append(r)

    def show(v: str, key) -> str:
        return eval_labels.get(v, v) if key == "eval" else v

    cells = {}
    for rv in row_values:
        for cv in col_values:
            recs = grid.get((rv, cv), [])
            if len(recs) > 1:
                # Axes not shown in the table must be fixed per (row, column); several runs would be ambiguous.
                shown = set(rows_key if isinstance(rows_key, list) else [rows_key])
                shown |= set(cols_key if isinstance(cols_key, list) else [cols_key])
                hidden = sorted({k for r in recs for k in r.labels if k not in shown})
                raise ValueError(f"{exp.path}: table cell ({rv}, {cv}) has {len(recs)} runs; put axis "
                                 f"{', '.join(hidden) or 'eval'} in rows or columns")
            rec = recs[0] if recs else None
            shown = eval_metrics.get(rec.eval, metrics) if rec else metrics
            ours = [rec.metrics.get(m) if rec else None for m in shown]
            paper = [paper_value(exp, rec.labels, rec.eval, m) if rec else None for m in shown]
            cells[(rv, cv)] = {"ours": ours, "paper": paper, "status": rec.status if rec else "",
                               "run_id": rec.run_id if rec else "", "metrics": shown}
    done = [r for r in records if r.status == DONE]
    return {"rows_key": rows_key, "cols_key": cols_key, "rows": row_values, "cols": col_values,
            "evaluation_only": bool(done) and all(r.evaluation_only for r in done),
            "metrics": metrics, "eval_metrics": eval_metrics, "fmt": fmt, "cells": cells, "show": show}


def _is_cls(records: list[Record]) -> bool:
    return any("top1_err" in r.metrics for r in records) or not any("miou" in r.metrics for r in records)


def changed_settings(exp: Experiment, overrides: tuple[str, ...]) -> list[str]:
    """The command-line overrides that change what the runs are (their config hash), e.g. trainer.max_epochs=2;
    not where they are kept (paths.*) or how they are launched and logged."""
    from ..errors import ConfigError
    from ..runs.folder import config_hash
    if not overrides:
        return []

    def hashes(over) -> list[str]:
        return [config_hash(cfg) for _, cfg in exp.configs(tuple(over))]
    # Each override among the others, not alone: one may only be valid beside another (data.augment.eval_resize
    # with a smaller image_size), and leaving out one the rest cannot do without changes the runs too.
    full = hashes(overrides)
    changed = []
    for i, o in enumerate(overrides):
        try:
            same = hashes(overrides[:i] + overrides[i + 1:]) == full
        except ConfigError:
            same = False
        if not same:
            changed.append(o)
    if not changed and full != hashes(()):   # e.g. one setting given twice: neither copy alone makes the change
        changed = list(overrides)
    return changed


def variant_folder(settings: list[str], where: list[str] | None) -> str:
    """A folder name for a table made under other settings (beside, never over, the experiment's own table)."""
    import hashlib

    from ..runs.folder import sanitize
    text = ",".join([*settings, *(f"where:{w}" for w in where or [])])
    return f"{sanitize(text, 60)}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def render_markdown(exp: Experiment, tab: dict[str, Any], comparable: bool = True, variant: str = "") -> str:
    """``comparable``: the runs follow the paper's protocol, so a Δ column means something; otherwise the
    paper's numbers are shown for reference only. ``variant``: the settings the table was made under."""
    metric_names = "/".join(METRIC_LABELS.get(m, m) for m in tab["metrics"])
    show = tab["show"]
    with_paper = bool(exp.paper)  # an experiment of our own (the demo) has no paper columns
    with_delta = with_paper and comparable
    rows_key = tab["rows_key"]
    header = [exp.table.get("row_title") or (" / ".join(rows_key) if isinstance(rows_key, list) else rows_key)]
    for cv in tab["cols"]:
        prefix = f"{show(cv, tab['cols_key'])} " if cv else ""
        header += ([f"{prefix}ours", f"{prefix}paper"] + ([f"{prefix}Δ"] if with_delta else [])
                   if with_paper else [prefix.strip() or "ours"])
    lines = []
    title = exp.title or exp.name
    lines.append(f"# {title}\n")
    scale = f", scale `{exp.scale}`" if exp.scale else ""
    legend = (" Δ = ours − paper. – = not run / not finished / not in the paper." if with_delta else
              " The paper's numbers are for reference only: this scale's protocol is not the paper's (no Δ). "
              "– = not run / not finished / not in the paper." if with_paper else "")
    when = (" at each run's best validation epoch (table.select: best)" if exp.table.get("select") == "best"
            else " of the starting weights, nothing trained" if tab.get("evaluation_only") else " after the last epoch")
    others = "".join(f"; {tab['show'](name, 'eval')}: " + "/".join(METRIC_LABELS.get(m, m) for m in ms)
                     for name, ms in tab.get("eval_metrics", {}).items())
    lines.append(f"Values: {metric_names}{others} (%){when}{scale}.{legend}\n")
    if variant:
        lines.append(f"Made under {variant}: not the experiment's own settings, whose table is "
                     f"[../../table.md](../../table.md).\n")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    fmt = tab["fmt"]
    for rv in tab["rows"]:
        row = [show(rv, tab["rows_key"])]
        for cv in tab["cols"]:
            c = tab["cells"][(rv, cv)]
            ours = _fmt(c["ours"], fmt)
            if c["status"] and c["status"] != DONE:
                ours = f"({c['status']})"
            row += ([ours, _fmt(c["paper"], fmt)] + ([_delta(c["ours"], c["paper"], fmt)] if with_delta else [])
                    if with_paper else [ours])
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def render_csv(exp: Experiment, tab: dict[str, Any], comparable: bool = True) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    def name(key) -> str:
        return "/".join(key) if isinstance(key, list) else (key or "")
    w.writerow([name(tab["rows_key"]), name(tab["cols_key"]), "metric", "ours", "paper", "delta", "status", "run_id"])
    for rv in tab["rows"]:
        for cv in tab["cols"]:
            c = tab["cells"][(rv, cv)]
            for m, ours, paper in zip(c["metrics"], c["ours"], c["paper"]):
                delta = ours - paper if ours is not None and paper is not None and comparable else None
                w.writerow([rv, cv, m, _num(ours), _num(paper), _num(delta), c["status"], c["run_id"]])
    return buf.getvalue()


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def has_results(tab: dict[str, Any]) -> bool:
    return any(v is not None for c in tab["cells"].values() for v in c["ours"])


def plot_title(exp: Experiment, tab: dict[str, Any]) -> str:
    """What the figure shows: the table it belongs to, the one metric drawn, per what, at which scale."""
    rows_key = tab["rows_key"]
    per = exp.table.get("row_title") or (" / ".join(rows_key) if isinstance(rows_key, list) else rows_key)
    metric = METRIC_LABELS.get(tab["metrics"][0], tab["metrics"][0])
    scale = f", scale {exp.scale}" if exp.scale else ""
    return f"{(exp.title or exp.name).split(':')[0]}: {metric} (%) per {per}{scale}"


def render_plot(exp: Experiment, tab: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metric = tab["metrics"][0]
    rows, cols, show = tab["rows"], tab["cols"], tab["show"]
    x = np.arange(len(rows))
    width = 0.8 / max(1, len(cols))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(rows) * max(1, len(cols)) ** 0.5 + 2), 3.8))
    paper_shown = False
    for j, cv in enumerate(cols):
        ours = [tab["cells"][(rv, cv)]["ours"][0] for rv in rows]
        paper = [tab["cells"][(rv, cv)]["paper"][0] for rv in rows]
        pos = x - 0.4 + width * (j + 0.5)
        label = show(cv, tab["cols_key"]) if cv else "ours"
        bars = ax.bar(pos, [np.nan if v is None else v for v in ours], width * 0.9, label=label)
        if any(v is not None for v in paper):
            ax.scatter(pos, [np.nan if v is None else v for v in paper], marker="_", s=300, color="black",
                       zorder=3, label=None if paper_shown else "paper")
            paper_shown = True
        for b, v in zip(bars, ours):
            if v is not None:
                ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [show(rv, tab["rows_key"]) for rv in rows], rotation=20 if len(rows) > 4 else 0)
    others = "".join(f", {show(name, 'eval')}: {METRIC_LABELS.get(ms[0], ms[0])}"
                     for name, ms in tab.get("eval_metrics", {}).items() if name in cols or name in rows)
    ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} (%){others}", fontsize=8 if others else None)
    ax.set_title(plot_title(exp, tab), fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def table_dir(exp: Experiment, results_root: str | Path, overrides: tuple[str, ...] = (),
              where: list[str] | None = None) -> Path:
    """Where the table of ``exp`` under these settings goes: the experiment's results folder, or beside it in
    ``variants/<settings>/`` when overrides change the runs or --where picks among them (never over it)."""
    out = exp.results_dir(results_root)
    settings = changed_settings(exp, overrides)
    return out / "variants" / variant_folder(settings, where) if settings or where else out


def write_table(exp: Experiment, results_root: str | Path, overrides: tuple[str, ...] = (),
                where: list[str] | None = None, discover: bool = True) -> dict[str, Path]:
    """``discover=False``: the folders this command names (after a sweep: the runs it made), not every variant."""
    records = collect(exp, overrides, where, discover)
    tab = build_table(exp, records)
    out = table_dir(exp, results_root, overrides, where)
    settings = changed_settings(exp, overrides)
    variant = " and ".join([*(["`" + " ".join(settings) + "`"] if settings else []),
                            *(["--where `" + " ".join(where) + "`"] if where else [])])
    comparable = exp.follows_paper_protocol and not settings
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "table.md", "csv": out / "table.csv", "plot": out / "plot.png"}
    atomic_write_text(paths["markdown"], render_markdown(exp, tab, comparable, variant))
    atomic_write_text(paths["csv"], render_csv(exp, tab, comparable))
    if has_results(tab):
        render_plot(exp, tab, paths["plot"])
    else:   # nothing finished: no figure of empty axes (and none left from an earlier render of other runs)
        paths.pop("plot").unlink(missing_ok=True)
    from .corruptions import render_corruption_figure
    if render_corruption_figure(exp, records, out / "corruptions.png"):
        paths["corruptions"] = out / "corruptions.png"
    # ... and into wandb: the experiment's results run, in the sweep's group (offline; `ibnnet sync` uploads it)
    from ..runs.wandb_results import publish_results
    rows = list(csv.reader(io.StringIO(paths["csv"].read_text())))
    logged = publish_results(exp.compose_cell(exp.cells[0], overrides), exp.name,
                             exp.scale if not variant else f"{exp.scale or ''}-{out.name}", out,
                             table={"columns": rows[0], "rows": [[_number(v) for v in r] for r in rows[1:]]},
                             images={k: paths[k] for k in ("plot", "corruptions") if k in paths})
    if logged is not None:
        paths["wandb"] = logged
    return paths


def _number(text: str) -> float | str | None:
    """A CSV cell as wandb.Table wants it: a column keeps one type, so numbers are floats and blanks None."""
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text
