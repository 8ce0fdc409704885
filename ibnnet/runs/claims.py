"""Claims: exactly one process trains a run folder at a time, whoever launched it.

Any number of workers (local ``ibnnet sweep`` processes on one or several machines sharing a file system,
several of them inside one SLURM allocation, SLURM array tasks, ``ibnnet run``) may try the same cell. The
process that trains it holds a claim, ``<run>/claims/claim-<generation>.json``:

- **Taking** a claim is creating the next generation's file with ``O_CREAT | O_EXCL``: atomic on local file
  systems and on NFS v3 and later; no lock daemon, no ``flock`` (unreliable on NFS). Claim files are never
  renamed or deleted, so a generation number is never taken twice.
- **Liveness** is the holder's heartbeat: every ``launcher.heartbeat_s`` it rewrites its file in place with a
  new beat count. A reader decides that a claim is stale only when it has *seen* the file's content stay the
  same for ``launcher.claim_timeout_s`` by its own monotonic clock: never by comparing a file time (the file
  server's clock) with its own, never by a SLURM job id that every process of an allocation shares. A claim
  is dead at once only when that is proven: released, its process gone on this host, or its SLURM job
  requeued since (a higher ``SLURM_RESTART_COUNT`` of the same job: SLURM runs one incarnation at a time).
- **A holder that cannot renew** its claim (ESTALE, EIO on NFS: retried every beat) for half the timeout stops
  itself, before any reader may see its claim as stale. A holder that finds a newer generation (it was frozen
  for longer than the timeout) stops at once.
- **Fencing**: every write of a checkpoint, ``state.json`` or ``metrics.json`` first checks, through
  :func:`fence`, that the writer's generation is still the newest and unreleased, and that its lease is fresh.
- **Hand-off**: a sweep worker claims a cell before starting its run process (so that workers never race for
  a cell after seconds of start-up) and hands the claim to that process through ``IBNNET_CLAIM``; the run
  process adopts it and beats from then on; the worker releases it should the process die without doing so.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("ibnnet")

CLAIM_DIR = "claims"
EXIT_CLAIMED = 3        # `ibnnet run` exit code: another live process holds the run, or this one lost it
HANDOFF_ENV = "IBNNET_CLAIM"
_NAME = re.compile(r"claim-(\d{6})\.(json|released)$")   # .released: files of ibnnet < 0.3, read as released
# A claim is rewritten in place, always this many bytes (JSON padded with spaces), with one pwrite: a reader
# sees the old record or the new one, never a file cut short by a truncate. Rewriting in place (not a rename)
# also keeps the file's inode, so NFS clients holding a handle to it never get ESTALE from our renewals.
RECORD_BYTES = 2048


class ClaimLost(RuntimeError):
    """This process no longer holds the run: another process took it over, or the claim could not be renewed
    in time. Nothing more may be written to the run folder."""


@dataclass
class ClaimRecord:
    generation: int
    path: Path
    released: bool
    info: dict
    raw: bytes = b""          # the file's content: a live holder changes it every heartbeat
    mtime: float = 0.0        # the file server's time of the last write: shown to people, never used to decide

    def describe(self) -> str:
        i = self.info
        job = f", SLURM job {i['slurm_job']}" if i.get("slurm_job") else ""
        beat = f", heartbeat {i['beat']}" if "beat" in i else ""
        return f"{i.get('host', '?')} pid {i.get('pid', '?')}{job}{beat}"


def _parse(raw: bytes) -> dict:
    """The record of a claim file; {} for anything that is not a JSON object (empty, cut short, ``[]``, bytes
    that are not UTF-8): such a claim is judged by its content changing, like any other."""
    try:
        info = json.loads(raw.decode("utf-8").strip() or "{}")
    except (UnicodeDecodeError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _claims(run_path: Path) -> list[ClaimRecord]:
    folder = Path(run_path) / CLAIM_DIR
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in names:
        m = _NAME.match(name)
        if not m:
            continue
        path = folder / name
        try:
            with open(path, "rb") as f:
                raw = f.read()
                mtime = os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            continue
        info = _parse(raw)
        released = m.group(2) == "released" or info.get("released") is True
        out.append(ClaimRecord(int(m.group(1)), path, released, info, raw, mtime))
    return sorted(out, key=lambda c: (c.generation, not c.released))


def current(run_path: Path) -> ClaimRecord | None:
    """The newest claim record (released or not), or None if the run was never claimed."""
    claims = _claims(run_path)
    return claims[-1] if claims else None


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, TypeError, ValueError):
        return True   # exists but not ours, or unknown: not provably dead


def _restart_count() -> int:
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


def provably_dead(claim: ClaimRecord) -> bool:
    """Released, or its holder certainly gone: its process on this host has exited, or the SLURM job that
    holds it has been requeued since (this process is a later incarnation of the same job)."""
    if claim.released:
        return True
    i = claim.info
    if i.get("host") == socket.gethostname() and i.get("pid") is not None and not _alive(i["pid"]):
        return True
    job = os.environ.get("SLURM_JOB_ID")
    # Every process of one allocation shares the job id (sweep workers, srun tasks): that alone proves nothing.
    # A restart count above the claim's does: SLURM starts a requeued job only after its last incarnation ended.
    if job and i.get("slurm_job") == job and isinstance(i.get("slurm_restart"), int):
        return i["slurm_restart"] < _restart_count()
    return False


@dataclass
class Observer:
    """What one reader has seen of claims over time, by its own monotonic clock: a claim whose content has
    not changed for ``timeout_s`` while this reader watched it is stale."""
    seen: dict = field(default_factory=dict)   # (run path, generation) -> (content, monotonic time first seen)

    def stale(self, claim: ClaimRecord, timeout_s: float) -> bool:
        if provably_dead(claim):
            return True
        key = (str(claim.path.parent.parent), claim.generation)
        now = time.monotonic()
        before = self.seen.get(key)
        if before is None or before[0] != claim.raw:
            self.seen[key] = (claim.raw, now)
            return False
        return now - before[1] >= timeout_s

    def free(self, run_path: Path, timeout_s: float) -> bool:
        c = current(run_path)
        return c is None or self.stale(c, timeout_s)


def holder(run_path: Path, observer: Observer | None = None, timeout_s: float = 300.0) -> ClaimRecord | None:
    """The claim that holds the run, if any. Without an ``observer`` (a one-shot look, e.g. ``ibnnet status``)
    every claim that is not provably dead holds it; with one, also not one the observer has seen stale."""
    c = current(run_path)
    if c is None or provably_dead(c):
        return None
    return None if observer is not None and observer.stale(c, timeout_s) else c


# Claims this process holds, by run folder: what fence() checks before a write.
_HELD: dict[str, "Claim"] = {}


def fence(path: Path) -> None:
    """Before writing ``path`` (a checkpoint, state.json, metrics.json): if this process holds the claim of the
    run folder it lies in, check that it still does. Raises :class:`ClaimLost` otherwise. A process that holds
    no claim on it (a DDP rank other than 0, ``ibnnet evaluate``) is not fenced."""
    p = Path(path).absolute()
    for folder in (p, *p.parents):
        claim = _HELD.get(str(folder))
        if claim is not None:
            claim.check()
            return


class Claim:
    """A held claim: ``start_heartbeat`` keeps it alive, ``check`` fences writes, ``release`` gives it up."""

    def __init__(self, record: ClaimRecord, heartbeat_s: float, timeout_s: float, token: str | None = None):
        self.record = record
        self.heartbeat_s = heartbeat_s
        self.timeout_s = timeout_s
        self.token = token or secrets.token_hex(8)
        self.beat = 0
        self.handed_off = False      # adopted by the run process this worker started: it beats from then on
        self._last_renewal = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        _HELD[str(self.run_path)] = self

    @property
    def path(self) -> Path:
        return self.record.path

    @property
    def run_path(self) -> Path:
        return self.record.path.parent.parent.absolute()

    @property
    def generation(self) -> int:
        return self.record.generation

    @property
    def lease_s(self) -> float:
        """How long this process may go without a successful renewal: half the timeout, so it stops (and
        stops writing) well before any reader, watching for the full timeout, may take the run over."""
        return self.timeout_s / 2

    def _content(self, released: bool = False) -> bytes:
        info = dict(self.record.info, beat=self.beat, token=self.token, released=released)
        data = json.dumps(info).encode()
        if len(data) > RECORD_BYTES:
            raise ValueError(f"{self.path}: claim record of {len(data)} bytes exceeds {RECORD_BYTES}")
        return data.ljust(RECORD_BYTES)

    def _write(self, released: bool = False) -> None:
        with self._lock:
            self.beat += 1
            data = self._content(released)
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.pwrite(fd, data, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._last_renewal = time.monotonic()

    def renew(self) -> None:
        """One heartbeat: rewrite the record with the next beat count."""
        self._write()

    def first_write(self) -> bool:
        """The record, written at once (retried a few times); False if it could not be (ESTALE, EIO)."""
        for attempt in range(5):
            try:
                self.renew()
                return True
            except OSError as e:
                error = e
                time.sleep(0.05 * (attempt + 1))
        log.warning("%s: could not write the claim record (%s)", self.run_path, error)
        return False

    def check(self) -> None:
        """Raise :class:`ClaimLost` unless this process still holds the run: its generation is the newest, not
        released, carries its token, and was renewed within the lease."""
        if self.handed_off:
            raise ClaimLost(f"{self.run_path}: claim {self.generation} was handed to the run process")
        idle = time.monotonic() - self._last_renewal
        if idle > self.lease_s:
            raise ClaimLost(f"{self.run_path}: claim {self.generation} not renewed for {idle:.0f} s "
                            f"(lease {self.lease_s:.0f} s); another worker may take the run over")
        newest = current(self.run_path)
        if newest is None or newest.generation != self.generation or newest.released \
                or newest.info.get("token") != self.token:
            other = newest.describe() if newest is not None else "nobody (its claim files are gone)"
            raise ClaimLost(f"{self.run_path}: claim {self.generation} was taken over by {other}")

    def start_heartbeat(self) -> "Claim":
        self._thread = threading.Thread(target=self._beat, name="ibnnet-claim-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        failing_since = None
        while not self._stop.wait(self.heartbeat_s):
            try:
                newest = current(self.run_path)
                if newest is not None and newest.generation == self.generation \
                        and newest.info.get("token") == self.token and newest.info.get("pid") != os.getpid():
                    self.handed_off = True   # the run process adopted it and beats itself
                    return
                if newest is not None and newest.generation > self.generation:
                    self._exit(f"claim taken over by {newest.describe()} after this process missed its heartbeats")
                self.renew()
                if failing_since is not None:
                    log.warning("%s: claim renewed again after %.0f s of errors", self.run_path,
                                time.monotonic() - failing_since)
                failing_since = None
            except Exception as e:   # ESTALE, EIO, a full disk: retried each beat until the lease runs out
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("%s: could not renew the claim (%s: %s); retrying every %g s", self.run_path,
                                type(e).__name__, e, self.heartbeat_s)
            idle = time.monotonic() - self._last_renewal
            if idle > self.lease_s:
                self._exit(f"could not renew the claim for {idle:.1f} s (half of launcher.claim_timeout_s)")

    def _exit(self, why: str) -> None:
        log.error("%s: %s; stopping at once without writing anything more (the run resumes from its last "
                  "checkpoint wherever it is taken up)", self.run_path, why)
        logging.shutdown()
        os._exit(EXIT_CLAIMED)

    def handoff_env(self) -> dict[str, str]:
        """The environment variable through which the run process this worker starts adopts the claim."""
        return {HANDOFF_ENV: json.dumps({"run": str(self.run_path), "generation": self.generation,
                                         "token": self.token})}

    def release(self) -> None:
        """Give the claim up (marks it released, so others may take the run at once), if still ours."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        _HELD.pop(str(self.run_path), None)
        newest = current(self.run_path)
        if newest is None or newest.generation != self.generation or newest.released \
                or newest.info.get("token") != self.token:
            return   # taken over, or already released by the process it was handed to
        pid = newest.info.get("pid")
        if pid != os.getpid() and newest.info.get("host") == socket.gethostname() and _alive(pid):
            return   # the run process it was handed to still lives: it releases the claim itself
        try:
            self.record.info["pid"] = os.getpid()
            self._write(released=True)
        except OSError as e:
            log.warning("%s: could not mark the claim released (%s); others take it over after "
                        "launcher.claim_timeout_s", self.run_path, e)


