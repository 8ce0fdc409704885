"""Claims: exactly one process trains a run folder at a time, whoever launched it.

Any number of workers (local ``ibnnet sweep`` processes on one or several machines sharing a file
system, SLURM array tasks, ``ibnnet run``) may try the same cell. The process that trains it holds a
claim, ``<run>/claims/claim-<generation>.json``:

- taking a claim is creating the next generation's file with ``O_CREAT | O_EXCL``, which is atomic on
  local file systems and on NFS (v3 and later); no lock daemon, no ``flock`` (unreliable on NFS);
- the holder touches its file every ``launcher.heartbeat_s`` (a daemon thread); a claim is stale when its
  heartbeat is older than ``launcher.claim_timeout_s``, at once when its process is gone on this host, or
  when it belongs to this very SLURM job (a requeued job restarting): then the next generation may be taken;
- releasing renames the file to ``.released``; a holder that finds a newer generation (it was frozen
  longer than the timeout and was taken over) exits at once without writing anything more.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("ibnnet")

CLAIM_DIR = "claims"
EXIT_CLAIMED = 3        # `ibnnet run` exit code: another live process holds the run
_NAME = re.compile(r"claim-(\d{6})\.(json|released)$")


@dataclass
class ClaimRecord:
    generation: int
    path: Path
    released: bool
    info: dict
    heartbeat: float    # mtime of the file: the holder's last sign of life

    def describe(self) -> str:
        i = self.info
        job = f", SLURM job {i['slurm_job']}" if i.get("slurm_job") else ""
        return f"{i.get('host', '?')} pid {i.get('pid', '?')}{job}, heartbeat {time.time() - self.heartbeat:.0f} s ago"


def _claims(run_path: Path) -> list[ClaimRecord]:
    folder = Path(run_path) / CLAIM_DIR
    out = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in entries:
        m = _NAME.match(entry.name)
        if not m:
            continue
        try:
            text = Path(entry.path).read_text()
            mtime = entry.stat().st_mtime
        except FileNotFoundError:   # released or renamed meanwhile
            continue
        try:
            info = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError:
            info = {}            # a claimer died between create and write: the file's age still counts
        out.append(ClaimRecord(int(m.group(1)), Path(entry.path), m.group(2) == "released", info, mtime))
    return sorted(out, key=lambda c: (c.generation, not c.released))


def current(run_path: Path) -> ClaimRecord | None:
    """The newest claim record (released or not), or None if the run was never claimed."""
    claims = _claims(run_path)
    return claims[-1] if claims else None


def _slurm_job_id() -> str | None:
    return os.environ.get("SLURM_JOB_ID")


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, TypeError, ValueError):
        return True   # exists but not ours, or unknown: not provably dead


def is_stale(claim: ClaimRecord, timeout_s: float) -> bool:
    if claim.released:
        return True
    i = claim.info
    if time.time() - claim.heartbeat > timeout_s:
        return True
    if i.get("host") == socket.gethostname() and i.get("pid") is not None and not _alive(i["pid"]):
        return True
    job = _slurm_job_id()
    # SLURM runs one incarnation of a job at a time: a claim of this job is its previous, dead incarnation.
    return bool(job and i.get("slurm_job") == job and i.get("pid") != os.getpid())


def holder(run_path: Path, timeout_s: float) -> ClaimRecord | None:
    """The live claim on a run, if any."""
    c = current(run_path)
    return c if c is not None and not is_stale(c, timeout_s) else None


class Claim:
    """A held claim; ``start_heartbeat`` keeps it alive, ``release`` gives it up."""

    def __init__(self, record: ClaimRecord, heartbeat_s: float):
        self.record = record
        self.heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> Path:
        return self.record.path

    def start_heartbeat(self) -> "Claim":
        self._thread = threading.Thread(target=self._beat, name="ibnnet-claim-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        run_path = self.path.parent.parent
        while not self._stop.wait(self.heartbeat_s):
            newest = current(run_path)
            if newest is not None and newest.generation > self.record.generation:
                log.error("%s: claim taken over by %s after this process missed its heartbeats; stopping "
                          "at once without writing anything", run_path, newest.describe())
                logging.shutdown()
                os._exit(EXIT_CLAIMED)
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            os.replace(self.path, self.path.with_suffix(".released"))
        except FileNotFoundError:
            pass


def try_claim(run_path: Path, heartbeat_s: float, timeout_s: float, info: dict | None = None) -> Claim | ClaimRecord:
    """Claim the run, or return the live claim that prevents it."""
    folder = Path(run_path) / CLAIM_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(5):   # lost races against other claimers: look again
        c = current(run_path)
        if c is not None and not is_stale(c, timeout_s):
            return c
        generation = (c.generation if c else 0) + 1
        path = folder / f"claim-{generation:06d}.json"
        record = dict(info or {}, host=socket.gethostname(), pid=os.getpid(), ppid=os.getppid(),
                      slurm_job=_slurm_job_id(), claimed_at=time.time(),
                      **({"took_over": c.info} if c is not None and not c.released else {}))
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        if c is not None and not c.released:
            log.warning("%s: took over the stale claim of %s", run_path, c.describe())
        return Claim(ClaimRecord(generation, path, False, record, time.time()), heartbeat_s)
    newest = current(run_path)
    assert newest is not None
    return newest
