"""Run folders: stable ids, the resolved config, state, checkpoints and the final metrics.

``<paths.runs>/<experiment>/<run id>/``
    config.yaml        the resolved, validated configuration
    state.json         pending/running/failed/done, attempts (host, job id, start/end), last error
    metrics.json       written once, atomically, when the run has finished: it marks the run done
    checkpoints/       last.ckpt, best.ckpt (and preempt.ckpt, written on a SLURM signal until the run ends)
    logs/metrics.csv   Lightning's CSV log;  wandb/  the wandb run (offline or synced)
    train.log          the run's own log
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..errors import UserError
from ..files import atomic_write_json, atomic_write_text, read_json, sanitize
from .claims import fence

log = logging.getLogger("ibnnet")

# Settings that do not change what a run computes: changing them must not change its id.
_NOT_HASHED = ("paths", "logger", "launcher", "experiment", "scale", "run_name", "grid", "trainer.enable_progress_bar",
               "trainer.log_every_n_steps", "data.num_workers", "trainer.num_threads", "trainer.log_sample_indices")
_NOT_HASHED_DATASET_KEYS = ("root",)   # moving a dataset does not change results
# Dataset keys added after runs existed: at their default they stay out of the hash, so those runs keep their ids.
_HASHED_WHEN_SET_DATASET_KEYS = {"eval_size": None, "corruptions": None, "severities": None, "sizes": None}
# Other keys added after runs existed, hashed only away from their default (which keeps the old behaviour).
_HASHED_WHEN_SET = {"trainer.best_metric": None}

DONE, RUNNING, FAILED, PENDING, REQUEUED = "done", "running", "failed", "pending", "requeued"
INTERRUPTED = "interrupted"   # stopped by SIGTERM outside SLURM after a checkpoint: the next sweep resumes it
BROKEN = "broken"             # metrics.json or state.json unreadable: shown as such, the rest still renders
RESUMABLE = ("preempt.ckpt", "last.ckpt", "last.prev.ckpt")   # newest first when equally new
# The temporary files a killed writer leaves, per folder of a run: ``.<name>.<mkstemp letters or pid>.tmp`` from
# ibnnet.files' atomic writes and AtomicCheckpointIO (runs/callbacks.py), only for files the process holding the
# run writes. config.yaml is not among them: any sweep may be refreshing it while the run trains.
_PARTIAL = {
    "": re.compile(r"\.(state|metrics)\.json\.[a-z0-9_]+\.tmp"),
    "checkpoints": re.compile(r"\.[^/]+\.ckpt\.[a-z0-9_]+\.tmp"),
    "logs": re.compile(r"\.(metrics\.csv|samples-rank\d+\.jsonl)\.[a-z0-9_]+\.tmp"),
}


def hashed_content(cfg: DictConfig) -> dict[str, Any]:
    plain = OmegaConf.to_container(cfg, resolve=True)
    for dotted in _NOT_HASHED:
        parts = dotted.split(".")
        node = plain
        for p in parts[:-1]:
            node = node.get(p, {})
        node.pop(parts[-1], None)
    for dotted, default in _HASHED_WHEN_SET.items():
        section, key = dotted.split(".")
        if plain.get(section, {}).get(key, default) == default:
            plain.get(section, {}).pop(key, None)
    specs = [plain["data"]["train"]] + list(plain["data"]["val"])
    for spec in specs:
        for k in _NOT_HASHED_DATASET_KEYS:
            spec.pop(k, None)
        for k, default in _HASHED_WHEN_SET_DATASET_KEYS.items():
            if k in spec and spec[k] == default:
                del spec[k]
    return plain


def config_hash(cfg: DictConfig) -> str:
    canonical = json.dumps(hashed_content(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(canonical.encode()).hexdigest()[:8]


def run_id(cfg: DictConfig) -> str:
    readable = cfg.run_name or cfg.model.name
    return f"{sanitize(readable)}-{config_hash(cfg)}"


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.runs) / sanitize(cfg.experiment) / run_id(cfg)


class CheckpointError(UserError, RuntimeError):
    """No checkpoint of a run can be read; the message names the files and what to do."""


def checkpoint_problem(path: Path) -> str | None:
    """None if ``path`` loads as a Lightning checkpoint (tensors memory-mapped, not read), else why not."""
    from ..models.weights import WeightsError, read_checkpoint
    try:
        ckpt = read_checkpoint(path, mmap=True)
    except WeightsError as e:   # one line: the file is named by the caller
        return str(e).removeprefix(f"{path}: ")
    if not isinstance(ckpt, dict):
        return f"not a training checkpoint (a {type(ckpt).__name__})"
    missing = [k for k in ("state_dict", "global_step", "epoch") if k not in ckpt]
    return f"not a training checkpoint (no {', '.join(missing)})" if missing else None


@dataclass
class RunFolder:
    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    def is_done(self) -> bool:
        """Finished: metrics.json exists and is readable (a damaged one makes the run resume and rewrite it)."""
        return self.metrics_path.is_file() and isinstance(read_json(self.metrics_path), dict)

    def failed_before(self) -> bool:
        """Not finished and recorded as failed: sweeps skip it unless told to retry failed runs."""
        return not self.is_done() and self.state().get("status") == FAILED

    def metrics(self) -> dict | None:
        return read_json(self.metrics_path)

    def state(self) -> dict:
        return read_json(self.state_path) or {"status": PENDING, "attempts": []}

    def problem(self) -> str | None:
        """What is wrong with the folder's own files, if anything (for status and tables)."""
        for path in (self.metrics_path, self.state_path):
            if path.is_file() and not isinstance(read_json(path), dict):
                return f"{path.name} is unreadable (damaged or cut short); rerun the sweep to rebuild it"
        return None

    def write_config(self, cfg: DictConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, OmegaConf.to_yaml(cfg, resolve=True, sort_keys=False))

    def update_state(self, **changes: Any) -> dict:
        state = self.state()
        state.update(changes)
        state["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        fence(self.state_path)   # a process that was taken over writes nothing more
        atomic_write_json(self.state_path, state)
        return state

    def start_attempt(self, info: dict) -> dict:
        state = self.state()
        attempts = state.get("attempts", [])
        attempts.append(dict(info, start=time.time()))
        return self.update_state(status=RUNNING, attempts=attempts, error=None)

    def end_attempt(self, status: str, error: str | None = None) -> dict:
        state = self.state()
        attempts = state.get("attempts", [])
        if attempts and "end" not in attempts[-1]:
            attempts[-1]["end"] = time.time()
            attempts[-1]["status"] = status
        return self.update_state(status=status, attempts=attempts, error=error)

    def wall_time(self) -> float:
        total = 0.0
        for a in self.state().get("attempts", []):
            total += a.get("end", time.time()) - a.get("start", time.time())
        return total

    def remove_partial_files(self) -> list[Path]:
        """Remove the temporary files that writers killed mid-write left in the run folder, checkpoints/ and
        logs/ (a SIGKILL never reaches their clean-up); returns them. Only for the process holding the run's
        claim: a live writer of these files would be that process itself."""
        removed = []
        for sub, pattern in _PARTIAL.items():
            try:
                entries = list(os.scandir(self.path / sub))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    Path(entry.path).unlink(missing_ok=True)
                    removed.append(Path(entry.path))
        if removed:
            log.info("removed %d partial file(s) of an interrupted attempt: %s", len(removed),
                     ", ".join(str(p.relative_to(self.path)) for p in removed))
        return removed

    def resume_checkpoint(self) -> Path | None:
        """The newest readable of preempt.ckpt (saved on a signal), last.ckpt (end of epoch) and
        last.prev.ckpt (the epoch before). An unreadable one (cut short by a full disk, damaged) is
        renamed ``*.unreadable`` with a warning and the next one is used; if none is readable but some
        exist, :class:`CheckpointError` says which files and what to do."""
        present = [self.checkpoint_dir / n for n in RESUMABLE if (self.checkpoint_dir / n).is_file()]
        present.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        bad = []
        for path in present:
            problem = checkpoint_problem(path)
            if problem is None:
                for b, why in bad:
                    log.warning("%s is unreadable (%s): moved aside, resuming from %s", b, why, path.name)
                    os.replace(b, b.with_name(b.name + ".unreadable"))
                return path
            bad.append((path, problem))
        if bad:
            listing = "; ".join(f"{p.name}: {why}" for p, why in bad)
            raise CheckpointError(f"{self.checkpoint_dir}: no readable checkpoint to resume from ({listing}). "
                                  f"Restore one, or delete them to restart this run from scratch")
        return None

    def log_tail(self, lines: int = 15) -> str:
        candidates = [self.log_path] + sorted(self.path.glob("slurm-*.out"), key=lambda p: p.stat().st_mtime)
        existing = [p for p in candidates if p.is_file()]
        if not existing:
            return ""
        newest = max(existing, key=lambda p: p.stat().st_mtime)
        text = newest.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])
