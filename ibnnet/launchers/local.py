"""Local sweep workers: run the cells of a grid that nobody else is running, until none is left.

Each run is a child process (``python -m ibnnet run RUN_DIR``): a crash, a leak or DDP's re-launch of
its own command line stays inside that run, and the worker goes on with the next cell. Any number of
workers may share one grid (``--workers N``, several ``ibnnet sweep`` commands, machines sharing the
runs folder, SLURM array tasks beside them): the run process claims its folder (:mod:`.claims`), so a
cell is trained by one process at a time; a worker waits for cells that others hold and takes over the
claim of a worker that died, resuming its run from the last checkpoint.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from ..runs import claims
from ..runs.env import portable_cpu_env
from ..runs.folder import FAILED, RunFolder


def run_command(folder: RunFolder) -> list[str]:
    return [sys.executable, "-m", "ibnnet", "run", str(folder.path)]


def run_environment(folder: RunFolder, env: dict[str, str] | None = None) -> dict[str, str]:
    """The run process's environment: the worker's, unbuffered, and for a deterministic run the CPU kernels
    pinned to one instruction set (:func:`ibnnet.runs.env.portable_cpu_env`), set before its torch loads."""
    from omegaconf import OmegaConf
    base = dict(env or os.environ, PYTHONUNBUFFERED="1")
    try:
        deterministic = bool(OmegaConf.select(OmegaConf.load(folder.config_path), "trainer.deterministic"))
    except (OSError, ValueError):   # the run process reports an unreadable config itself
        deterministic = False
    base.update(portable_cpu_env(deterministic))
    return base


class StopSignals:
    """SIGINT / SIGTERM to a worker: pass it on to the run process it started (once: a terminal's Ctrl-C does
    not reach that process itself, which runs in its own process group), let it checkpoint, take no new cell."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.child: subprocess.Popen | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        child = self.child
        if child is not None and child.poll() is None:
            print(f"[ibnnet] {signal.Signals(signum).name}: stopping the run (it checkpoints first)", flush=True)
            try:
                os.killpg(child.pid, signum)   # its group: DDP ranks Lightning started stop alike
            except ProcessLookupError:
                pass

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    @property
    def exit_code(self) -> int | None:
        return None if self.signum is None else 128 + self.signum


def _take_a_cell(cells: list[RunFolder], observer: claims.Observer, heartbeat_s: float,
                 claim_timeout_s: float) -> tuple[RunFolder, claims.Claim] | None:
    """Claim the first cell nobody holds, here, before its run process starts: workers that started together
    never race for one cell through seconds of interpreter start-up."""
    for folder in cells:
        if not observer.free(folder.path, claim_timeout_s):
            continue
        got = claims.try_claim(folder.path, heartbeat_s, claim_timeout_s, observer=observer)
        if not isinstance(got, claims.Claim):
            continue
        if folder.is_done():   # finished by another worker between our look and our claim
            got.release()
            continue
        return folder, got
    return None


