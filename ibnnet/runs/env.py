"""Facts about the process and the code recorded with every result."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

from ..config.shipped import source_checkout

_PACKAGES = ("ibnnet", "torch", "torchvision", "timm", "pytorch-lightning", "torchmetrics", "omegaconf", "wandb",
             "numpy")


def is_rank_zero() -> bool:
    """Whether this process writes run state, before any process group exists.

    torchrun sets RANK, srun sets SLURM_PROCID, and Lightning's own launcher starts the extra local
    processes with LOCAL_RANK/NODE_RANK set.
    """
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var]) == 0
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    import torch
    import torchvision
    # with the local build tag (e.g. +cu132): CPU and CUDA builds of one version can compute differently
    out["torch"], out["torchvision"] = torch.__version__, torchvision.__version__
    return out


def git_state(root: Path | None = None) -> dict[str, object]:
    """The commit of the checkout ibnnet runs from; ``installed`` (no commit) for a wheel, whose version
    in ``versions`` says what ran (never the git state of whatever folder a wheel happens to sit in)."""
    root = root or source_checkout()
    if root is None:
        return {"commit": None, "dirty": None, "installed": True}

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(dirty) if dirty is not None else None}


def host() -> str:
    return socket.gethostname()


def slurm_job() -> dict[str, str]:
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_NNODES",
            "SLURM_NTASKS")
    return {k: os.environ[k] for k in keys if k in os.environ}
