"""The command line as people use it: errors, dry runs, overrides, costs, progress bars, wandb sync.

Everything runs in this process through ``ibnnet.cli.main`` (no interpreter start-up) and nothing here
trains a model: the one run that starts fails before its first batch.
"""
import contextlib
import io
import json
import textwrap
from pathlib import Path

import pytest
from helpers import TINY, config

from ibnnet.cli import main


def run_cli(*args, stdin: str | None = None, tty: bool = False, monkeypatch=None) -> tuple[int, str, str]:
    """``ibnnet ARGS`` in this process -> (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    if monkeypatch is not None:
        fake = io.StringIO(stdin or "")
        fake.isatty = lambda: tty
        monkeypatch.setattr("sys.stdin", fake)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def experiment(tmp_path: Path, body: str, name: str = "exp") -> Path:
    """An experiment file on the tiny run config, its runs and results under tmp_path."""
    base = config(tmp_path, TINY, "base.yaml")
    path = tmp_path / "experiments" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"experiment: {name}\nbase: {base}\n" + textwrap.dedent(body))
    return path


# ------------------------------------------------------------------------------------------ errors

def test_a_config_typo_is_one_line_with_exit_code_2(tmp_path):
    cfg = config(tmp_path, TINY)
    code, out, err = run_cli("train", cfg, "trainer.max_epoch=3")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [err.strip()]  # one line
    assert err.startswith("ibnnet: error: command line: unknown key 'trainer.max_epoch'") and "max_epochs" in err
    assert "Traceback" not in err
    code, _, err = run_cli("run", tmp_path / "nowhere")   # a missing path is a user error too
    assert code == 2 and err.strip() == f"ibnnet: error: {tmp_path / 'nowhere'}: not a run folder (no config.yaml)"


def test_a_missing_dataset_inside_a_run_is_one_line(tmp_path):
    cfg = config(tmp_path, TINY)
    code, out, err = run_cli("train", cfg, "data.train.dataset=imagenet", f"paths.data={tmp_path / 'data'}",
                             "data.val=[]")
    assert code == 2, err
    assert "Traceback" not in err and "ERROR" not in err   # progress notes ([ibnnet] INFO: ...) may come first
    assert [ln for ln in err.splitlines() if "error" in ln.lower()] == [err.strip().splitlines()[-1]]
    assert err.strip().splitlines()[-1] == (
        f"ibnnet: error: ImageNet train folder not found: {tmp_path / 'data/imagenet/train'} "
        f"(expected {tmp_path / 'data/imagenet/train'}/<wnid>/*.JPEG)")
    (folder,) = (tmp_path / "runs").glob("*/*/")   # the run folder keeps the story
    assert "run failed: DataNotFoundError: ImageNet train folder not found" in (folder / "train.log").read_text()


def test_an_internal_error_inside_a_run_shows_its_traceback_and_the_run_log(tmp_path, monkeypatch):
    def broken_factory(name, **kwargs):
        raise ValueError("factory bug: channels do not add up")
    monkeypatch.setattr("ibnnet.tasks.common.create_model", broken_factory)
    cfg = config(tmp_path, TINY)
    code, out, err = run_cli("train", cfg)
    assert code == 1
    assert "Traceback (most recent call last)" in err and "broken_factory" in err  # where it came from
    assert "ValueError: factory bug: channels do not add up" in err
    (folder,) = (tmp_path / "runs").glob("*/*/")
    assert f"ibnnet: the run's log: {folder / 'train.log'}" in err
    log = (folder / "train.log").read_text()
    assert "Traceback" in log and "factory bug" in log   # the log has the whole story too
    assert json.loads((folder / "state.json").read_text())["status"] == "failed"


# ------------------------------------------------------------------------------------ dry runs

def test_dry_runs_show_interpolations_resolved(tmp_path):
    path = experiment(tmp_path, """
        scales: {small: {gpu_hours: 1}}
        grid:
          init:
            scratch: {model.pretrained_file: null}
            chained: {model.pretrained_file: "run:other/cell@${scale}", data.train.root: "${paths.runs}/x"}
    """)
    for launcher in ("local", "slurm"):
        code, out, err = run_cli("sweep", path, "--dry-run", "--launcher", launcher)
        assert code == 0, err
        assert "model.pretrained_file=run:other/cell@small" in out, out
        assert f"data.train.root={tmp_path / 'runs'}/x" in out
        assert "${scale}" not in out and "${paths" not in out   # (the SLURM script has shell ${...} of its own)


# ------------------------------------------------------------------------- list-element overrides

def test_one_list_element_can_be_overridden(tmp_path):
    from ibnnet.config import compose
    from ibnnet.experiments.grid import load_experiment
    path = experiment(tmp_path, """
        overrides:
          data.val:
            - {name: a, dataset: builtin_cls, split: val, num_samples: 8}
            - {name: b, dataset: builtin_cls, split: val, domain: real, num_samples: 8}
        grid:
          b_size: {key: data.val.1.num_samples, values: [4, 12]}   # an axis may set an element too
    """)
    code, out, err = run_cli("sweep", path, "--dry-run", "data.val.0.num_samples=64", "data.val[1].seed=3")
    assert code == 0, err
    assert "data.val.1.num_samples=4" in out and "data.val.1.num_samples=12" in out
    configs = load_experiment(path).configs(("data.val.0.num_samples=64", "data.val[1].seed=3"))
    for (cell, cfg), b in zip(configs, (4, 12)):
        a_spec, b_spec = cfg.data.val
        assert (a_spec.name, a_spec.num_samples, a_spec.seed, a_spec.domain) == ("a", 64, 0, "synthetic")
        assert (b_spec.name, b_spec.num_samples, b_spec.seed, b_spec.domain) == ("b", b, 3, "real")
    cfg = compose(config(tmp_path, TINY), ["data.val.0.num_samples=5"])   # train composes the same way
    assert cfg.data.val[0].num_samples == 5 and cfg.data.val[0].name == "synthetic"


@pytest.mark.parametrize("override,expected", [
    ("data.val.5.num_samples=1", "command line: data.val.5.num_samples=1: index 5 is out of range: data.val "
                                 "has 1 element (indices from 0)"),
    ("data.val.0.nmu_samples=1", "command line: unknown key 'data.val.0.nmu_samples'"),
    ("data.val.num_samples=1", "command line: 'data.val' is a list, so 'data.val.num_samples' names no element"),
])
def test_a_bad_list_element_override_is_one_line_naming_the_key(tmp_path, override, expected):
    cfg = config(tmp_path, TINY)
    exp = experiment(tmp_path, "grid: {model.name: [resnet18_bn]}\n")
    for args in (("train", cfg), ("sweep", exp, "--dry-run")):
        code, out, err = run_cli(*args, override)
        assert code == 2, err
        assert err.startswith(f"ibnnet: error: {expected}") and len(err.strip().splitlines()) == 1, err


# ----------------------------------------------------------------------------------- analysis files

def test_sweeping_an_analysis_file_says_how_to_run_it():
    for command in ("sweep", "status", "table"):
        code, out, err = run_cli(command, "ibn_fig5")
        assert code == 2 and out == ""
        assert err.startswith("ibnnet: error: ") and "ibn_fig5.yaml is an analysis file" in err, err
        assert "run it with `ibnnet analyze divergence ibn_fig5`" in err
        assert len(err.strip().splitlines()) == 1 and "unknown top-level keys" not in err


# ------------------------------------------------------------------------------ scales and costs

SCALES = """
scales:
  paper: {gpu_hours: 900}
  small: {gpu_hours: 6, overrides: {trainer.max_epochs: 1}}
