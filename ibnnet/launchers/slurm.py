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
import re
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
from ..files import atomic_write_text, sanitize
from ..runs.folder import FAILED, INTERRUPTED, PENDING
from ..runs.env import PORTABLE_CPU_ENV
from ..runs.runner import check_device_support, prepare
from ..runs.status import SUBMITTED, UNKNOWN, SchedulerView, live_status, skipped_failed_note


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


_PLAIN = re.compile(r"[A-Za-z0-9._/:@,=+%-]*")


def _one_line(value, key: str) -> str:
    value = str(value)
    if re.search(r"[\x00-\x1f\x7f]", value):   # a newline would end the #SBATCH line: the rest runs as shell
        raise ConfigError(f"{key}={value!r}: a control character (newline) cannot go into an #SBATCH line")
    return value


def _directive(flag: str, value, key: str, pattern: str | None = None) -> str:
    """``--flag=value`` for an ``#SBATCH`` line, which sbatch splits at blanks (a double-quoted value is one word)
    and which must stay one line. ``pattern``: ``value`` is a folder and this sbatch filename pattern follows it;
    sbatch expands ``%`` in the whole, so the folder's own ``%`` are doubled (``%%`` is a literal %)."""
    value = _one_line(value, key)
    if '"' in value:
        raise ConfigError(f"{key}={value!r}: a double quote cannot go into an #SBATCH line's value")
    if pattern is not None:
        value = value.replace("%", "%%") + pattern
    return f"--{flag}={value}" if _PLAIN.fullmatch(value) else f'--{flag}="{value}"'


def render_script(cfg: DictConfig, experiment: str, runs_file: Path, out_dir: Path, n_tasks: int) -> str:
    """The job array's batch script: every value from the config or a path is quoted for sbatch or the shell."""
    cfg = physical_config(cfg)
    t, sl = cfg.trainer, cfg.launcher.slurm
    throttle = f"%{sl.array_parallelism}" if sl.array_parallelism else ""
    opts = [
        _directive("job-name", f"ibnnet-{experiment}", "experiment"),
        f"--array=0-{n_tasks - 1}{throttle}",
        f"--nodes={t.num_nodes}",
        f"--ntasks-per-node={t.devices}",
        f"--cpus-per-task={sl.cpus_per_task}",
        _directive("time", sl.time, "launcher.slurm.time"),
        f"--signal=USR1@{sl.signal_seconds}",   # to the srun tasks: checkpoint and requeue
        "--requeue",
        "--open-mode=append",                    # keep the output of earlier attempts after a requeue
        _directive("output", out_dir, "paths.runs", pattern="/%A_%a.out"),
    ]
    if gpus_per_node(cfg):
        opts.append(f"--gpus-per-node={gpus_per_node(cfg)}")
    for key in ("partition", "account", "qos", "mem", "constraint"):
        if sl[key]:
            opts.append(_directive(key, sl[key], f"launcher.slurm.{key}"))
    for o in sl.extra_sbatch:   # verbatim options (the user's own quoting), but each on one line
        o = _one_line(o, "launcher.slurm.extra_sbatch")
        opts.append(o if o.startswith("-") else f"--{o}")
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


