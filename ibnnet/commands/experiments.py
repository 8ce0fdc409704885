"""train, sweep, status, table, demo, run."""
from __future__ import annotations

import sys
import time

from omegaconf import OmegaConf

from ..config import ConfigError, compose
from ..config.loader import Source
from ..experiments.grid import (
    Experiment,
    describe_cell,
    load_experiment,
    scale_gpu_hours,
    select,
)
from ..runs.folder import DONE, FAILED, RUNNING, RunFolder
from ..runs.status import live_status, skipped_failed_note


def _summary_line(metrics: dict | None, names: dict | None = None) -> str:
    """A run's final numbers in one line; ``names``: the experiment's names of its evaluation sets (the table's
    ``eval_labels``, e.g. the demo's in-domain / cross-domain), so status and table say the same."""
    if not metrics:
        return ""
    parts = []
    for name, values in (metrics.get("metrics") or {}).items():
        shown = {k: v for k, v in values.items() if k in ("top1_err", "top5_err", "miou", "pixel_acc")}
        parts.append(f"{(names or {}).get(name, name)}: " + ", ".join(f"{k} {v:.2f}" for k, v in shown.items()))
    return "; ".join(parts)


def cmd_train(args) -> int:
    from ..runs.claims import EXIT_CLAIMED
    from ..runs.runner import RequeueRequested, RunClaimed, execute, prepare
    extra = [Source("--experiment", OmegaConf.create({"experiment": args.experiment}))] if args.experiment else []
    cfg = compose(args.config, args.overrides, extra=extra)
    folder = prepare(cfg)
    print(f"[ibnnet] run folder: {folder.path}", flush=True)
    try:
        metrics = execute(folder.path)
    except RequeueRequested as e:
        return _stopped(e)
    except RunClaimed as e:
        print(f"ibnnet: {e}; not started", file=sys.stderr)
        return EXIT_CLAIMED
    if metrics:
        print(f"[ibnnet] {_summary_line(metrics)}")
    return 0


def _no_match(exp: Experiment, pattern: str) -> int:
    """--only matched nothing: say so, with the names it could have matched."""
    names = "\n".join(f"  {cell.name}" for cell in exp.cells)
    print(f"ibnnet: error: no cell of {exp.name} matches --only {pattern!r} (a glob, or a substring of a cell "
          f"name or run id); its cells:\n{names}", file=sys.stderr)
    return 2


def cmd_sweep(args) -> int:
    exp = load_experiment(args.experiment, args.scale)
    triples = select(exp.folders(tuple(args.overrides)), args.only)
    if not triples:
        return _no_match(exp, args.only)
    launcher = args.launcher or triples[0][1].launcher.name
    if launcher == "slurm" and getattr(args, "workers", 1) != 1:
        print("ibnnet: --workers is for local sweeps; a SLURM sweep runs one array task per cell", file=sys.stderr)
        return 2
    estimate = _announce(exp, triples, launcher, args.retry_failed)
    if args.dry_run:
        if estimate is not None and estimate > confirm_threshold(args):
            print(f"[ibnnet] above {confirm_threshold(args):g} GPU-hours: the sweep itself asks for confirmation "
                  f"(or --yes)")
    else:
        refused = _cost_gate(args, exp, estimate)
        if refused is not None:
            return refused
    if launcher == "slurm":
        from ..launchers.slurm import sweep_slurm
        return sweep_slurm(exp, triples, dry_run=args.dry_run, retry_failed=args.retry_failed)
    workers = getattr(args, "workers", 1)
    if workers < 1:
        print(f"ibnnet: --workers {workers}: must be >= 1", file=sys.stderr)
        return 2
    if args.dry_run:
        for cell, cfg, folder in triples:
            status, _ = live_status(folder)
            print(f"  {status:8s} {folder.path.name:50s} {describe_cell(cell, cfg)}")
        return 0
    from ..launchers.local import run_local
    from ..runs.runner import prepare
    folders = []
    for cell, cfg, folder in triples:
        if not folder.is_done():
            prepare(cfg)
        folders.append(folder)
    if workers > 1:
        code = _spawn_workers(args, workers, [cfg for _, cfg, folder in triples if not folder.is_done()])
    else:
        lc = triples[0][1].launcher
        summary = run_local(folders, stop_on_error=args.stop_on_error, retry_failed=args.retry_failed,
                            claim_timeout_s=lc.claim_timeout_s, heartbeat_s=lc.heartbeat_s,
                            poll_s=min(5.0, lc.heartbeat_s))
        interrupted = f", {len(summary['interrupted'])} interrupted" if summary["interrupted"] else ""
        print(f"\n[ibnnet] {len(summary['done'])} finished, {len(summary['skipped'])} already done, "
              f"{len(summary['failed'])} failed{interrupted}")
        code = 1 if summary["failed"] else 0
        if summary["failed_before"]:
            print(skipped_failed_note(len(summary["failed_before"])), flush=True)
            code = 1
        if summary["signal"] is not None:   # stopped by SIGINT/SIGTERM: 130/143, as the shell reports it
            code = 128 + summary["signal"]
    if not args.no_table:
        _render_table(exp, tuple(args.overrides), triples[0][1].paths.results, discover=False)
    return code