def _record(info: dict | None, took_over: ClaimRecord | None) -> dict:
    record = dict(info or {}, host=socket.gethostname(), pid=os.getpid(), ppid=os.getppid(),
                  slurm_job=os.environ.get("SLURM_JOB_ID"), slurm_restart=_restart_count(), claimed_at=time.time())
    if took_over is not None and not took_over.released:
        record["took_over"] = {k: took_over.info.get(k) for k in ("host", "pid", "slurm_job", "beat")} \
            | {"generation": took_over.generation}
    return record


def adopt(run_path: Path, heartbeat_s: float, timeout_s: float) -> Claim | None:
    """The claim a sweep worker took for this process (``IBNNET_CLAIM``), now held by this process; None when
    there is none for this run, or it is no longer the newest (the worker died and the run was taken over)."""
    raw = os.environ.pop(HANDOFF_ENV, None)   # popped: processes this one starts must not adopt it too
    if not raw:
        return None
    try:
        handed = json.loads(raw)
        if Path(handed["run"]).resolve() != Path(run_path).resolve():
            return None
    except (ValueError, KeyError, TypeError, OSError):
        return None
    newest = current(run_path)
    if newest is None or newest.generation != handed.get("generation") or newest.released \
            or newest.info.get("token") != handed.get("token"):
        return None
    record = ClaimRecord(newest.generation, newest.path, False, _record(None, None) | {"adopted_from": newest.info.get("pid")})
    claim = Claim(record, heartbeat_s, timeout_s, token=handed["token"])
    if not claim.first_write():
        # The record still names the worker: were it to die now, its claim would look dead and be taken over while
        # this process trains. Not adopted: the worker keeps it, and this process asks like anyone else.
        _HELD.pop(str(claim.run_path), None)
        return None
    return claim


