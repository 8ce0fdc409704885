"""The state of a cell: its run folder, merged with the scheduler's view when it was submitted to SLURM."""
from __future__ import annotations

import time

from . import claims
from .folder import BROKEN, DONE, FAILED, INTERRUPTED, PENDING, REQUEUED, RUNNING, RunFolder

SUBMITTED = "submitted"
UNKNOWN = "unknown"   # submitted to SLURM, which could not be asked (squeue/sacct failed): neither pending nor failed
_ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
           "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
_RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT"}


def skipped_failed_note(n: int) -> str:
    """What a sweep says when it left failed runs alone (it then exits non-zero: nothing was rerun)."""
    cells = "1 failed cell" if n == 1 else f"{n} failed cells"
    return f"[ibnnet] {cells} skipped: --retry-failed reruns {'it' if n == 1 else 'them'}"


class SchedulerView(dict):
    """SLURM's answer for some jobs: job id ("123_4") -> state (squeue's, else sacct's or scontrol's).

    ``unreachable``: why the controller could not be asked (squeue failed: not installed, slurmctld down, timed
    out), else None; a job it did not report is then unknown, not gone. ``reasons``: squeue's pending reason
    (``%r``: Resources, Priority, JobHeldUser, PartitionConfig, ...) of the jobs that have one."""

    def __init__(self, states=(), unreachable: str | None = None, reasons: dict[str, str] | None = None):
        super().__init__(states)
        self.unreachable = unreachable
        self.reasons = dict(reasons or {})


def live_status(folder: RunFolder, scheduler: dict[str, str] | None = None,
                claim_timeout_s: float = 300.0) -> tuple[str, dict]:
    """(done | running | requeued | interrupted | pending | failed | unknown | broken, details).

    ``scheduler`` maps SLURM job ids ("123_4") to states (a :class:`SchedulerView`, or a plain dict); a job the
    scheduler has finished that left no metrics.json failed, whatever the run's own state file last said (a
    killed process cannot write it), and a job it still holds is pending, running or requeued. A job the
    scheduler could not be asked about is unknown.
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
        unreachable = getattr(scheduler, "unreachable", None)
        if sched is None and unreachable:
            # Not asked is not gone: the job may still be queued or running, and resubmitting it would run it twice.
            info["note"] = f"could not ask SLURM about it ({unreachable}); it may still be queued or running"
            return UNKNOWN, info
        info["scheduler"] = sched or "not known to SLURM"
        reason = getattr(scheduler, "reasons", {}).get(job)
        if reason and sched not in _RUNNING:
            info["scheduler"] += f", reason {reason}"
        if sched in _ACTIVE:
            if status == FAILED:   # the run recorded its error (a resubmission would have made it "submitted")
                info["note"] = "its job is still ending"
                return FAILED, info
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