CONFIRM_ENV = "IBNNET_CONFIRM_GPU_HOURS"
DEFAULT_CONFIRM_GPU_HOURS = 100.0


def _hours(h: float) -> str:
    return f"{h:.1f}" if h < 10 else f"{h:.0f}"


def _hours_or_unknown(h: float | None) -> str:
    return "?" if h is None else f"{h:g}"


def _announce(exp: Experiment, triples: list, launcher: str, retry_failed: bool = False) -> float | None:
    """Print the grid, its scale and the cost estimate; returns the estimate (GPU-hours) or None."""
    failed = 0 if retry_failed else sum(folder.failed_before() for _, _, folder in triples)
    to_run = sum(not folder.is_done() for _, _, folder in triples) - failed
    if exp.scale:
        others = ", ".join(f"{name} {_hours_or_unknown(scale_gpu_hours(spec))}" for name, spec in exp.scales.items()
                           if name != exp.scale)
        how = (", the cheapest, used without --scale" + (f"; also: {others} GPU-hours" if others else "")
               if exp.scale_is_default else "")
        scale = f" (scale {exp.scale}{how})"
    else:
        scale = ""
    skipped = f", {failed} failed before (skipped: --retry-failed reruns them)" if failed else ""
    print(f"[ibnnet] experiment {exp.name}{scale}: {len(triples)} cells, {to_run} to run{skipped}, "
          f"launcher {launcher}")
    if exp.gpu_hours is None:
        print("[ibnnet] estimate: unknown (the experiment file gives no gpu_hours for this scale)")
        return None
    estimate = exp.gpu_hours * to_run / len(exp.cells)
    print(f"[ibnnet] estimate: ~{_hours(estimate)} GPU-hours for {to_run} run{'s' if to_run != 1 else ''} "
          f"(the file: {exp.gpu_hours:g} GPU-hours for all {len(exp.cells)} cells at scale {exp.scale})")
    return estimate


def confirm_threshold(args) -> float:
    """GPU-hours above which a sweep needs confirmation: --confirm-above, else $IBNNET_CONFIRM_GPU_HOURS, else 100."""
    import os
    value = getattr(args, "confirm_above", None)
    where = "--confirm-above"
    if value is None and os.environ.get(CONFIRM_ENV, "").strip():
        value, where = os.environ[CONFIRM_ENV].strip(), CONFIRM_ENV
    if value is None:
        return DEFAULT_CONFIRM_GPU_HOURS
    try:
        threshold = float(value)
    except ValueError:
        threshold = -1.0
    if not threshold >= 0:
        raise ConfigError(f"{where}={value!r}: must be a number of GPU-hours >= 0")
    return threshold


