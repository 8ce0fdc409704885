"""The ImageNet-C figure of an experiment: which corruptions each model resists, and how errors grow with severity.

Drawn from the ImageNet-C summaries in the run folders (``metrics.json``, the spec's own name, see
:func:`ibnnet.data.datasets.robustness.imagenet_c_summary`): left, the corruption error CE of each of the 15
corruptions (AlexNet = 100) per model, or the mean error per corruption where CE is not defined (a class
subset, missing severities); right, the mean error over corruptions at each severity.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..files import atomic_output

if TYPE_CHECKING:
    from ..experiments.grid import Experiment
    from .records import Record


def render_corruption_figure(exp: Experiment, records: list[Record], path: Path) -> bool:
    """Write ``path`` if any finished run has an ImageNet-C summary; returns whether it did."""
    from ..data.datasets.robustness import CORRUPTIONS, SEVERITIES
    runs = [r for r in records if any(k.startswith("err_severity_") for k in r.metrics)]
    if not runs:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    use_ce = all(f"ce_{c}" in r.metrics for r in runs for c in CORRUPTIONS)
    key = "ce_{}" if use_ce else "err_{}"
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [3, 1]})
    x = np.arange(len(CORRUPTIONS))
    width = 0.8 / len(runs)
    for j, r in enumerate(runs):
        label = " ".join(r.labels.values()) or r.run_id
        if len({x.eval for x in runs}) > 1:
            label += f" ({r.eval})"
        values = [r.metrics.get(key.format(c), np.nan) for c in CORRUPTIONS]
        left.bar(x - 0.4 + width * (j + 0.5), values, width * 0.9, label=label)
        right.plot(SEVERITIES, [r.metrics.get(f"err_severity_{s}", np.nan) for s in SEVERITIES], marker="o",
                   label=label)
    if use_ce:
        left.axhline(100, color="black", linewidth=0.8, linestyle=":", label="AlexNet")
    left.set_xticks(x, [c.replace("_", " ") for c in CORRUPTIONS], rotation=35, ha="right", fontsize=8)
    left.set_ylabel("corruption error CE (%)" if use_ce else "top-1 error (%), mean over severities")
    left.legend(fontsize=7)
    right.set_xticks(SEVERITIES)
    right.set_xlabel("severity")
    right.set_ylabel("top-1 error (%), mean over corruptions")
    fig.suptitle(f"{exp.title or exp.name}: ImageNet-C", fontsize=10)
    fig.tight_layout()
    with atomic_output(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return True
