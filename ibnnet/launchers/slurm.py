"""Sweeps as SLURM job arrays: one array task per run, ``srun`` for multi-GPU / multi-node DDP.

We write the batch scripts ourselves rather than using submitit: a job array is one ``sbatch``, the
script is plain text next to the runs for anyone to read or resubmit by hand, and ``srun`` starts one
process per device so that Lightning's SLURM environment sets up DDP (NCCL on GPUs, gloo on CPUs).
Requeueing is ibnnet's alone (see :mod:`ibnnet.runs.preemption`); Lightning's auto-requeue is off.

Layout: ``<paths.runs>/<experiment>/_slurm/<time>-<k>/job.sbatch`` with ``runs.txt`` (array index ->
run folder) and the batch shells' output; each run's training output goes to
``<run folder>/slurm-<array job>_<task>.out``.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from ..config import ConfigError
from ..config.emulation import physical_config
from ..errors import UserError
from ..experiments.grid import describe_cell
from ..files import atomic_write_text
from ..runs.folder import FAILED, INTERRUPTED, PENDING
from ..runs.env import PORTABLE_CPU_ENV
from ..runs.runner import check_device_support, prepare
from ..runs.status import SUBMITTED, live_status, skipped_failed_note


def gpus_per_node(cfg: DictConfig) -> int:
    """GPUs a node of this run asks SLURM for (``cfg`` as the processes run it, see physical_config): the
    setting, or by default one per process unless the run is CPU-only (trainer.accelerator=cpu). A GPU
    experiment must never be submitted without GPUs because nobody wrote the number down."""
    t, sl = cfg.trainer, cfg.launcher.slurm
    if sl.gpus_per_node is not None:
        return sl.gpus_per_node
    return 0 if t.accelerator == "cpu" or not isinstance(t.devices, int) else t.devices


def check_slurm_config(cfg: DictConfig, where: str) -> None:
    cfg = physical_config(cfg)
    t = cfg.trainer
    gpus = gpus_per_node(cfg)
    if not isinstance(t.devices, int):
        raise ConfigError(f"{where}: trainer.devices={t.devices!r}: must be a number under SLURM "
                          f"(one task per device, --ntasks-per-node)")
    if gpus and gpus != t.devices:
        raise ConfigError(f"{where}: launcher.slurm.gpus_per_node={gpus} must equal "
                          f"trainer.devices={t.devices} (one process per GPU)")
    if not gpus and t.accelerator in ("gpu", "cuda"):
        raise ConfigError(f"{where}: trainer.accelerator={t.accelerator} but launcher.slurm.gpus_per_node=0; "
                          f"request GPUs with launcher.slurm.gpus_per_node")
    if gpus and t.accelerator != "cpu":
        try:   # refused at submission rather than after the job waited in the queue (the GPU model is not known yet)
            check_device_support(cfg, "cuda")
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def resources_key(cfg: DictConfig) -> str:
    """Cells with equal keys can share one job array."""
    from omegaconf import OmegaConf
    cfg = physical_config(cfg)
    sl = OmegaConf.to_container(cfg.launcher.slurm, resolve=True)
    return json.dumps({"nodes": cfg.trainer.num_nodes, "devices": cfg.trainer.devices, **sl}, sort_keys=True)


def render_script(cfg: DictConfig, experiment: str, runs_file: Path, out_dir: Path, n_tasks: int) -> str:
    cfg = physical_config(cfg)
    t, sl = cfg.trainer, cfg.launcher.slurm
    throttle = f"%{sl.array_parallelism}" if sl.array_parallelism else ""
    opts = [
        f"--job-name=ibnnet-{experiment}",
        f"--array=0-{n_tasks - 1}{throttle}",
        f"--nodes={t.num_nodes}",
        f"--ntasks-per-node={t.devices}",
        f"--cpus-per-task={sl.cpus_per_task}",
        f"--time={sl.time}",
        f"--signal=USR1@{sl.signal_seconds}",   # to the srun tasks: checkpoint and requeue
        "--requeue",
        "--open-mode=append",                    # keep the output of earlier attempts after a requeue
        f"--output={out_dir}/%A_%a.out",
    ]
    if gpus_per_node(cfg):
        opts.append(f"--gpus-per-node={gpus_per_node(cfg)}")
    for key, flag in (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("mem", "mem"),
                      ("constraint", "constraint")):
        if sl[key]:
            opts.append(f"--{flag}={sl[key]}")
    opts += [o if o.startswith("-") else f"--{o}" for o in sl.extra_sbatch]
    python = sl.python or sys.executable
    lines = ["#!/bin/bash", f"# ibnnet sweep of {experiment}: {n_tasks} runs, written {time.strftime('%Y-%m-%d %H:%M:%S')}"]
    lines += [f"#SBATCH {o}" for o in opts]
    lines += ["", "set -euo pipefail"]
    if sl.setup.strip():
        lines += ["# setup (launcher.slurm.setup)", sl.setup.rstrip()]
    lines += [
        "",
        f'RUN_DIR=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(runs_file))})',
        'echo "[ibnnet] $(date -Is) job ${SLURM_JOB_ID} (array ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}, '
        'restart ${SLURM_RESTART_COUNT:-0}) on $(hostname): ${RUN_DIR}"',
        # The folder `ibnnet sweep` ran in, so relative paths (paths.data, paths.runs) mean what they meant
        # there; the interpreter brings ibnnet (no source checkout is needed on the nodes).
        f"cd {shlex.quote(str(Path.cwd()))}",
        "export PYTHONUNBUFFERED=1",
        *portable_exports(t.deterministic),
        "# one process per device; Lightning reads the SLURM environment for ranks and the master address.",
        "# srun gets the cores per task itself: since Slurm 22.05 it no longer inherits sbatch's --cpus-per-task,",
        "# and without it each task is bound to one core, starving its data-loader workers.",
        f'srun --kill-on-bad-exit=1 --cpus-per-task="${{SLURM_CPUS_PER_TASK:-{sl.cpus_per_task}}}" '
        f'{shlex.quote(python)} -m ibnnet run "$RUN_DIR" \\',
        '    >> "${RUN_DIR}/slurm-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}.out" 2>&1',
    ]
    return "\n".join(lines) + "\n"


def portable_exports(deterministic: bool) -> list[str]:
    """``export`` lines pinning the CPU kernels of a deterministic run to AVX2 (ibnnet/runs/env.py); on a node
    without AVX2 the run process records what it ran instead."""
    if not deterministic:
        return []
    lines = ["# deterministic: the same CPU kernels on every x86-64 node (ibnnet.runs.env.PORTABLE_CPU_ENV)"]
    return lines + [f"export {k}=${{{k}:-{shlex.quote(v)}}}" for k, v in PORTABLE_CPU_ENV.items()]


class SubmitError(UserError, RuntimeError):
    """``sbatch`` refused a job (unknown partition or account, limits); its own message is included."""


def sbatch(script: Path) -> str:
    proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SubmitError(f"sbatch {script} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]


def _run(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def scheduler_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM state of each ``<array job>_<task>`` (or plain job id), from squeue, sacct, then scontrol."""
    if not job_ids:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    states: dict[str, str] = {}
    out = _run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(arrays)])
    for line in (out or "").splitlines():
        jid, _, state = line.strip().partition("|")
        states[jid] = state
    missing = [j for j in job_ids if j not in states]
    if missing:
        out = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(arrays)])
        for line in (out or "").splitlines():
            jid, _, state = line.strip().partition("|")
            if jid in missing:
                states[jid] = state.split()[0] if state else state
    missing = [j for j in job_ids if j not in states]
    for array in sorted({j.split("_")[0] for j in missing}):
        out = _run(["scontrol", "-o", "show", "job", array])
        for line in (out or "").splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            jid = (f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}" if "ArrayTaskId" in fields
                   else fields.get("JobId", ""))
            if jid in missing:
                states[jid] = fields.get("JobState", "")
    return states


