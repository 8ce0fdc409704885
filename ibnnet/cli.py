"""The ``ibnnet`` command line."""
from __future__ import annotations

import argparse
import sys

OVERRIDES_HELP = "config overrides as key=value (e.g. trainer.max_epochs=1 model.in_ratio=0.25)"


def _add_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment file, or its name under experiments/ (e.g. demo)")
    p.add_argument("--scale", help="experiment scale (e.g. reduced, full); default: the cheapest (fewest GPU-hours)")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(prog="ibnnet", description="IBN-Net and Switchable Normalization, reproducible.")
    parser.add_argument("--version", action="version", version=f"ibnnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train and evaluate one configuration",
                       description="Train one run config (resumes an unfinished run, skips a finished one).")
    p.add_argument("config", help="run config YAML (e.g. configs/demo.yaml)")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    p.add_argument("--experiment", help="group the run under this experiment name (default: config's)")

    p = sub.add_parser("sweep", help="run every pending cell of an experiment grid",
                       description="Expand an experiment grid and run its pending cells, locally or as a SLURM "
                                   "job array. Finished cells are skipped, unfinished ones resume.")
    _add_experiment_args(p)
    p.add_argument("--launcher", choices=("local", "slurm"), help="default: the config's launcher.name")
    p.add_argument("--dry-run", action="store_true", help="list the runs (and the SLURM script) without running")
    p.add_argument("--only", metavar="PATTERN", help="only cells whose name or run id matches (glob or substring)")
    p.add_argument("--retry-failed", action="store_true",
                   help="run (SLURM: resubmit) failed cells again; never duplicates running or finished ones")
    p.add_argument("--stop-on-error", action="store_true", help="local: stop at the first failed run")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="local: N worker processes sharing the grid (on a GPU machine each gets the "
                        "trainer.devices GPUs its runs ask for). Further `ibnnet sweep` commands on the same grid, "
                        "here or on other machines, join in")
    p.add_argument("--no-table", action="store_true", help="local: do not render the table afterwards")
    p.add_argument("--yes", "-y", action="store_true",
                   help="start even if the estimate is above --confirm-above (no question asked)")
    p.add_argument("--confirm-above", type=float, metavar="GPU_HOURS",
                   help="ask before starting a sweep estimated above this many GPU-hours, and refuse without --yes "
                        "when stdin is not a terminal (default: $IBNNET_CONFIRM_GPU_HOURS or 100); "
                        "--dry-run never asks")

    p = sub.add_parser("status", help="done / running / failed / pending per cell",
                       description="Show each cell's state (merging squeue/sacct for SLURM runs).")
    _add_experiment_args(p)
    p.add_argument("--lines", type=int, default=8, help="log lines shown for failed runs")
    p.add_argument("--where", action="append", metavar="KEY=VALUE",
                   help="only runs whose config has KEY=VALUE (repeatable), to pick among variants of a cell")

    p = sub.add_parser("table", help="render the experiment's table (markdown, CSV, PNG) under results/",
                       description="Collect finished runs into the paper's table layout with the paper's numbers.")
    _add_experiment_args(p)
    p.add_argument("--results", help="results root (default: paths.results of the config)")
    p.add_argument("--where", action="append", metavar="KEY=VALUE",
                   help="only runs whose config has KEY=VALUE (repeatable), to pick among variants of a cell")

    p = sub.add_parser("sync", help="upload the offline wandb runs of an experiment's run folders (login node)",
                       description="For compute nodes without internet: runs log with logger=offline, then this "
                                   "command, on a machine with internet, hands each run folder's offline wandb runs "
                                   "to `wandb sync`. Uploaded ones are recorded in <run>/wandb/synced.json and "
                                   "skipped next time; failures are reported per run and exit 1.")
    _add_experiment_args(p)
    p.add_argument("--only", metavar="PATTERN", help="only cells whose name or run id matches (glob or substring)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="give up on one run folder's upload after this long (default 600; 0: no limit)")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")

    p = sub.add_parser("demo", help="run experiments/demo.yaml on the built-in data and render its table",
                       description="BN vs IBN-a vs IBN-b ResNets on the built-in two-domain data, in-domain and "
                                   "cross-domain, on the CPU in minutes.")
    p.add_argument("--retry-failed", action="store_true", help="run cells that failed in an earlier demo again")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)

    p = sub.add_parser("init", help="copy the shipped configs and experiment files into a project folder",
                       description="Write DIR/configs and DIR/experiments for editing; run ibnnet from DIR and "
                                   "they shadow the shipped files of the same name.")
    p.add_argument("dir", help="project folder (created if missing)")
    p.add_argument("--force", action="store_true", help="overwrite files that are already there")

    p = sub.add_parser("run", help="execute one prepared run folder (used by the launchers)",
                       description="Train and evaluate the run a launcher prepared: claims the folder, resumes from "
                                   "its newest checkpoint, writes metrics.json. `sweep` runs this for each cell.")
    p.add_argument("run_dir", help="a run folder written by `ibnnet sweep` (runs/<experiment>/<cell>-<hash>/, "
                                   "holding config.yaml)")

    p = sub.add_parser("weights", help="official pretrained weights: list, download, verify")
    wsub = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    w = wsub.add_parser("list", help="registered models and their official weight files")
    w.add_argument("--all", action="store_true", help="also models without official weights")
    w = wsub.add_parser("download", help="download and verify an official weight file into the torch hub cache")
    w.add_argument("name", help="model name, e.g. resnet50_ibn_a (or name.tag)")
    w.add_argument("--force", action="store_true", help="download again even if a verified copy is cached")
    from .progress import add_progress_option
    add_progress_option(w)
    w = wsub.add_parser("verify", help="check a weight file: hash, readability, which models it fits")
    w.add_argument("path", help="a weight file (.pth/.pth.tar/.safetensors or a Lightning .ckpt)")

    from .commands.analyze import add_analyze_commands
    from .commands.data import add_data_commands
    from .commands.evaluate import add_evaluate_command
    from .commands.plot import add_plot_commands
    add_data_commands(sub)
    add_analyze_commands(sub)
    add_evaluate_command(sub)
    add_plot_commands(sub)
    from .commands.predict import add_predict_command
    add_predict_command(sub)
    return parser