def _cost_gate(args, exp: Experiment, estimate: float | None) -> int | None:
    """None if the sweep may start (no estimate, under the threshold, --yes, or 'y' at the prompt when stdin
    is a terminal); else the exit code 2, refused without a terminal or declined at the prompt alike."""
    threshold = confirm_threshold(args)
    if estimate is None or estimate <= threshold or getattr(args, "yes", False):
        return None
    if not sys.stdin.isatty():
        cheaper = [n for n, spec in exp.scales.items() if (scale_gpu_hours(spec) or estimate) < exp.gpu_hours]
        alternatives = f", or --scale {cheaper[0]}" if cheaper else ""
        print(f"ibnnet: error: not started: ~{_hours(estimate)} GPU-hours is above the {threshold:g} GPU-hours that "
              f"start without confirmation; rerun with --yes to start it{alternatives} (limit: --confirm-above "
              f"or {CONFIRM_ENV})", file=sys.stderr)
        return 2
    try:
        answer = input(f"[ibnnet] start ~{_hours(estimate)} GPU-hours of training? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() in ("y", "yes"):
        return None
    print(f"ibnnet: error: not started: declined at the prompt (~{_hours(estimate)} GPU-hours)", file=sys.stderr)
    return 2   # as a refusal without a terminal: nothing ran, the user said no


def _spawn_workers(args, n: int, cfgs: list) -> int:
    """``--workers N``: N single-worker sweeps of the same grid as child processes; the worst exit code.
    ``cfgs``: the configs of the cells to run, which decide the GPUs each worker gets."""
    import subprocess

    from ..launchers.local import worker_environments
    cmd = [sys.executable, "-m", "ibnnet", "sweep", str(args.experiment), "--launcher", "local", "--no-table"]
    cmd += (["--scale", args.scale] if args.scale else []) + (["--only", args.only] if args.only else [])
    cmd += (["--retry-failed"] if args.retry_failed else []) + (["--stop-on-error"] if args.stop_on_error else [])
    cmd += ["--yes"]   # the cost was confirmed (or below the limit) here; the workers must not ask again
    cmd += list(args.overrides)
    envs = worker_environments(n, cfgs)
    import signal
    procs: list = []

    def forward(signum, frame):   # each worker stops its run (after a checkpoint) and takes no new cell
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i, env in enumerate(envs):
            where = f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else ""
            print(f"[ibnnet] worker {i}{where}", flush=True)
            procs.append(subprocess.Popen(cmd, env=dict(env, PYTHONUNBUFFERED="1")))
        codes = [p.wait() for p in procs]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(f"\n[ibnnet] {n} workers finished (exit codes {codes})")
    return max(codes)


def _render_table(exp: Experiment, overrides: tuple[str, ...], results_root: str,
                  where: list[str] | None = None, discover: bool = True) -> dict:
    from ..results.table import write_table
    paths = write_table(exp, results_root, overrides, where, discover)
    print(f"[ibnnet] table: {paths['markdown']}\n[ibnnet] csv:   {paths['csv']}\n[ibnnet] plot:  "
          + (str(paths["plot"]) if "plot" in paths else "none yet (no finished run)"))
    if "corruptions" in paths:
        print(f"[ibnnet] ImageNet-C per corruption and severity: {paths['corruptions']}")
    return paths


def cmd_status(args) -> int:
    from ..experiments.discover import experiment_runs
    exp = load_experiment(args.experiment, args.scale)
    runs = experiment_runs(exp, tuple(args.overrides), getattr(args, "where", None))
    slurm_states = None
    jobs = {f.state().get("slurm_job") for r in runs for f in r.folders} - {None}
    if jobs:
        from ..launchers.slurm import scheduler_states
        slurm_states = scheduler_states(sorted(jobs))
    counts: dict[str, int] = {}
    rows = []
    for r in runs:
        if not r.folders:
            rows.append((r.cell.name, "-", "(no run matches --where)", "", None))
            continue
        variants = r.differences() if len(r.folders) > 1 else [""]
        for i, (folder, differs) in enumerate(zip(r.folders, variants)):
            status, info = live_status(folder, slurm_states, r.cfg.launcher.claim_timeout_s)
            counts[status] = counts.get(status, 0) + 1
            extra = f"job {info['job']}" if info.get("job") else ""
            if info.get("scheduler"):
                extra += f" ({info['scheduler']})"
            if info.get("holder"):
                extra = f"held by {info['holder']}"
            if info.get("note"):
                extra = (extra + "; " if extra else "") + info["note"]
            if status == DONE:
                extra = _summary_line(folder.metrics(), exp.table.get("eval_labels"))
            if len(r.folders) > 1:
                extra = f"[variant {i + 1}/{len(r.folders)}: {differs or 'same settings'}] {extra}".rstrip()
            rows.append((r.cell.name if i == 0 else "", status, folder.path.name, extra, folder))
    width = max(len(r[0]) for r in rows)
    for name, status, rid, extra, folder in rows:
        print(f"{name:{width}s}  {status:9s} {rid}  {extra}")
        if status == FAILED:
            err = (folder.state().get("error") or "").strip().splitlines()
            if err:
                print(f"    error: {err[0]}")
            tail = folder.log_tail(args.lines)
            if tail:
                print("    " + "\n    ".join(tail.splitlines()))
    print("\n" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    multi = sum(1 for r in runs if len(r.folders) > 1)
    if multi:
        print(f"{multi} cell(s) have several runs (variants); select one with --where KEY=VALUE")
    return 0


def cmd_sync(args) -> int:
    """Upload the offline wandb runs of the experiment's run folders (see ibnnet/runs/sync.py)."""
    from ..runs.sync import (
        ALREADY,
        FAILED,
        LIVE,
        NOTHING,
        SYNCED,
        check_network,
        sync_folder,
        unsynced_runs,
    )
    exp = load_experiment(args.experiment, args.scale)
    triples = select(exp.folders(tuple(args.overrides)), args.only)
    if not triples:
        return _no_match(exp, args.only)
    scale = f" (scale {exp.scale})" if exp.scale else ""
    # the run folders, then the experiment's results runs (tables and figures: ibnnet/runs/wandb_results.py)
    items = [(folder, folder.path.name, cfg) for _, cfg, folder in triples]
    results = exp.results_dir(triples[0][1].paths.results)
    items += [(RunFolder(d.parent), str(d.parent.relative_to(results.parent)), None)
              for d in sorted(results.glob("**/wandb")) if d.is_dir()]
    print(f"[ibnnet] {exp.name}{scale}: offline wandb runs of {len(triples)} run folders and its results")
    if not args.dry_run and any(unsynced_runs(folder) for folder, _, _ in items):
        check_network()
    counts: dict[str, int] = {}
    for i, (folder, label, cfg) in enumerate(items):
        status = live_status(folder, None, cfg.launcher.claim_timeout_s)[0] if cfg is not None else DONE
        if args.dry_run:
            todo = unsynced_runs(folder)
            if todo:
                print(f"  {'to sync':15s} {label}  {', '.join(d.name for d in todo)}"
                      + ("  (still training)" if status == RUNNING else ""))
            counts["to sync" if todo else "nothing to do"] = counts.get("to sync" if todo else "nothing to do", 0) + 1
            continue
        outcome = sync_folder(folder, status, args.timeout)
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        if outcome.status != NOTHING:
            print(f"  {outcome.status:15s} {label}  {outcome.detail}", flush=True)
        if outcome.status == FAILED and "timed out" in outcome.detail:
            # The server took the connection but did not answer: the next folders would each wait as long.
            left = sum(bool(unsynced_runs(f)) for f, _, _ in items[i + 1:])
            if left:
                print(f"[ibnnet] stopping: the wandb server did not answer within --timeout {args.timeout:g} s; "
                      f"{left} more folder(s) with offline runs not tried", flush=True)
                counts["not tried"] = left
                break
    order = [SYNCED, ALREADY, LIVE, FAILED, "not tried", NOTHING, "to sync", "nothing to do"]
    print("[ibnnet] " + ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k)))
    if counts.get(FAILED):
        print(f"ibnnet: {counts[FAILED]} run folder(s) not synced (reasons above); nothing was recorded for them, "
              f"so `ibnnet sync` again retries just those", file=sys.stderr)
        return 1
    return 0


