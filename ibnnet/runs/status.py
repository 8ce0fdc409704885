"""The state of a cell: its run folder, merged with the scheduler's view when it was submitted to SLURM."""
from __future__ import annotations

import time

from . import claims
from .folder import BROKEN, DONE, FAILED, INTERRUPTED, PENDING, REQUEUED, RUNNING, RunFolder

SUBMITTED = "submitted"
_ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
           "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
_RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT"}


def skipped_failed_note(n: int) -> str:
    """What a sweep says when it left failed runs alone (it then exits non-zero: nothing was rerun)."""
    cells = "1 failed cell" if n == 1 else f"{n} failed cells"
    return f"[ibnnet] {cells} skipped: --retry-failed reruns {'it' if n == 1 else 'them'}"


def live_status(folder: RunFolder, scheduler: dict[str, str] | None = None,
                claim_timeout_s: float = 300.0) -> tuple[str, dict]:
    """(done | running | requeued | interrupted | pending | failed | broken, details).

    ``scheduler`` maps SLURM job ids ("123_4") to states; a job the scheduler has finished that left
    no metrics.json failed, whatever the run's own state file last said (a killed process cannot
    write it), and a job it still holds is pending, running or requeued.
    """
    if folder.is_done():
        return DONE, {}
    state = folder.state()
    status = state.get("status", PENDING)
    job = state.get("slurm_job")
    info: dict = {"job": job} if job else {}
    live = claims.holder(folder.path)
    if live is not None:   # whoever launched it (a local worker, a SLURM task), a claim not proven dead is the truth
        info["holder"] = live.describe()
        quiet = time.time() - live.mtime
        if quiet > claim_timeout_s:   # a hint only (the file server's clock): takeover waits for an observed timeout
            info["note"] = (f"no heartbeat for about {quiet:.0f} s; a worker takes it over once it has seen none for "
                            f"launcher.claim_timeout_s ({claim_timeout_s:g} s)")
        return RUNNING, info
    problem = folder.problem()
    if problem:
        info["note"] = problem
        return BROKEN, info
    if job and scheduler is not None:
        sched = scheduler.get(job)
        info["scheduler"] = sched or "unknown"
        if sched in _ACTIVE:
            if sched in _RUNNING:
                return RUNNING, info
            return (REQUEUED if status == REQUEUED or "REQUEUE" in sched else PENDING), info
        if sched is not None or status in (SUBMITTED, RUNNING, REQUEUED):
            # finished (or forgotten) by the scheduler without a result
            return FAILED, info
    if status == SUBMITTED:
        return PENDING, info
    if status == DONE:   # recorded done, but metrics.json is missing (an older version wrote the state first)
        info["note"] = "recorded done but its metrics.json is missing; the next sweep evaluates it again"
        return INTERRUPTED, info
    if status == RUNNING:
        # No claim holds it (released, or its process gone): the process ended without recording why (SIGKILL,
        # OOM, a node lost). Not failed: sweeps resume it from its last checkpoint.
        info["note"] = "its process is gone; the next sweep resumes it"
        return INTERRUPTED, info
    return status, info