def _console_logging() -> None:
    import logging

    class StderrHandler(logging.StreamHandler):
        """Writes to whatever ``sys.stderr`` is when a message comes (redirected by an in-process caller)."""

        @property
        def stream(self):
            return sys.stderr

        @stream.setter
        def stream(self, value):
            pass

    log = logging.getLogger("ibnnet")
    if not any(getattr(h, "_ibnnet_console", False) for h in log.handlers):
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("[ibnnet] %(levelname)s: %(message)s"))
        handler._ibnnet_console = True
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code.

    0 success; 2 a user error (:class:`ibnnet.errors.UserError`: config, paths, data, weight files),
    printed as ``ibnnet: error: ...``; 1 anything else, printed with its traceback and, when it
    happened inside a run, the path of the run's ``train.log``; 130 interrupted.
    """
    from .errors import UserError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (`sweep demo --dry-run trainer.max_epochs=1`), which a
    # plain nargs="*" positional cannot take; anything else unknown is still an error.
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    unknown = [e for e in extra if e not in overrides]
    if unknown or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    if overrides:
        args.overrides = list(args.overrides) + overrides
    _console_logging()
    try:
        # evaluate and predict too: a deterministic run's checkpoint then scores exactly what the run reported
        if argv is None and args.command in ("run", "train", "evaluate", "predict"):
            _restart_with_portable_cpu_kernels(args)
        return _dispatch(args)
    except UserError as e:
        print(f"ibnnet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ibnnet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # `ibnnet ... | head`: the reader is gone, nothing is wrong
        try:
            import os
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error at exit
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    except Exception as e:  # a bug or an unexpected failure: everything needed to find it
        report_internal_error(e)
        return 1


RESTARTED_ENV = "IBNNET_PORTABLE_RESTART"


def _restart_with_portable_cpu_kernels(args) -> None:
    """A deterministic run started without its pinned CPU instruction set (``ibnnet train`` or ``ibnnet run`` by
    hand, or by a launcher other than ours), or an evaluation of one, restarts this process with it: each library reads its variable once,
    before torch's first kernel, which has not run yet here but may have been dispatched by the time the run
    would set it (ibnnet/runs/env.py). Only for a real command line (``main()`` with no ``argv``)."""
    import os

    from omegaconf import OmegaConf

    from .runs.env import needs_portable_restart
    if os.environ.get(RESTARTED_ENV):
        return
    if args.command == "run":
        try:
            cfg = OmegaConf.load(os.path.join(args.run_dir, "config.yaml"))
        except (OSError, ValueError):
            return   # the run reports a missing or unreadable config itself
    else:
        from .config import compose
        cfg = compose(args.config, args.overrides)
    env = needs_portable_restart(bool(OmegaConf.select(cfg, "trainer.deterministic")))
    if env is None:
        return
    env[RESTARTED_ENV] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def report_internal_error(e: BaseException) -> None:
    """The full traceback on stderr, then where the run's own log is (if it happened inside a run)."""
    import traceback
    traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    print(f"ibnnet: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(),
          file=sys.stderr)
    run_log = getattr(e, "run_log", None)
    if run_log:
        print(f"ibnnet: the run's log: {run_log}", file=sys.stderr)


def _dispatch(args) -> int:
    import importlib
    # one module per command under ibnnet/commands; train, sweep, status, table, sync, demo, run: experiments.py
    modules = {"weights": "weights", "plot": "plot", "analyze": "analyze", "init": "project", "predict": "predict",
               "data": "data", "evaluate": "evaluate"}
    if args.command in modules:
        return importlib.import_module(f".commands.{modules[args.command]}", __package__).run(args)
    from .commands import experiments
    return getattr(experiments, f"cmd_{args.command}")(args)


if __name__ == "__main__":
    sys.exit(main())
