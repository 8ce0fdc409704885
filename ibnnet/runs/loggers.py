"""Loggers of a run: a CSV log always, wandb unless disabled (offline without an API key).

A wandb failure (no network, a broken install, a full disk) is reported once and then ignored: it
must never end a training run.
"""
from __future__ import annotations

import csv
import io
import logging
import netrc
import os
from functools import wraps
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import DummyExperiment

from ..files import atomic_write_text
from .folder import RunFolder, sanitize

log = logging.getLogger("ibnnet")


def has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
        return bool(netrc.netrc(path).authenticators(os.environ.get("WANDB_BASE_URL_HOST", "api.wandb.ai")))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(w) -> str:
    if not w.enabled or w.mode == "disabled":
        return "disabled"
    if w.mode != "auto":
        return w.mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled", "dryrun"):
        return "offline" if env == "dryrun" else env
    return "online" if has_wandb_key() else "offline"


def wandb_run_id(cfg, run_id: str) -> str:
    # wandb ids must be unique per project and free of '/', so the experiment goes in front.
    return sanitize(f"{cfg.experiment}-{run_id}", 128).replace("=", "-").replace(".", "_").replace("+", "p")


_NO_EXPERIMENT = DummyExperiment()


class FailSafeWandbLogger(WandbLogger):
    """WandbLogger whose every call is guarded: the first error disables it with a warning."""

    _guarded = ("log_metrics", "log_hyperparams", "finalize", "after_save_checkpoint", "log_graph", "save")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Lightning always passes wandb.init an `anonymous` setting, which wandb 0.19+ only warns about.
        self._wandb_init.pop("anonymous", None)
        self._broken = False
        for name in self._guarded:
            setattr(self, name, self._guard(getattr(self, name)))

    @property
    def experiment(self):
        """The wandb run. If wandb cannot start it (server unreachable, bad key), the run is started
        offline instead (``wandb sync`` uploads it later); if even that fails, wandb is switched off."""
        if self._experiment is not None or self._broken:
            return super().experiment if not self._broken else _NO_EXPERIMENT
        try:
            return super().experiment
        except Exception as e:
            log.warning("wandb could not start the run (%s: %s); logging it offline instead",
                        type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
            self._experiment = None
            self._wandb_init["mode"] = "offline"
            try:   # drop what the failed online attempt left in this process, or the id is "in use"
                import wandb
                wandb.teardown()
            except Exception:
                pass
        try:
            return super().experiment
        except Exception as e:
            self._broken = True
            log.warning("wandb failed offline too (%s: %s); continuing without wandb, the CSV log is complete",
                        type(e).__name__, e)
            return _NO_EXPERIMENT

    def _guard(self, fn):
        @wraps(fn)
        def call(*args, **kwargs):
            if self._broken:
                return None
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # any wandb problem: keep training, keep the CSV log
                self._broken = True
                log.warning("wandb failed (%s: %s); continuing without wandb, the CSV log is complete",
                            type(e).__name__, e)
                return None
        return call


class _ResumingWriter(ExperimentWriter):
    """Appends to an existing metrics.csv instead of deleting it (Lightning's default on restart).

    Rows logged at or after the step of the checkpoint we resume from are dropped: those steps are trained
    again and would otherwise appear twice (an epoch's rows carry its last batch's step, below the next
    checkpoint's). The file is only ever replaced whole, never rewritten in place: a kill while the kept rows
    are written would otherwise leave a truncated log.
    """

    def __init__(self, log_dir: str, resume_step: int | None):
        self._resume_step = resume_step
        super().__init__(log_dir)

    def _read(self) -> tuple[list[str], list[dict[str, str]]]:
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)

    def _replace(self, header: list[str], rows: list[dict[str, str]]) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.metrics_file_path, text.getvalue())

    def _check_log_dir_exists(self) -> None:
        if not os.path.isfile(self.metrics_file_path):
            return
        header, rows = self._read()
        if self._resume_step is None:
            rows = []  # a fresh start: the old log belongs to a run that is being redone
        else:
            rows = [r for r in rows if r.get("step", "") == "" or int(float(r["step"])) < self._resume_step]
        self._replace(header, rows)
        self.metrics_keys = sorted(header)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        # Lightning rewrites the file in place when a new key appears (the first validation, the final evaluation)
        self._replace(fieldnames, self._read()[1])


class ResumingCSVLogger(CSVLogger):
    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._resume_step = resume_step

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingWriter(log_dir=self.log_dir, resume_step=self._resume_step)
        return self._experiment


def build_loggers(cfg, folder: RunFolder, run_id: str, resume_step: int | None = None) -> list[Logger]:
    loggers: list[Logger] = []
    if cfg.logger.csv:
        loggers.append(ResumingCSVLogger(save_dir=str(folder.path), name="logs", version="", resume_step=resume_step))
    mode = wandb_mode(cfg.logger.wandb)
    if mode != "disabled":
        w = cfg.logger.wandb
        tags = [sanitize(f"{k}={v}", 64) for k, v in (cfg.grid or {}).items()] + list(w.tags)
        try:
            loggers.append(FailSafeWandbLogger(
                project=w.project, entity=w.entity, name=run_id, id=wandb_run_id(cfg, run_id), resume="allow",
                group=cfg.experiment, job_type=cfg.task, tags=tags, save_dir=str(folder.path), mode=mode,
                config={"run_id": run_id}))
        except Exception as e:
            log.warning("wandb logger unavailable (%s: %s); logging to CSV only", type(e).__name__, e)
    return loggers