def run_local(folders: list[RunFolder], stop_on_error: bool = False, retry_failed: bool = False,
              claim_timeout_s: float = 300.0, heartbeat_s: float = 10.0, poll_s: float = 2.0,
              env: dict[str, str] | None = None, max_restarts: int = 2) -> dict[str, Any]:
    """One worker. ``done``: finished here; ``skipped``: finished before or by others; ``failed``;
    ``failed_before``: failed in an earlier sweep and left alone (without ``retry_failed``); ``interrupted``:
    stopped by a signal after a checkpoint (the next sweep resumes them). A run process killed outright (OOM
    killer, SIGKILL) is started again, resuming from its checkpoint, at most ``max_restarts`` times."""
    summary: dict[str, Any] = {"done": [], "skipped": [], "failed": [], "failed_before": [],
                                           "interrupted": []}
    summary["skipped"] = [f for f in folders if f.is_done()]
    if not retry_failed:
        summary["failed_before"] = [f for f in folders if f.failed_before()]
    tried: set[str] = set()        # cells this worker ran to an error or an interruption: not again
    killed: dict[str, int] = {}    # cells whose run process was killed by a signal, and how often
    lost: dict[str, int] = {}      # cells whose run process exited without (or after losing) the claim
    observer = claims.Observer()   # claims seen over time: stale only when seen unchanged for the timeout
    stop = StopSignals().install()
    waiting_note = 0.0
    try:
        while stop.signum is None:
            open_cells = [f for f in folders if not f.is_done() and str(f.path) not in tried
                          and (retry_failed or f.state().get("status") != FAILED)]
            if not open_cells:
                break
            taken = _take_a_cell(open_cells, observer, heartbeat_s, claim_timeout_s)
            if taken is None:   # everything left is being trained elsewhere: wait, take over if a holder dies
                if time.time() - waiting_note > 60:
                    print(f"[ibnnet] waiting for {len(open_cells)} run(s) held by other workers", flush=True)
                    waiting_note = time.time()
                time.sleep(poll_s)
                continue
            folder, claim = taken
            n_done = sum(f.is_done() for f in folders)
            print(f"\n[ibnnet] ({n_done + 1}/{len(folders)}) {folder.path}", flush=True)
            start = time.time()
            claim.start_heartbeat()   # until the run process adopts the claim
            try:
                proc = subprocess.Popen(run_command(folder), process_group=0,
                                        env={**run_environment(folder, env), **claim.handoff_env()})
                stop.child = proc
                if stop.signum is not None:   # a signal came while it started
                    os.killpg(proc.pid, stop.signum)
                returncode = proc.wait()
            finally:
                stop.child = None
                claim.release()   # if the run process died without releasing it
            took = time.time() - start
            if returncode == claims.EXIT_CLAIMED:   # it lost the claim (taken over) or could not adopt it
                lost[str(folder.path)] = lost.get(str(folder.path), 0) + 1
                if lost[str(folder.path)] >= 3:   # something keeps it from its claim (an unwritable claims/ ...)
                    tried.add(str(folder.path))
                    print(f"[ibnnet] {folder.path}: its run process could not keep the claim 3 times; leaving it "
                          f"(see its train.log and {folder.path / claims.CLAIM_DIR})", flush=True)
                continue                      # pick again
            if folder.is_done():
                summary["done"].append(folder)
                print(f"[ibnnet] finished in {took:.0f} s", flush=True)
                continue
            if folder.state().get("status") == FAILED:   # the run recorded its error
                tried.add(str(folder.path))
                summary["failed"].append(folder)
                print(f"[ibnnet] FAILED (exit {returncode}) after {took:.0f} s; log: {folder.log_path}", flush=True)
                if stop_on_error:
                    break
                continue
            if returncode < 0 and stop.signum is None and killed.get(str(folder.path), 0) < max_restarts:
                killed[str(folder.path)] = killed.get(str(folder.path), 0) + 1
                print(f"[ibnnet] its process was killed ({signal.Signals(-returncode).name}) after {took:.0f} s; "
                      f"resuming it from its last checkpoint", flush=True)
                continue
            tried.add(str(folder.path))
            summary["interrupted"].append(folder)
            print(f"[ibnnet] interrupted (exit {returncode}) after {took:.0f} s; the next sweep resumes it", flush=True)
    finally:
        stop.restore()
    done_here = {str(f.path) for f in summary["done"]}
    summary["skipped"] += [f for f in folders if f.is_done() and str(f.path) not in done_here
                           and f not in summary["skipped"]]
    summary["signal"] = stop.signum
    return summary


def visible_gpus() -> list[str]:
    """The GPUs this process may hand out: ``CUDA_VISIBLE_DEVICES`` if set, else every device torch sees."""
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus is not None:
        return [g.strip() for g in gpus.split(",") if g.strip()]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())]


def gpus_per_run(cfgs) -> int | None:
    """GPUs one run of these cells takes: the largest ``trainer.devices`` of the processes each starts
    (after ``trainer.physical_devices`` emulation); 0 when every cell trains on CPU; None for ``devices=auto``
    (every visible GPU)."""
    from ..config.emulation import physical_config
    need: int | None = 0
    for cfg in cfgs:
        t = physical_config(cfg).trainer
        if t.accelerator == "cpu":
            continue
        if not isinstance(t.devices, int):
            return None
        need = max(need, t.devices)
    return need


def worker_environments(n: int, cfgs=(), visible: list[str] | None = None) -> list[dict[str, str]]:
    """The environment of each of ``n`` local workers running the cells ``cfgs``: on a GPU machine each worker
    gets its own ``trainer.devices`` GPUs (``visible``: the GPUs to share out, default :func:`visible_gpus`).

    Raises :class:`ConfigError` when ``n`` workers need more GPUs than are visible, saying how many fit.
    """
    from ..config import ConfigError
    visible = visible_gpus() if visible is None else list(visible)
    per = gpus_per_run(cfgs)
    if per is None:
        per, key = len(visible), "trainer.devices=auto (every visible GPU)"
    else:
        key = f"trainer.devices={per}"
    envs = [dict(os.environ, IBNNET_WORKER=str(i)) for i in range(n)]
    if not visible or per == 0:
        return envs   # CPU runs (or no GPU here): nothing to share out
    if n * per > len(visible):
        raise ConfigError(f"--workers {n}: each run takes {key} of the {len(visible)} visible GPUs "
                          f"({','.join(visible)}); at most {len(visible) // per} worker(s) fit "
                          f"(or lower trainer.devices, e.g. with trainer.physical_devices)")
    for i, env in enumerate(envs):
        env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[i * per:(i + 1) * per])
    return envs
