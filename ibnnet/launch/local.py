"""Running the pending cells of a sweep one after another on this machine.

Each run is a child process (``python -m ibnnet run RUN_DIR``): a crash, a leak or DDP's re-launch of
its own command line stays inside that run, and the sweep goes on with the next cell.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from .rundir import RunFolder


def run_command(folder: RunFolder) -> list[str]:
    return [sys.executable, "-m", "ibnnet", "run", str(folder.path)]


def run_local(folders: list[RunFolder], stop_on_error: bool = False) -> dict[str, list[RunFolder]]:
    summary: dict[str, list[RunFolder]] = {"done": [], "skipped": [], "failed": []}
    pending = [f for f in folders if not f.is_done()]
    summary["skipped"] = [f for f in folders if f.is_done()]
    for i, folder in enumerate(pending, 1):
        print(f"\n[ibnnet] ({i}/{len(pending)}) {folder.path}", flush=True)
        start = time.time()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.run(run_command(folder), env=env)
        took = time.time() - start
        if proc.returncode == 0 and folder.is_done():
            summary["done"].append(folder)
            print(f"[ibnnet] finished in {took:.0f} s", flush=True)
        else:
            summary["failed"].append(folder)
            print(f"[ibnnet] FAILED (exit {proc.returncode}) after {took:.0f} s; log: {folder.log_path}", flush=True)
            if stop_on_error:
                break
    return summary
