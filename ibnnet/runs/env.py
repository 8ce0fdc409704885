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

    The most specific source wins; a process inherits every variable of the one that started it, so a
    launcher's per-process variables come before those of the scheduler task it runs in.
    """
    env = os.environ
    # torchrun / torchelastic: the global rank, set for each process it starts (also when torchrun itself runs
    # as an srun task, whose SLURM_PROCID all its processes then share).
    if "RANK" in env:
        return int(env["RANK"]) == 0
    # Lightning's _SubprocessScriptLauncher (DDP without SLURMEnvironment: a plain machine, an sbatch script,
    # one srun task): it sets LOCAL_RANK=0 and NODE_RANK in itself and starts local ranks 1..N-1 as copies of
    # the command with LOCAL_RANK set. They inherit the SLURM_PROCID=0 of the task that started them.
    if "LOCAL_RANK" in env or "NODE_RANK" in env:
        return int(env.get("LOCAL_RANK", "0")) == 0 and int(env.get("NODE_RANK", "0")) == 0
    # srun: one task per rank (Lightning's SLURMEnvironment takes SLURM_PROCID as the global rank). Only inside
    # a job step is it this task's own; elsewhere (sbatch's batch script: 0) there is one process.
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]) == 0
    return True


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


# --- one instruction set for deterministic CPU runs ------------------------------------------------------------
# PyTorch dispatches its CPU kernels per instruction set (ATen's vectorised kernels, oneDNN's convolutions, MKL's
# BLAS): the same run gives other float sums, and after a few hundred steps other numbers, on an AVX-512 Xeon than
# on an AVX2-only EPYC. A deterministic run pins all three to AVX2, which every x86-64 server since 2013 has. Each
# library reads its variable once, when it first runs a kernel, so they must be in the environment of the process
# before torch is imported: the launchers put them there, and `ibnnet run` / `ibnnet train` started without them
# restart themselves with them (ibnnet/cli.py).
PORTABLE_CPU_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",    # ATen's CPU kernel dispatch (default / avx2 / avx512)
    "ONEDNN_MAX_CPU_ISA": "AVX2",     # the highest ISA oneDNN's JIT kernels may use
    "MKL_CBWR": "AVX2,STRICT",        # MKL's conditional numerical reproducibility (STRICT: also the BLAS-1/2 paths)
}
NATIVE_ISA_ENV = "IBNNET_CPU_ISA"     # =native: leave the dispatch to each library (faster on AVX-512, not portable)


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def portable_cpu_env(deterministic: bool) -> dict[str, str]:
    """The variables a run process needs before torch loads: :data:`PORTABLE_CPU_ENV` for a deterministic run on
    an x86-64 CPU with AVX2 (unless ``IBNNET_CPU_ISA=native``), nothing otherwise. Values the user already set
    win (a user pinning ``ATEN_CPU_CAPABILITY=default`` gets that, recorded in metrics.json)."""
    if not deterministic or os.environ.get(NATIVE_ISA_ENV, "").lower() == "native":
        return {}
    if platform.machine().lower() not in ("x86_64", "amd64") or not {"avx2", "fma"} <= _cpu_flags():
        return {}
    return {k: os.environ.get(k, v) for k, v in PORTABLE_CPU_ENV.items()}


def needs_portable_restart(deterministic: bool) -> dict[str, str] | None:
    """The environment to restart this process with, when a deterministic run would start without its pinned
    instruction set (None when nothing is missing)."""
    wanted = portable_cpu_env(deterministic)
    if all(os.environ.get(k) == v for k, v in wanted.items()):
        return None
    return dict(os.environ, **wanted)


def cpu_isa_record() -> dict[str, object]:
    """What the CPU kernels dispatched to in this process, for metrics.json's ``reproducibility``."""
    import torch
    dispatch = torch.backends.cpu.get_cpu_capability()
    env = {k: os.environ.get(k) for k in PORTABLE_CPU_ENV}
    return {"aten_dispatch": dispatch, "env": env,
            "portable": dispatch == "AVX2" and all(env[k] == v for k, v in PORTABLE_CPU_ENV.items())}