def _ask(cmd: list[str], timeout: float = 60) -> tuple[str | None, str]:
    """(stdout, "") when the command ran and exited 0, else (None, why not in one line)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return None, f"{cmd[0]}: command not found"
    except subprocess.TimeoutExpired:
        return None, f"{cmd[0]}: no answer in {timeout:g} s"
    except OSError as e:
        return None, f"{cmd[0]}: {e}"
    if proc.returncode == 0:
        return proc.stdout, ""
    said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    last = said[-1].strip() if said else f"exit code {proc.returncode}"
    return None, last if last.startswith(cmd[0]) else f"{cmd[0]}: {last}"


def scheduler_states(job_ids: list[str]) -> SchedulerView:
    """SLURM state of each ``<array job>_<task>`` (or plain job id), from squeue, sacct, then scontrol, with
    squeue's pending reasons. When squeue cannot reach the controller, the view says so (``unreachable``): the
    jobs nobody reported are then unknown, not finished."""
    if not job_ids:
        return SchedulerView()
    arrays = sorted({j.split("_")[0] for j in job_ids})
    states: dict[str, str] = {}
    reasons: dict[str, str] = {}
    out, why = _ask(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(arrays)])
    # squeue exits 1 with "Invalid job id specified" when the controller knows none of the jobs: an answer (gone)
    answered = out is not None or "Invalid job id" in why
    for line in (out or "").splitlines():
        jid, state, reason = (line.strip().split("|") + ["", ""])[:3]
        states[jid] = state
        if reason and reason != "None":
            reasons[jid] = reason
    missing = [j for j in job_ids if j not in states]
    if missing:
        out, _ = _ask(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(arrays)])
        for line in (out or "").splitlines():
            jid, _, state = line.strip().partition("|")
            if jid in missing:
                states[jid] = state.split()[0] if state else state
    missing = [j for j in job_ids if j not in states]
    for array in sorted({j.split("_")[0] for j in missing}):
        out, _ = _ask(["scontrol", "-o", "show", "job", array])
        for line in (out or "").splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            jid = (f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}" if "ArrayTaskId" in fields
                   else fields.get("JobId", ""))
            if jid in missing:
                states[jid] = fields.get("JobState", "")
    return SchedulerView(states, None if answered else why, reasons)


def check_can_start(cfg: DictConfig, script: str, where: str) -> None:
    """Refuse a job array that SLURM would queue but could never start (it would pend forever with
    Reason=PartitionConfig): ``sbatch --test-only`` judges the very script; when it refuses, the partition's
    nodes (sinfo) tell which setting is too large and what would fit."""
    try:
        proc = subprocess.run(["sbatch", "--test-only"], input=script, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SubmitError(f"{where}: sbatch: command not found; submit from a machine with SLURM's commands "
                          f"(a login node)") from None
    except subprocess.TimeoutExpired:
        raise SubmitError(f"{where}: sbatch --test-only did not answer in 60 s; nothing was submitted") from None
    if proc.returncode == 0:
        return
    said = "; ".join(ln.strip() for ln in (proc.stderr.strip() or proc.stdout.strip()).splitlines() if ln.strip())
    problems = partition_problems(cfg)
    if problems:
        raise ConfigError(f"{where}: the job could never start ({said or 'sbatch --test-only refused it'}): "
                          f"{'; '.join(problems)}; nothing was submitted")
    raise SubmitError(f"{where}: sbatch --test-only refused the job, nothing was submitted: {said}")


def _seconds(text: str) -> float | None:
    """A SLURM time (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``; ``infinite``) in seconds."""
    text = text.strip()
    if text in ("infinite", "UNLIMITED", "unlimited", "NONE", "n/a", ""):
        return None
    days, _, rest = text.rpartition("-")
    try:
        parts = [int(p) for p in rest.split(":")]
        d = int(days) if days else 0
    except ValueError:
        return None
    if days:   # D-H, D-H:M, D-H:M:S
        h, m, sec = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        h, m, sec = parts
    else:      # M or M:S
        h, (m, sec) = 0, (parts + [0])[:2]
    return float(((d * 24 + h) * 60 + m) * 60 + sec)


def _megabytes(text: str) -> float | None:
    """sbatch's --mem (``4000``, ``64G``, ``1T``; megabytes without a unit) in MB."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", text.strip().upper())
    if not m:
        return None
    return float(m.group(1)) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}[m.group(2)]


