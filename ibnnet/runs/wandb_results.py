"""Results in wandb, beside the training curves the run's logger writes (ibnnet/runs/loggers.py).

- A finished run's wandb summary holds its ``metrics.json``, flattened under the same names
  (``metrics/<eval set>/<metric>``, ``best/epoch``, ``best/metrics/<eval set>/<metric>``, ``metrics_moving_average/…``,
  ``wall_time_s``, ``reproducibility/…``): what a table is made of can be filtered and compared in wandb.
- ``ibnnet table``, ``analyze`` and ``plot`` log their table and figures to one wandb run per experiment (and scale),
  in the sweep's group, kept offline in ``<results dir>/wandb/``; ``ibnnet sync`` uploads them with the runs.

Offline first: compute nodes and the tests have no network, and an upload is one command later. A wandb failure
is a warning, never a lost table.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .folder import sanitize

log = logging.getLogger("ibnnet")

Scalar = (bool, int, float, str)


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``metrics.json`` as ``{"a/b/c": value}``: numbers, strings and lists of them; nested dicts joined by '/'."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_metrics(value, name + "/"))
        elif value is None or isinstance(value, Scalar):
            out[name] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, Scalar) for v in value):
            out[name] = list(value)
    return out


def publish_run_summary(loggers: list, metrics: dict[str, Any], checkpoints: list[Path] | None = None) -> None:
    """Put a finished run's ``metrics.json`` into the summary of its wandb run (each wandb logger of ``loggers``);
    ``checkpoints``: files to log as a reference artifact (``logger.wandb.checkpoints: reference``)."""
    from pytorch_lightning.loggers import WandbLogger
    for logger in loggers:
        if not isinstance(logger, WandbLogger) or getattr(logger, "_broken", False):
            continue
        try:
            run = logger.experiment
            if hasattr(run, "summary"):
                run.summary.update(flatten_metrics(metrics))
            files = [Path(c) for c in checkpoints or [] if Path(c).is_file()]
            if files and hasattr(run, "log_artifact"):
                import wandb
                artifact = wandb.Artifact(f"checkpoints-{run.id}", type="model",
                                          metadata={"run_id": metrics.get("run_id"), "epochs": metrics.get("epochs")})
                for path in files:   # a reference: the URI and checksum, never the bytes
                    artifact.add_reference(f"file://{path.resolve()}", name=path.name)
                run.log_artifact(artifact)
        except Exception as e:   # the result is in metrics.json already; wandb is a copy of it
            log.warning("wandb: could not write the run's summary (%s: %s); metrics.json has it",
                        type(e).__name__, e)


def results_run_id(experiment: str, scale: str | None) -> str:
    return sanitize(f"{experiment}-{scale or 'default'}-results", 128).replace("=", "-").replace(".", "_")


def publish_results(cfg, experiment: str, scale: str | None, out_dir: Path, *, table: dict | None = None,
                    images: dict[str, Path] | None = None, summary: dict[str, Any] | None = None) -> Path | None:
    """Log a table (``{"columns": [...], "rows": [[...], ...]}``), figures (name -> PNG) and summary values to the
    experiment's results run, offline in ``out_dir/wandb``; its folder, or None when wandb is disabled or failed.

    ``cfg``: a run config of the experiment (its ``logger.wandb`` project, entity, tags and mode)."""
    from .loggers import wandb_mode
    w = cfg.logger.wandb
    if wandb_mode(w) == "disabled":
        return None
    images = {k: Path(v) for k, v in (images or {}).items() if Path(v).is_file()}
    try:
        import wandb
        out_dir.mkdir(parents=True, exist_ok=True)
        previous = set((out_dir / "wandb").glob("offline-run-*"))
        os.environ.setdefault("WANDB_SILENT", "true")   # its own `wandb sync` hint would contradict `ibnnet sync`
        run = wandb.init(project=w.project, entity=w.entity, group=experiment, job_type="results",
                         name=f"{experiment} results" + (f" ({scale})" if scale else ""),
                         id=results_run_id(experiment, scale), resume="allow", dir=str(out_dir), mode="offline",
                         tags=list(w.tags), config={"experiment": experiment, "scale": scale},
                         reinit="create_new", settings=wandb.Settings(console="off", save_code=False,
                                                                         x_disable_stats=True))
        try:
            logged: dict[str, Any] = {name: wandb.Image(str(path)) for name, path in images.items()}
            if table is not None:
                logged["table"] = wandb.Table(columns=list(table["columns"]), data=[list(r) for r in table["rows"]])
            if logged:
                run.log(logged)
            if summary:
                run.summary.update(summary)
        finally:
            run.finish()
            if wandb.run is None:   # no training run of this process to keep: wait until the files are written
                wandb.teardown()
        new = sorted(set((out_dir / "wandb").glob("offline-run-*")) - previous)
        return new[-1] if new else None
    except Exception as e:
        log.warning("wandb: could not log %s to the experiment's results run (%s: %s); the files are in %s",
                    ", ".join([*(["the table"] if table else []), *images]) or "results", type(e).__name__, e,
                    out_dir)
        return None


__all__ = ["flatten_metrics", "publish_results", "publish_run_summary", "results_run_id"]