def sweep_slurm(exp, triples, dry_run: bool = False, retry_failed: bool = False) -> int:
    """Submit the cells that need it as one job array per resource group; never duplicate a live or done cell."""
    jobs = sorted({f.state().get("slurm_job") for _, _, f in triples} - {None})
    sched = scheduler_states(jobs) if jobs else {}
    todo, skipped, statuses = [], [], []
    for cell, cfg, folder in triples:
        status, info = live_status(folder, sched if jobs else None)
        statuses.append(status)
        check_slurm_config(cfg, f"{exp.path} (cell {cell.name})")
        never_ran = status == PENDING and not info.get("job")
        if status == FAILED and retry_failed or never_ran or status == INTERRUPTED:
            todo.append((cell, cfg, folder))
        else:
            note = " (use --retry-failed)" if status == FAILED else ""
            skipped.append(f"  {status:9s} {folder.path.name}{note}")
    if skipped:
        print("[ibnnet] not submitted:")
        print("\n".join(skipped))
    failed_before = sum(status == FAILED for status in statuses) if not retry_failed else 0
    if not todo:
        print("[ibnnet] nothing to submit")
        if failed_before:
            print(skipped_failed_note(failed_before))
        return 1 if failed_before and not dry_run else 0
    groups: dict[str, list] = {}
    for item in todo:
        groups.setdefault(resources_key(item[1]), []).append(item)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(todo[0][1].paths.runs).resolve() / todo[0][1].experiment / "_slurm"   # absolute in the script
    for k, members in enumerate(groups.values()):
        out_dir = root / f"{stamp}-{k}"
        runs_file = out_dir / "runs.txt"
        script = render_script(members[0][1], exp.name, runs_file, out_dir, len(members))
        if dry_run:
            print(f"\n# --- array {k}: {len(members)} runs (dry run: nothing written or submitted) ---")
            for i, (cell, cfg, folder) in enumerate(members):
                print(f"#   [{i}] {folder.path}  {describe_cell(cell, cfg)}")
            print(script)
            continue
        for _, cfg, _ in members:
            prepare(cfg)
        atomic_write_text(runs_file, "".join(f"{f.path.resolve()}\n" for _, _, f in members))
        atomic_write_text(out_dir / "job.sbatch", script)
        array_job = sbatch(out_dir / "job.sbatch")
        for i, (_, _, folder) in enumerate(members):
            folder.update_state(status=SUBMITTED, slurm_job=f"{array_job}_{i}", submitted_at=time.time(),
                                submission=str(out_dir / "job.sbatch"))
        print(f"[ibnnet] submitted job array {array_job} ({len(members)} runs): {out_dir / 'job.sbatch'}")
    if not dry_run:
        print(f"[ibnnet] follow it with: ibnnet status {exp.path}")
    if failed_before:
        print(skipped_failed_note(failed_before))
    return 1 if failed_before and not dry_run else 0