grid:
  model: {key: model.name, values: {BN: resnet18_bn, IBN-a: resnet18_ibn_a, IBN-b: resnet18_ibn_b}}
"""


def test_without_scale_the_cheapest_is_used_and_the_estimate_printed(tmp_path):
    from ibnnet.config import ConfigError
    from ibnnet.experiments.grid import load_experiment
    path = experiment(tmp_path, SCALES)
    exp = load_experiment(path)
    assert exp.scale == "small" and exp.scale_is_default and exp.gpu_hours == 6   # not the first, "paper"
    code, out, err = run_cli("sweep", path, "--dry-run")
    assert code == 0, err
    assert "(scale small, the cheapest, used without --scale; also: paper 900 GPU-hours): 3 cells, 3 to run" in out
    assert "estimate: ~6.0 GPU-hours for 3 runs" in out
    code, out, err = run_cli("sweep", path, "--dry-run", "--only", "IBN-a", "--scale", "paper")
    assert "estimate: ~300 GPU-hours for 1 run " in out          # a third of the grid
    assert "above 100 GPU-hours: the sweep itself asks for confirmation" in out   # and the dry run asked nothing
    # default_scale may only choose among the cheapest
    (tmp_path / "tie.yaml").write_text(path.read_text().replace("paper: {gpu_hours: 900}", "paper: {gpu_hours: 6}")
                                       + "default_scale: paper\n")
    assert load_experiment(tmp_path / "tie.yaml").scale == "paper"
    (tmp_path / "dear.yaml").write_text(path.read_text() + "default_scale: paper\n")
    with pytest.raises(ConfigError, match=r"default_scale 'paper' \(900 GPU-hours\) is not the cheapest scale "
                                          r"\('small', 6 GPU-hours\)"):
        load_experiment(tmp_path / "dear.yaml")


@pytest.fixture
def launches(monkeypatch):
    """Local and SLURM sweeps record what they would start instead of training or calling sbatch (nor its
    --test-only check)."""
    started = []

    def run_local(folders, **kwargs):
        started.extend(f.path.name for f in folders)
        return {"done": list(folders), "skipped": [], "failed": [], "failed_before": [], "interrupted": [],
                "signal": None}

    def sbatch(script):
        started.append(script.name)
        return "4242"
    monkeypatch.setattr("ibnnet.launchers.local.run_local", run_local)
    monkeypatch.setattr("ibnnet.launchers.slurm.sbatch", sbatch)
    monkeypatch.setattr("ibnnet.launchers.slurm.check_can_start", lambda cfg, script, where: None)   # no cluster
    monkeypatch.delenv("IBNNET_CONFIRM_GPU_HOURS", raising=False)
    return started


def test_an_expensive_sweep_needs_yes_without_a_terminal(tmp_path, monkeypatch, launches):
    path = experiment(tmp_path, SCALES)
    for launcher in ("local", "slurm"):
        code, out, err = run_cli("sweep", path, "--scale", "paper", "--launcher", launcher, "--no-table",
                                 monkeypatch=monkeypatch)   # stdin: not a terminal
        assert code == 2 and launches == [] and not (tmp_path / "runs").exists()
        assert err.strip() == ("ibnnet: error: not started: ~900 GPU-hours is above the 100 GPU-hours that start "
                               "without confirmation; rerun with --yes to start it, or --scale small (limit: "
                               "--confirm-above or IBNNET_CONFIRM_GPU_HOURS)")
        assert "estimate: ~900 GPU-hours for 3 runs" in out   # printed before anything else happens
    code, out, err = run_cli("sweep", path, "--scale", "paper", "--no-table", "--yes", monkeypatch=monkeypatch)
    assert code == 0, err
    assert len(launches) == 3 and all(n.startswith("model=") for n in launches)
    code, out, err = run_cli("sweep", path, "--scale", "paper", "--launcher", "slurm", "--yes", monkeypatch=monkeypatch)
    assert code == 0 and launches[-1] == "job.sbatch" and "submitted job array 4242 (3 runs)" in out
    # the limit is configurable: option or environment
    launches.clear()
    code, _, _ = run_cli("sweep", path, "--scale", "paper", "--no-table", "--confirm-above", "1000",
                         monkeypatch=monkeypatch)
    assert code == 0 and len(launches) == 3
    monkeypatch.setenv("IBNNET_CONFIRM_GPU_HOURS", "5")
    code, _, err = run_cli("sweep", path, "--no-table", monkeypatch=monkeypatch)   # even the small scale (6)
    assert code == 2 and "above the 5 GPU-hours" in err and len(launches) == 3


def test_an_expensive_sweep_asks_at_a_terminal(tmp_path, monkeypatch, launches):
    path = experiment(tmp_path, SCALES)
    code, out, err = run_cli("sweep", path, "--scale", "paper", "--no-table", stdin="n\n", tty=True,
                             monkeypatch=monkeypatch)
    assert code == 2 and "start ~900 GPU-hours of training? [y/N]" in out and launches == []   # as a refusal
    assert err.strip() == "ibnnet: error: not started: declined at the prompt (~900 GPU-hours)"
    code, out, err = run_cli("sweep", path, "--scale", "paper", "--no-table", stdin="y\n", tty=True,
                             monkeypatch=monkeypatch)
    assert code == 0 and len(launches) == 3
    code, out, err = run_cli("sweep", path, "--scale", "paper", "--dry-run", stdin="", tty=True,
                             monkeypatch=monkeypatch)
    assert code == 0 and "[y/N]" not in out    # a dry run never asks


def test_workers_do_not_ask_again(tmp_path, monkeypatch, launches):
    from ibnnet.cli import build_parser
    commands = []

    class Worker:
        def __init__(self, cmd, env=None):
            commands.append(cmd)

        def wait(self):
            return 0
    monkeypatch.setattr("subprocess.Popen", Worker)
    path = experiment(tmp_path, SCALES)
    code, out, err = run_cli("sweep", path, "--scale", "paper", "--workers", "2", "--no-table", stdin="y\n", tty=True,
                             monkeypatch=monkeypatch)
    assert code == 0 and out.count("[y/N]") == 1 and len(commands) == 2
    for cmd in commands:   # each worker is a sweep of the same grid that starts without asking
        args = build_parser().parse_args(cmd[cmd.index("sweep"):])
        assert args.yes and args.scale == "paper" and args.workers == 1


# ---------------------------------------------------------------------------------- progress bars

def test_progress_bars_show_when_forced_and_not_in_pipes(tmp_path, monkeypatch):
    from fixtures_datasets import write_imagenet
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        write_imagenet(root, split, ["n01", "n02", "n03"], per_class=1)
    monkeypatch.delenv("IBNNET_PROGRESS", raising=False)
    code, out, err = run_cli("data", "check", "imagenet", root)        # stderr is not a terminal here
    assert code in (0, 1) and "imagenet train" not in err and "train: 3" in out
    code, out, err = run_cli("data", "check", "imagenet", root, "--progress")
    assert "imagenet train: 100%" in err and "3/3" in err and "imagenet val: 100%" in err
    monkeypatch.setenv("IBNNET_PROGRESS", "1")
    _, _, err = run_cli("data", "check", "imagenet", root)
    assert "imagenet train: 100%" in err
    _, _, err = run_cli("data", "check", "imagenet", root, "--no-progress")   # the option wins
    assert "imagenet train" not in err


def test_weight_downloads_follow_the_same_switch(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append(progress)
        Path(dst).write_bytes(b"weights")
    monkeypatch.setattr("torch.hub.download_url_to_file", fake_download)
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("IBNNET_PROGRESS", raising=False)
    for flag in ([], ["--progress"], ["--no-progress"]):
        code, out, err = run_cli("weights", "download", "resnet50_ibn_a", "--force", *flag)
        assert code == 0, err
    assert calls == [False, True, False]   # default off: stderr is not a terminal


# ------------------------------------------------------------------------------------ wandb sync

@pytest.fixture(scope="module")
def offline_run(tmp_path_factory) -> Path:
    """A real offline wandb run, as a run logged with logger=offline leaves it in its folder."""
    import os
    import subprocess
    import sys
    root = tmp_path_factory.mktemp("wandb-offline")
    code = (f"import wandb; r = wandb.init(mode='offline', dir={str(root)!r}, project='ibnnet-test', "
            f"id='exp-cell', name='cell'); r.log({{'loss': 1.0}}); r.finish()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True,
                   env=dict(os.environ, WANDB_SILENT="true"))
    (run,) = (root / "wandb").glob("offline-run-*")
    assert list(run.glob("*.wandb"))
    return run


def two_run_folders(tmp_path):
    from ibnnet.experiments.grid import load_experiment
    from ibnnet.runs.runner import prepare
    path = experiment(tmp_path, "grid: {model.name: [resnet18_bn, resnet18_ibn_a]}\n")
    folders = [prepare(cfg) for _, cfg, _ in load_experiment(path).folders()]
    return path, folders


def fake_offline_run(folder, stamp: str) -> Path:
    run = folder.path / "wandb" / f"offline-run-{stamp}-exp-cell"
    run.mkdir(parents=True)
    (run / "run-exp-cell.wandb").write_bytes(b"W&B")
    return run


def test_sync_uploads_each_offline_run_once(tmp_path, monkeypatch):
    calls = []

    def wandb_sync(runs, timeout_s):   # what a successful `wandb sync` leaves: its .synced markers
        calls.append([r.name for r in runs])
        for r in runs:
            for f in r.glob("*.wandb"):
                f.with_suffix(".wandb.synced").touch()
        return 0, "wandb: Syncing 1 run(s)"
    monkeypatch.setattr("ibnnet.runs.sync.run_wandb_sync", wandb_sync)
    monkeypatch.setattr("ibnnet.runs.sync.unreachable", lambda *a, **k: None)   # the upload is faked: no network needed
    path, (a, b) = two_run_folders(tmp_path)
    first = fake_offline_run(a, "20260101_000000")
    with monkeypatch.context() as m:   # a run still training is left for later
        m.setattr("ibnnet.commands.experiments.live_status", lambda folder, *args: ("running", {}))
        code, out, err = run_cli("sync", path)
    assert code == 0 and calls == [] and f"running         {a.path.name}  still training" in out
    assert not (a.path / "wandb" / "synced.json").exists()
    code, out, err = run_cli("sync", path)
    assert code == 0, err
    assert calls == [[first.name]] and f"synced          {a.path.name}  1 offline run(s)" in out
    assert "1 synced, 1 no offline runs" in out   # b logged nothing offline
    record = json.loads((a.path / "wandb" / "synced.json").read_text())
    assert record["run_dir"] == str(a.path.resolve()) and set(record["runs"]) == {first.name}
    assert record["runs"][first.name]["synced_at"]

    def no_wandb(runs, timeout_s):
        raise AssertionError("wandb must not run for runs already synced")
    monkeypatch.setattr("ibnnet.runs.sync.run_wandb_sync", no_wandb)
    code, out, _ = run_cli("sync", path)
    assert code == 0 and f"already synced  {a.path.name}" in out
    # a resumed attempt adds an offline run: only that one is uploaded
    monkeypatch.setattr("ibnnet.runs.sync.run_wandb_sync", wandb_sync)
    second = fake_offline_run(a, "20260102_000000")
    code, out, _ = run_cli("sync", path)
    assert code == 0 and calls[-1] == [second.name]
    assert set(json.loads((a.path / "wandb" / "synced.json").read_text())["runs"]) == {first.name, second.name}
    # the experiment's results run (its tables and figures, ibnnet table) is uploaded with the runs
    from ibnnet.runs.folder import RunFolder
    results = RunFolder(tmp_path / "results" / "exp")
    table_run = fake_offline_run(results, "20260103_000000")
    code, out, _ = run_cli("sync", path)
    assert code == 0 and calls[-1] == [table_run.name] and "synced          exp  1 offline run(s)" in out, out


def closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]    # nothing listens there once closed


@contextlib.contextmanager
def server(answer: bool):
    """A local HTTP server that answers every request with 500 (``answer``), or a socket that accepts
    connections and never says a word."""
    import http.server
    import socket
    import threading
    if answer:
        class Broken(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_error(500, "broken on purpose")
            do_POST = do_PUT = do_GET

            def log_message(self, *args):
                pass
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Broken)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}"
        finally:
            httpd.shutdown()
            httpd.server_close()
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(16)     # the kernel completes handshakes; nobody ever reads or answers
            yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_a_failed_upload_is_reported_and_nothing_recorded(tmp_path, monkeypatch, offline_run):
    import shutil
    path, (a, b) = two_run_folders(tmp_path)
    run = a.path / "wandb" / offline_run.name
    shutil.copytree(offline_run, run)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    for key in ("WANDB__GRAPHQL_RETRY_MAX", "WANDB__FILE_STREAM_RETRY_MAX", "WANDB__FILE_TRANSFER_RETRY_MAX"):
        monkeypatch.setenv(key, "1")   # wandb's own retry settings: fail in seconds, not minutes
    monkeypatch.setenv("WANDB__GRAPHQL_RETRY_WAIT_MAX_SECONDS", "1")
    # no network to the server (a compute node): one line, at once, and wandb is not even started
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("WANDB_BASE_URL", url)
    with monkeypatch.context() as m:
        m.setattr("ibnnet.runs.sync.run_wandb_sync", lambda *a: pytest.fail("wandb started without a network"))
        code, out, err = run_cli("sync", path, "--timeout", "60")
    assert code == 2 and err.strip().splitlines() == [
        f"ibnnet: error: cannot reach the wandb server {url} (connection refused by 127.0.0.1:{url.rsplit(':', 1)[1]}); "
        "nothing was uploaded. Run `ibnnet sync` on a machine with internet (a login node); the offline runs "
        "stay where they are"], err
    # a server that answers with errors: wandb's reason, per run folder, and nothing recorded
    with server(answer=True) as url:
        monkeypatch.setenv("WANDB_BASE_URL", url)
        code, out, err = run_cli("sync", path, "--timeout", "60")
        assert code == 1
        line = next(ln for ln in out.splitlines() if a.path.name in ln)
        assert line.split()[0] == "failed" and "wandb sync" in line, out
        assert "1 failed, 1 no offline runs" in out and "not synced" in err
        assert not (a.path / "wandb" / "synced.json").exists() and not list(run.glob("*.synced"))
        # no API key at all: one line saying what to do
        monkeypatch.delenv("WANDB_API_KEY")
        monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
        code, out, err = run_cli("sync", path, "--timeout", "60")
        assert code == 2 and err.startswith("ibnnet: error: wandb has no API key on this machine"), err
        assert "wandb login" in err
    # a server that never answers: the first upload gives up after --timeout, the others are not tried
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    shutil.copytree(offline_run, b.path / "wandb" / offline_run.name)
    for key in ("WANDB__GRAPHQL_RETRY_MAX", "WANDB__FILE_STREAM_RETRY_MAX", "WANDB__FILE_TRANSFER_RETRY_MAX",
                "WANDB__GRAPHQL_RETRY_WAIT_MAX_SECONDS"):
        monkeypatch.delenv(key)
    with server(answer=False) as url:
        monkeypatch.setenv("WANDB_BASE_URL", url)
        code, out, _ = run_cli("sync", path, "--timeout", "3")
    assert code == 1 and "wandb sync timed out after 3 s" in out, out
    assert "1 more folder(s) with offline runs not tried" in out and "1 failed, 1 not tried" in out, out
    assert not (a.path / "wandb" / "synced.json").exists() and not (b.path / "wandb" / "synced.json").exists()


# ------------------------------------------------------------------------------------ reruns

def test_a_rerun_says_it_skipped_failed_cells_and_exits_non_zero(tmp_path):
    """A cell that failed is not rerun without --retry-failed; the rerun must say so, not report success."""
    path = experiment(tmp_path, f"""
        overrides: {{data.train.dataset: imagenet, paths.data: "{tmp_path / 'data'}", data.val: []}}
        grid: {{model: {{BN: {{model.name: resnet18_bn}}}}}}
        table: {{rows: model, columns: eval, metrics: [top1_err]}}
    """)
    code, out, err = run_cli("sweep", path, "--no-table")
    assert code == 1 and "1 failed" in out, out + err
    code, out, err = run_cli("sweep", path, "--no-table")
    assert code == 1, out + err
    assert "1 cells, 0 to run, 1 failed before" in out
    assert "1 failed cell skipped: --retry-failed reruns it" in out + err


def test_only_without_a_match_lists_the_cells(tmp_path):
    path = experiment(tmp_path, "grid: {model.name: [resnet18_bn, resnet18_ibn_a]}\n")
    for command in ("sweep", "sync"):
        code, out, err = run_cli(command, path, "--only", "resnet50*", "--dry-run")
        assert code == 2, err
        assert err.startswith("ibnnet: error: no cell of exp matches --only 'resnet50*'"), err
        assert "  model.name=resnet18_bn\n  model.name=resnet18_ibn_a" in err, err


def test_version_and_every_positional_has_help(capsys):
    from ibnnet import __version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"ibnnet {__version__}"
    from ibnnet.cli import build_parser

    def parsers(p, path=("ibnnet",)):
        yield path, p
        for action in p._actions:
            if isinstance(action, __import__("argparse")._SubParsersAction):
                for name, child in action.choices.items():
                    yield from parsers(child, path + (name,))
    sub = __import__("argparse")._SubParsersAction
    undocumented = [f"{' '.join(path)} {a.option_strings or a.dest}" for path, p in parsers(build_parser())
                    for a in p._actions if a.help is None and not isinstance(a, sub)]
    assert not undocumented, undocumented


def test_status_names_evaluation_sets_as_the_table_does(tmp_path):
    path = experiment(tmp_path, """
        grid: {model.name: [resnet18_bn]}
        table: {rows: model.name, columns: eval, metrics: [top1_err], eval_labels: {synthetic: in-domain}}
    """)
    from ibnnet.experiments.grid import load_experiment
    from ibnnet.runs.runner import prepare
    (_, cfg, _), = load_experiment(path).folders()
    folder = prepare(cfg)
    folder.metrics_path.write_text(json.dumps({"metrics": {"synthetic": {"top1_err": 12.5, "top5_err": 1.0}}}))
    code, out, err = run_cli("status", path)
    assert code == 0 and "in-domain: top1_err 12.50, top5_err 1.00" in out and "synthetic:" not in out, out


def test_cells_before_the_experiment_do_not_swallow_it(tmp_path, monkeypatch):
    """`ibnnet plot curves --cells A B EXP`: --cells would take EXP too; the experiment is given back."""
    from ibnnet.cli import build_parser
    from ibnnet.commands.common import take_experiment_from_cells
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["plot", "curves", "--cells", "norm=SN", "8x2", "sn_table2",
                                      "trainer.max_epochs=1"])
    take_experiment_from_cells(args)
    assert (args.experiment, args.cells, args.overrides) == ("sn_table2", ["norm=SN", "8x2"], ["trainer.max_epochs=1"])
    code, out, err = run_cli("plot", "curves", "--cells", "norm=SN")
    assert code == 2 and "plot curves: name the experiment" in err, err