def partition_problems(cfg: DictConfig) -> list[str]:
    """Which of the job's requests no node of its partition (the default one unless launcher.slurm.partition)
    can meet, each naming the key and a value that fits; [] when sinfo does not answer or all fit."""
    cfg = physical_config(cfg)
    t, sl = cfg.trainer, cfg.launcher.slurm
    out, _ = _ask(["sinfo", "-h", "-N", "-o", "%P|%N|%c|%m|%G|%l"])
    if out is None:
        return []
    wanted = set(str(sl.partition).split(",")) if sl.partition else None
    nodes: dict[str, tuple[int, float, int]] = {}
    limits, names = set(), set()
    for line in out.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 6:
            continue
        part, node, cpus, mem, gres, limit = fields
        if (part.rstrip("*") in wanted) if wanted else part.endswith("*"):
            gpus = sum(int(n) for g in gres.split(",") if g.startswith("gpu")
                       for n in re.findall(r":(\d+)(?:\(|$)", g))
            nodes[node] = (int(cpus.rstrip("+") or 0), float(mem.rstrip("+") or 0), gpus)
            limits.add(limit)
            names.add(part.rstrip("*"))
    if not nodes:
        return []
    where = f"the nodes of partition {','.join(sorted(names))}"
    problems = []
    if t.num_nodes > len(nodes):
        problems.append(f"trainer.num_nodes={t.num_nodes}: partition {','.join(sorted(names))} has {len(nodes)} "
                        f"node(s); set trainer.num_nodes={len(nodes)} or fewer")
    cpus = max(n[0] for n in nodes.values())
    if t.devices * sl.cpus_per_task > cpus:
        fit = cpus // t.devices
        per = f" for {t.devices} tasks per node (trainer.devices)" if t.devices > 1 else ""
        problems.append(f"launcher.slurm.cpus_per_task={sl.cpus_per_task}: {where} have {cpus} CPUs{per}; "
                        + (f"set launcher.slurm.cpus_per_task={fit} or fewer" if fit else
                           f"set trainer.devices={cpus} or fewer"))
    mem, asked = max(n[1] for n in nodes.values()), _megabytes(str(sl.mem)) if sl.mem else None
    if asked and asked > mem:
        problems.append(f"launcher.slurm.mem={sl.mem}: {where} have {mem:.0f}M; set launcher.slurm.mem={mem:.0f}M "
                        f"or less")
    gpus = max(n[2] for n in nodes.values())
    if gpus_per_node(cfg) > gpus:
        problems.append(f"launcher.slurm.gpus_per_node={gpus_per_node(cfg)}: {where} have "
                        + (f"{gpus} GPUs; set launcher.slurm.gpus_per_node={gpus} or fewer (and trainer.devices)"
                           if gpus else "no GPUs; choose a GPU partition with launcher.slurm.partition"))
    longest = [_seconds(x) for x in limits]
    if None not in longest and _seconds(sl.time) is not None and _seconds(sl.time) > max(longest):
        limit = max(limits, key=_seconds)
        problems.append(f"launcher.slurm.time={sl.time}: the time limit of partition {','.join(sorted(names))} is "
                        f"{limit}; set launcher.slurm.time={limit} or less")
    return problems


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
            if status == UNKNOWN:
                note = f" (job {info['job']}: {info['note']}; not resubmitted)"
            skipped.append(f"  {status:9s} {folder.path.name}{note}")
    if skipped:
        print("[ibnnet] not submitted:")
        print("\n".join(skipped))
    failed_before = sum(status == FAILED for status in statuses) if not retry_failed else 0
    unknown = sum(status == UNKNOWN for status in statuses)
    unknown_note = (f"[ibnnet] {unknown} cell(s) not resubmitted because SLURM could not be asked whether their "
                    f"jobs still run; once squeue answers, `ibnnet status {exp.path}` shows them, and this sweep "
                    f"resubmits the ones that are gone (failed ones with --retry-failed)")
    if not todo:
        print("[ibnnet] nothing to submit")
        if failed_before:
            print(skipped_failed_note(failed_before))
        if unknown:
            print(unknown_note)
        return 1 if (failed_before or unknown) and not dry_run else 0
    groups: dict[str, list] = {}
    for item in todo:
        groups.setdefault(resources_key(item[1]), []).append(item)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # absolute in the script; the experiment's folder as runs/folder.py run_dir names it
    root = Path(todo[0][1].paths.runs).resolve() / sanitize(todo[0][1].experiment) / "_slurm"
    scripts = [render_script(members[0][1], exp.name, root / f"{stamp}-{k}" / "runs.txt", root / f"{stamp}-{k}",
                             len(members)) for k, members in enumerate(groups.values())]
    if not dry_run:   # every array first: none is submitted when one of them could never start
        for script, members in zip(scripts, groups.values()):
            check_can_start(members[0][1], script, f"{exp.path} (cells {', '.join(c.name for c, _, _ in members)})")
    for k, (script, members) in enumerate(zip(scripts, groups.values())):
        out_dir = root / f"{stamp}-{k}"
        runs_file = out_dir / "runs.txt"
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
    if unknown:
        print(unknown_note)
    return 1 if (failed_before or unknown) and not dry_run else 0
