"""``ibnnet sync``: upload the offline wandb runs of an experiment's run folders, once each.

Compute nodes often have no internet: runs log with ``logger=offline`` (or fall back to offline when
the server is unreachable, see :mod:`.loggers`), which leaves ``<run folder>/wandb/offline-run-*/``
directories (one per attempt: a resumed run adds one).  On a machine with internet (the login node)
``ibnnet sync EXPERIMENT`` hands each run folder's unsynced ones to ``wandb sync`` (the installed wandb's
own uploader; attempts of one run are replayed in order into the same wandb run).

An offline run counts as uploaded only when ``wandb sync`` exited 0 *and* wrote its ``.wandb.synced``
marker next to the run's ``.wandb`` file (wandb exits 0 even when the server was unreachable).  Uploaded
ones are recorded in ``<run folder>/wandb/synced.json`` (written atomically), so running the command
again skips them without starting wandb; a failure records nothing, is reported with wandb's reason,
and the command exits non-zero.  Runs still being trained are left for later.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from urllib.parse import urlsplit

from ..errors import UserError
from ..files import atomic_write_json, read_json
from .folder import RUNNING, RunFolder

RECORD = "synced.json"
SYNCED, ALREADY, NOTHING, LIVE, FAILED = "synced", "already synced", "no offline runs", "running", "failed"


@dataclass
class SyncOutcome:
    folder: RunFolder
    status: str
    detail: str = ""
    runs: list[str] = field(default_factory=list)   # the offline-run directories concerned


def offline_runs(folder: RunFolder) -> list[Path]:
    """The run folder's offline wandb runs (directories holding a ``.wandb`` file), oldest first."""
    root = folder.path / "wandb"
    if not root.is_dir():
        return []
    return sorted(d for d in root.glob("offline-run-*") if d.is_dir() and any(d.glob("*.wandb")))


def record_path(folder: RunFolder) -> Path:
    return folder.path / "wandb" / RECORD


def synced_runs(folder: RunFolder) -> dict[str, dict]:
    record = read_json(record_path(folder))
    runs = record.get("runs") if isinstance(record, dict) else None
    return runs if isinstance(runs, dict) else {}


def unsynced_runs(folder: RunFolder) -> list[Path]:
    done = synced_runs(folder)
    return [d for d in offline_runs(folder) if d.name not in done]


def marked_synced(run: Path) -> bool:
    """wandb's own proof of a finished upload: ``<run>.wandb.synced`` beside every ``.wandb`` file."""
    files = list(run.glob("*.wandb"))
    return bool(files) and all(f.with_suffix(".wandb.synced").exists() for f in files)


DEFAULT_SERVER = "https://api.wandb.ai"


def wandb_server() -> str:
    """The server ``wandb sync`` uploads to: ``WANDB_BASE_URL`` as wandb reads it, else wandb's cloud."""
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_SERVER


def unreachable(url: str, timeout_s: float = 10.0) -> str | None:
    """Why this machine cannot open a connection to ``url`` (through ``HTTPS_PROXY``/``HTTP_PROXY`` when set,
    as wandb would), or None when it can. A compute node without internet fails here in seconds, where
    ``wandb sync`` would retry for minutes per run folder."""
    parts = urlsplit(url)
    proxy = (os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")) if parts.scheme == "https" else \
        (os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy"))
    target = urlsplit(proxy if "://" in (proxy or "") else f"http://{proxy}") if proxy else parts
    host = target.hostname or ""
    port = target.port or (443 if target.scheme == "https" else 80)
    via = f" (through the proxy {host}:{port})" if proxy else ""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except socket.gaierror as e:
        return f"cannot resolve {host}{via}: {e.strerror or e}"
    except ConnectionRefusedError:
        return f"connection refused by {host}:{port}{via}"
    except TimeoutError:
        return f"no answer from {host}:{port}{via} within {timeout_s:g} s"
    except OSError as e:
        return f"cannot connect to {host}:{port}{via}: {e.strerror or e}"
    return None


def check_network(url: str | None = None, timeout_s: float = 10.0) -> None:
    """One line, once, when the wandb server cannot be reached: not one timeout per run folder."""
    url = url or wandb_server()
    why = unreachable(url, timeout_s)
    if why is not None:
        raise UserError(f"cannot reach the wandb server {url} ({why}); nothing was uploaded. Run `ibnnet sync` "
                        f"on a machine with internet (a login node); the offline runs stay where they are")


def run_wandb_sync(runs: list[Path], timeout_s: float | None) -> tuple[int | None, str]:
    """``python -m wandb sync RUN...``: (exit code, or None on timeout; its output).

    It runs in the run folder, so wandb's own sync logs land in ``<run folder>/wandb/logs/``."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}   # offline/disabled would not upload
    runs = [Path(r).resolve() for r in runs]
    cmd = [sys.executable, "-m", "wandb", "sync", *map(str, runs)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=runs[0].parent.parent, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s or None)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # wandb sync and the wandb-core service it started
        except ProcessLookupError:
            pass
        out, _ = proc.communicate()
        return None, out


def failure_reason(code: int | None, output: str, timeout_s: float | None) -> str:
    """One line from wandb's output that says why (its ERROR lines), or what we know."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    lines = [ln[len("wandb:"):].strip() if ln.startswith("wandb:") else ln for ln in lines]
    errors = [ln for ln in lines if "error" in ln.lower() and "find detailed error logs" not in ln.lower()]
    said = errors[0] if errors else (lines[-1] if lines else "no output")
    if code is None:
        return f"wandb sync timed out after {timeout_s:g} s (last: {said})"
    if code != 0:
        return f"wandb sync exited {code}: {said}"
    return f"wandb sync did not mark the run uploaded: {said}"


def _record(folder: RunFolder, runs: list[Path]) -> None:
    done = synced_runs(folder)
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    for run in runs:
        done[run.name] = {"synced_at": now, "host": socket.gethostname()}
    atomic_write_json(record_path(folder), {"run_dir": str(folder.path.resolve()), "runs": done})


def sync_folder(folder: RunFolder, status: str, timeout_s: float | None = 600.0) -> SyncOutcome:
    """Upload ``folder``'s unsynced offline runs (``status``: its live status, see :mod:`.status`)."""
    if not offline_runs(folder):
        return SyncOutcome(folder, NOTHING)
    todo = unsynced_runs(folder)
    if not todo:
        return SyncOutcome(folder, ALREADY, f"{len(synced_runs(folder))} offline run(s) in wandb/{RECORD}")
    if status == RUNNING:
        return SyncOutcome(folder, LIVE, "still training; sync it when it has stopped", [d.name for d in todo])
    code, output = run_wandb_sync(todo, timeout_s)
    uploaded = [d for d in todo if marked_synced(d)] if code == 0 else []
    if uploaded:
        _record(folder, uploaded)
    missing = [d for d in todo if d not in uploaded]
    if missing:
        reason = failure_reason(code, output, timeout_s)
        if "no api key" in reason.lower():
            raise UserError(f"wandb has no API key on this machine ({reason}): set WANDB_API_KEY or run "
                            f"`wandb login`, then `ibnnet sync` again")
        return SyncOutcome(folder, FAILED, reason, [d.name for d in missing])
    return SyncOutcome(folder, SYNCED, f"{len(uploaded)} offline run(s)", [d.name for d in uploaded])


__all__ = ["RECORD", "SyncOutcome", "check_network", "unreachable", "wandb_server", "offline_runs", "unsynced_runs", "synced_runs", "sync_folder",
           "run_wandb_sync", "marked_synced"]