def cmd_table(args) -> int:
    exp = load_experiment(args.experiment, args.scale)
    overrides = tuple(args.overrides)
    results_root = args.results or exp.compose_cell(exp.cells[0], overrides).paths.results
    paths = _render_table(exp, overrides, results_root, getattr(args, "where", None))
    print()
    print(paths["markdown"].read_text())
    return 0


def cmd_demo(args) -> int:
    from types import SimpleNamespace
    start = time.time()
    sweep_args = SimpleNamespace(experiment="demo", scale=None, overrides=args.overrides, launcher="local",
                                 dry_run=False, only=None, retry_failed=args.retry_failed, stop_on_error=False,
                                 no_table=False,
                                 workers=1, yes=False, confirm_above=None)
    code = cmd_sweep(sweep_args)
    from ..results.table import table_dir
    exp = load_experiment("demo")
    out = table_dir(exp, exp.compose_cell(exp.cells[0], tuple(args.overrides)).paths.results, tuple(args.overrides))
    print(f"\n[ibnnet] demo finished in {time.time() - start:.0f} s. Outputs in {out}/ "
          f"(table.md, table.csv, plot.png); run folders under "
          f"{exp.compose_cell(exp.cells[0], tuple(args.overrides)).paths.runs}/demo/")
    if (out / "table.md").is_file():
        print()
        print((out / "table.md").read_text())
    kernels = _cpu_kernels_line(exp, tuple(args.overrides))
    if kernels:
        print(kernels)
    return code


