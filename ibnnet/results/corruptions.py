"""The ImageNet-C figure of an experiment: which corruptions each model resists, and how errors grow with severity.

Drawn from the ImageNet-C summaries in the run folders (``metrics.json``, the spec's own name, see
:func:`ibnnet.data.datasets.robustness.imagenet_c_summary`): left, the corruption error CE of each of the 15
corruptions (AlexNet = 100) per model, or the mean error per corruption where CE is not defined (a class
subset, missing severities); beside it, in a panel of their own, the top-1 error on the 4 extra corruptions
(outside the mCE, no AlexNet normaliser) where they were evaluated; right, the mean error over the 15 at each
severity (solid) and over the extras (dashed).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..files import atomic_output

if TYPE_CHECKING:
    from ..experiments.grid import Experiment
    from .records import Record


def _has_any(record: Record, corruptions) -> bool:
    return any(f"err_{c}" in record.metrics for c in corruptions)


def _bars(ax, runs: list[Record], corruptions, key: str, label_of, color_of) -> None:
    import numpy as np
    x = np.arange(len(corruptions))
    width = 0.8 / len(runs)
    for j, r in enumerate(runs):
        values = [r.metrics.get(key.format(c), np.nan) for c in corruptions]
        ax.bar(x - 0.4 + width * (j + 0.5), values, width * 0.9, label=label_of(r), color=color_of(r))
    ax.set_xticks(x, [c.replace("_", " ") for c in corruptions], rotation=35, ha="right", fontsize=8)


def render_corruption_figure(exp: Experiment, records: list[Record], path: Path) -> bool:
    """Write ``path`` if any finished run has an ImageNet-C summary; returns whether it did."""
    from ..data.datasets.robustness import CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES
    bench = [r for r in records if _has_any(r, CORRUPTIONS)]
    extra = [r for r in records if _has_any(r, EXTRA_CORRUPTIONS)]
    if not bench and not extra:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    # one colour per model (its axis labels), the same in every panel
    models = list(dict.fromkeys(" ".join(r.labels.values()) or r.run_id for r in bench + extra))

    def model(r: Record) -> str:
        return " ".join(r.labels.values()) or r.run_id

    def color_of(r: Record) -> str:
        return f"C{models.index(model(r)) % 10}"

    def labeller(runs: list[Record]):
        several = len({r.eval for r in runs}) > 1
        return lambda r: model(r) + (f" ({r.eval})" if several else "")

    panels = ([len(CORRUPTIONS)] if bench else []) + ([len(EXTRA_CORRUPTIONS) + 1] if extra else []) + [5]
    fig, axes = plt.subplots(1, len(panels), figsize=(2 + 0.55 * sum(panels), 4.2),
                             gridspec_kw={"width_ratios": panels})
    axes = list(axes)
    right = axes.pop()
    if bench:
        left = axes.pop(0)
        use_ce = all(f"ce_{c}" in r.metrics for r in bench for c in CORRUPTIONS)
        _bars(left, bench, CORRUPTIONS, "ce_{}" if use_ce else "err_{}", labeller(bench), color_of)
        if use_ce:
            left.axhline(100, color="black", linewidth=0.8, linestyle=":", label="AlexNet")
        left.set_ylabel("corruption error CE (%)" if use_ce else "top-1 error (%), mean over severities")
        left.set_title("the 15 corruptions of the mCE", fontsize=9)
        left.legend(fontsize=7)
        label = labeller(bench)
        for r in bench:
            right.plot(SEVERITIES, [r.metrics.get(f"err_severity_{s}", np.nan) for s in SEVERITIES], marker="o",
                       color=color_of(r), label=label(r))
    if extra:
        middle = axes.pop(0)
        _bars(middle, extra, EXTRA_CORRUPTIONS, "err_{}", labeller(extra), color_of)
        middle.set_ylabel("top-1 error (%), mean over severities")
        middle.set_title("extras, outside the mCE (no AlexNet CE)", fontsize=9)
        if not bench:
            middle.legend(fontsize=7)
        label = labeller(extra)
        for r in extra:
            right.plot(SEVERITIES, [r.metrics.get(f"extra_err_severity_{s}", np.nan) for s in SEVERITIES],
                       marker="s", linestyle="--", color=color_of(r), label=f"{label(r)}, extras")
    right.set_xticks(SEVERITIES)
    right.set_xlabel("severity")
    right.set_ylabel("top-1 error (%), mean over corruptions")
    right.legend(fontsize=6)
    fig.suptitle(f"{exp.title or exp.name}: ImageNet-C", fontsize=10)
    fig.tight_layout()
    with atomic_output(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return True