def _watch(run_path: Path, c: ClaimRecord, observer: Observer, heartbeat_s: float,
           timeout_s: float) -> ClaimRecord | None:
    """Watch claim ``c`` until its content changes (returns the newer record: its holder is alive, unless it
    was released meanwhile) or it has been seen unchanged for ``timeout_s`` (returns None: stale)."""
    while not observer.stale(c, timeout_s):
        time.sleep(min(1.0, heartbeat_s / 4))
        newest = current(run_path)
        if newest is None or newest.generation != c.generation or newest.raw != c.raw:
            return newest
    return None


def try_claim(run_path: Path, heartbeat_s: float, timeout_s: float, info: dict | None = None,
              observer: Observer | None = None, wait: bool = False) -> Claim | ClaimRecord:
    """Claim the run, or return the live claim that prevents it.

    A claim that is not provably dead is taken over only once it has been seen unchanged for ``timeout_s``:
    by ``observer`` over its earlier looks, or, with ``wait``, by watching it here (a live holder's next
    heartbeat ends the wait within ``heartbeat_s`` of it; a dead one's ends it after ``timeout_s``).
    """
    folder = Path(run_path) / CLAIM_DIR
    folder.mkdir(parents=True, exist_ok=True)
    observer = observer or Observer()
    for _ in range(20):   # lost races against other claimers: look again
        c = current(run_path)
        if c is not None and not observer.stale(c, timeout_s):
            if not wait:
                return c
            c = _watch(run_path, c, observer, heartbeat_s, timeout_s)
            if c is not None and not provably_dead(c):
                return c   # its holder beat while we watched: alive
            continue       # dead (unchanged for the timeout, released, or its process gone): look again, claim
        generation = (c.generation if c else 0) + 1
        path = folder / f"claim-{generation:06d}.json"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        claim = Claim(ClaimRecord(generation, path, False, _record(info, c)), heartbeat_s, timeout_s)
        # If this fails, the heartbeat goes on trying and the lease, counted from now, stops this process in time;
        # meanwhile the empty file is judged by its (unchanging) content, like any other.
        claim.first_write()
        if c is not None and not c.released:
            log.warning("%s: took over the stale claim of %s", run_path, c.describe())
        return claim
    newest = current(run_path)
    assert newest is not None
    return newest