def _cpu_kernels_line(exp: Experiment, overrides: tuple[str, ...]) -> str | None:
    """What the demo's runs dispatched their CPU kernels to (their metrics.json), so a newcomer comparing with
    the README sees at once whether the numbers can match."""
    seen = set()
    for _cell, _cfg, folder in exp.folders(overrides):
        rec = ((folder.metrics() or {}).get("reproducibility") or {}).get("cpu_kernels")
        if rec:
            seen.add((rec.get("aten_dispatch"), bool(rec.get("portable"))))
    if not seen:
        return None
    if seen == {("AVX2", True)}:
        return ("[ibnnet] CPU kernels: AVX2 (ATen, oneDNN and MKL pinned), as for the README's numbers: any x86-64 "
                "CPU with AVX2 gives them at the same seed and thread count")
    isas = ", ".join(sorted(f"{isa}{'' if portable else ' (not pinned)'}" for isa, portable in seen))
    return (f"[ibnnet] CPU kernels: {isas}: not the pinned AVX2 set the README's numbers were made with, so the "
            f"numbers may differ from them (see metrics.json 'reproducibility')")


def _stopped(e) -> int:
    """A run stopped by a signal at a safe point (:class:`ibnnet.runs.runner.RequeueRequested`): Ctrl-C exits 130
    (interrupted: a plain rerun resumes it), a scheduler's signal or SIGTERM 0 (stopped as asked, to be resumed)."""
    from ..runs.preemption import INTERRUPT
    from ..runs.runner import EXIT_INTERRUPTED
    if e.reason == INTERRUPT:
        print(f"[ibnnet] {e}; run it again to resume", flush=True)
        return EXIT_INTERRUPTED
    print(f"[ibnnet] stopped for requeue: {e}", flush=True)
    return 0


def cmd_run(args) -> int:
    from ..runs.claims import EXIT_CLAIMED
    from ..runs.runner import RequeueRequested, RunClaimed, execute
    try:
        execute(args.run_dir)
    except RequeueRequested as e:
        return _stopped(e)
    except RunClaimed as e:
        print(f"[ibnnet] {e}; skipping", flush=True)
        return EXIT_CLAIMED
    # Errors go to ibnnet.cli.main: a user error in one line (exit 2), anything else with its traceback
    # and the run's train.log (exit 1). The launcher reports the run as failed either way.
    return 0
