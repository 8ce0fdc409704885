"""What a cluster feeds the suite that one quiet machine does not: array tasks starting together on one folder,
names that reach the shell and the file system, run references that could match more than one run, a
scheduler that does not answer."""
import json
import threading
from pathlib import Path
import time

import pytest

from ibnnet.errors import DataError


def test_corrupt_shards_started_together_all_run_and_a_foreign_folder_is_still_refused(tmp_path, monkeypatch):
    from test_robustness import write_val

    import ibnnet.files
    from ibnnet.data.tools.corruptions import MARKER, _imagecorruptions, corrupt_imagenet
    wnids = ("n01440764", "n01443537", "n01484850")
    src, dst = tmp_path / "val", tmp_path / "c"
    write_val(src, per_class=tuple((w, 1) for w in wnids), all_classes=False, size=(40, 40))
    _imagecorruptions()   # imported once here, not by three threads at once
    # A slow file server: the marker's temporary file stays in the folder for a while (as on NFS under load),
    # long enough for the other array tasks, started meanwhile, to list the folder.
    fsync = ibnnet.files.os.fsync
    monkeypatch.setattr(ibnnet.files.os, "fsync", lambda fd: (time.sleep(0.5), fsync(fd))[1])
    kw = dict(corruptions=["contrast"], severities=[1], resize=32, crop=32, progress=False)
    errors, results = {}, {}

    def shard(k):
        try:
            results[k] = corrupt_imagenet(src, dst, shard=(k, 3), **kw)
        except Exception as e:   # noqa: BLE001 - reported by the assertion below
            errors[k] = e

    threads = [threading.Thread(target=shard, args=(0,))]
    threads[0].start()
    deadline = time.time() + 10
    while not (dst.is_dir() and any(p.name.endswith(".tmp") for p in dst.iterdir())):
        assert time.time() < deadline and threads[0].is_alive(), errors
        time.sleep(0.01)
    threads += [threading.Thread(target=shard, args=(k,)) for k in (1, 2)]   # while shard 0 writes the marker
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(results) == [0, 1, 2] and all(r.written == 1 and not r.failed for r in results.values())
    assert sorted(p.parent.name for p in dst.rglob("*.JPEG")) == sorted(wnids)
    assert not [p for p in dst.rglob("*") if p.name.endswith(".tmp")]
    assert corrupt_imagenet(src, dst, **kw).written == 0   # the run without a shard finds everything done
    # a folder with someone else's files and no marker is still not written into
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=f"has no {MARKER}: not a set made by"):
        corrupt_imagenet(src, foreign, shard=(0, 3), **kw)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def _finished_run(root, experiment, run_id, scale="reduced", lr=0.01):
    import json
    folder = root / experiment / run_id
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(f"experiment: {experiment}\nscale: {scale}\noptim: {{lr: {lr}}}\n")
    (folder / "metrics.json").write_text(json.dumps({"metrics": {}}))
    return folder


def test_a_run_reference_names_exactly_one_run_of_exactly_that_cell(tmp_path):
    from ibnnet.models.weights import WeightsError
    from ibnnet.tasks.common import resolve_weights_path
    runs = tmp_path / "runs"
    plain = _finished_run(runs, "t6", "model=IBN-Net50-0123abcd")
    time.sleep(0.02)
    _finished_run(runs, "t6", "model=IBN-Net50-a-89abcdef")   # another cell whose name starts the same, newer
    assert resolve_weights_path("run:t6/model=IBN-Net50", runs) == plain / "checkpoints" / "last.ckpt"
    best = resolve_weights_path("run:t6/model=IBN-Net50-a:best", runs)
    assert best.parent.parent.name == "model=IBN-Net50-a-89abcdef" and best.name == "best.ckpt"
    # a second run of the cell with other settings: which one is meant is not guessed
    other = _finished_run(runs, "t6", "model=IBN-Net50-fedcba98", lr=0.02)
    with pytest.raises(WeightsError) as e:
        resolve_weights_path("run:t6/model=IBN-Net50", runs)
    msg = str(e.value)
    assert "2 finished runs of cell 'model=IBN-Net50'" in msg and "\n" not in msg
    assert "model=IBN-Net50-0123abcd (scale reduced, optim.lr=0.01)" in msg
    assert "model=IBN-Net50-fedcba98 (scale reduced, optim.lr=0.02)" in msg
    assert "run:t6/model=IBN-Net50-0123abcd" in msg and "@<scale>" in msg
    # picked by its run id, or by its scale when that is what differs
    assert resolve_weights_path("run:t6/model=IBN-Net50-fedcba98", runs).parent.parent == other
    _finished_run(runs, "t6", "model=IBN-Net50-00001111", scale="full")
    assert resolve_weights_path("run:t6/model=IBN-Net50@full", runs).parent.parent.name == "model=IBN-Net50-00001111"
    with pytest.raises(WeightsError, match="no finished run of cell 'model=IBN-Net5'"):
        resolve_weights_path("run:t6/model=IBN-Net5", runs)


BAD_NAMES = ["../../outside", "two\nlines", "$(touch PWNED)", "with space", "per%cent", ".hidden"]


def test_an_experiment_name_that_would_reach_the_shell_or_leave_its_folder_is_refused(tmp_path):
    import json

    from helpers import TINY, config
    from test_cli import run_cli
    base = config(tmp_path, TINY, "base.yaml")
    path = tmp_path / "experiments" / "bad.yaml"
    path.parent.mkdir()
    for name in BAD_NAMES:
        path.write_text(f"experiment: {json.dumps(name)}\nbase: {base}\n")
        code, out, err = run_cli("sweep", path, "--launcher", "slurm", "--dry-run", "launcher.slurm.cpus_per_task=1")
        assert code == 2 and out == "", (name, out, err)
        assert err.strip() == err.strip().splitlines()[0], err   # one line
        assert f"{path}: experiment={name!r}: " in err and "letters, digits" in err, err
    # the file name stands in for a missing `experiment:` key, so it is checked too
    odd = tmp_path / "experiments" / "my exp.yaml"
    odd.write_text(f"base: {base}\n")
    code, _, err = run_cli("sweep", odd, "--dry-run")
    assert code == 2 and f"{odd}: experiment='my exp'" in err and "`experiment:`" in err, err
    # a run config names its experiment too (`ibnnet train`: the runs folder is paths.runs/<experiment>)
    code, _, err = run_cli("train", base, "experiment=../../outside")
    assert code == 2 and "command line: experiment='../../outside': " in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.yaml", "experiments"]
    assert not (tmp_path.parent / "outside").exists()


def test_the_sbatch_script_quotes_every_path_and_runs_what_it_says(tmp_path):
    import os
    import subprocess

    from test_cli import experiment, run_cli

    from ibnnet.config import ConfigError
    from ibnnet.experiments.grid import load_experiment
    from ibnnet.launchers.slurm import render_script
    path = experiment(tmp_path, "grid: {model: {key: model.name, values: {BN: resnet18_bn}}}\n")
    runs = tmp_path / "runs dir %A %% $(touch PWNED) `touch PWNED2` ;x"
    code, out, err = run_cli("sweep", path, "--launcher", "slurm", "--dry-run", f"paths.runs={runs}",
                             "launcher.slurm.cpus_per_task=1", "launcher.slurm.partition=a b")
    assert code == 0, err
    script = out[out.index("#!/bin/bash"):]
    (tmp_path / "job.sbatch").write_text(script)
    check = subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    out_dir = next(ln for ln in script.splitlines() if ln.startswith("#SBATCH --output="))
    # sbatch reads a double-quoted value as one word and turns %% into %; %A_%a are its own patterns
    slurm_dir = runs.resolve() / "exp" / "_slurm"
    assert out_dir.startswith(f'#SBATCH --output="{str(slurm_dir).replace("%", "%%")}/') and \
        out_dir.endswith('/%A_%a.out"'), out_dir
    assert '#SBATCH --partition="a b"' in script and "#SBATCH --job-name=ibnnet-exp" in script
    # the shell part, run as a SLURM task would run it (srun replaced by a recorder): it starts exactly the run
    (_, cfg, folder), = load_experiment(path).folders((f"paths.runs={runs}",))
    stamp = out_dir[len('#SBATCH --output="'):-len('/%A_%a.out"')].replace("%%", "%")
    (Path(stamp)).mkdir(parents=True)
    (Path(stamp) / "runs.txt").write_text(f"{folder.path.resolve()}\n")
    folder.path.mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n')
    (bin_dir / "srun").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SRUN_ARGS=str(tmp_path / "srun.args"),
               SLURM_ARRAY_TASK_ID="0", SLURM_JOB_ID="7", SLURM_ARRAY_JOB_ID="7")
    ran = subprocess.run(["bash", str(tmp_path / "job.sbatch")], env=env, capture_output=True, text=True,
                         cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    args = (tmp_path / "srun.args").read_text().splitlines()
    assert args[-4:] == ["-m", "ibnnet", "run", str(folder.path.resolve())], args
    assert (folder.path / "slurm-7_0.out").is_file()
    assert not [p for p in (tmp_path, Path.cwd()) if (p / "PWNED").exists() or (p / "PWNED2").exists()]
    # a name that never passed the experiment file's check still cannot leave its #SBATCH line
    with pytest.raises(ConfigError, match="a control character \\(newline\\) cannot go into an #SBATCH line"):
        render_script(cfg, "x\n$(touch PWNED)", tmp_path / "runs.txt", tmp_path, 1)


def test_a_job_the_scheduler_cannot_be_asked_about_is_unknown_and_not_resubmitted(tmp_path):
    import os

    from test_cli import experiment, run_cli

    from ibnnet.experiments.grid import load_experiment
    from ibnnet.runs.runner import prepare
    # SLURM's own commands failing as they do when slurmctld is down (sacct: no accounting either)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for cmd, msg in (("squeue", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"),
                     ("scontrol", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"),
                     ("sacct", "sacct: error: Problem talking to the database: Connection refused"),
                     ("sbatch", "sbatch: error: Batch job submission failed: Unable to contact slurm controller")):
        (bin_dir / cmd).write_text(f'#!/bin/sh\necho "$0 $*" >> "{tmp_path}/called"\necho "{msg}" >&2\nexit 1\n')
        (bin_dir / cmd).chmod(0o755)
    path = experiment(tmp_path, "grid: {model: {key: model.name, values: {BN: resnet18_bn, IBN-a: resnet18_ibn_a}}}\n")
    (_, bn_cfg, bn), (_, _, ibn) = load_experiment(path).folders(("launcher.slurm.cpus_per_task=1",))
    prepare(bn_cfg)
    bn.update_state(status="submitted", slurm_job="4242_0", submitted_at=time.time())
    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{bin_dir}:{old_path}"
    try:
        code, out, err = run_cli("status", path, "launcher.slurm.cpus_per_task=1")
        assert code == 0, err
        line = next(ln for ln in out.splitlines() if "model=BN" in ln)
        assert " unknown " in line and "failed" not in line, out
        assert "job 4242_0" in line and "could not ask SLURM" in line and "Unable to contact slurm controller" in line
        assert "1 unknown" in out
        (tmp_path / "called").unlink()
        code, out, err = run_cli("sweep", path, "--launcher", "slurm", "--retry-failed", "--only", "model=BN",
                                 "launcher.slurm.cpus_per_task=1")
    finally:
        os.environ["PATH"] = old_path
    assert code == 1, (out, err)   # nothing was done for the cell
    assert "sbatch" not in (tmp_path / "called").read_text()   # not submitted a second time
    assert f"unknown   {bn.path.name}" in out and "not resubmitted" in out and "ibnnet status" in out, out
    assert not ibn.path.exists()


def test_a_job_no_node_of_its_partition_can_run_is_refused_naming_what_fits(tmp_path):
    import os

    from test_cli import experiment, run_cli
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # what sbatch --test-only and sinfo say on a cluster with a 2-node GPU partition (the default is CPU-only)
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\necho "$*" >> "{tmp_path}/sbatch.calls"\ncase "$*" in *--test-only*) '
        'echo "allocation failure: Requested node configuration is not available" >&2; exit 1;; esac\nexit 3\n')
    (bin_dir / "sinfo").write_text("#!/bin/sh\ncat <<'EOF'\n"
                                   "gpu|g1|32|256000|gpu:a100:4(S:0-1)|2-00:00:00\n"
                                   "gpu|g2|32|256000|gpu:a100:4(S:0-1)|2-00:00:00\n"
                                   "cpu*|c1|64|512000|(null)|infinite\nEOF\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    path = experiment(tmp_path, "grid: {model: {key: model.name, values: {BN: resnet18_bn}}}\n")
    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{bin_dir}:{old_path}"
    try:
        code, out, err = run_cli("sweep", path, "--launcher", "slurm", "launcher.slurm.partition=gpu",
                                 "trainer.devices=8", "launcher.slurm.gpus_per_node=8",
                                 "launcher.slurm.cpus_per_task=8", "launcher.slurm.mem=300G",
                                 "launcher.slurm.time=3-00:00:00", "trainer.num_nodes=3")
    finally:
        os.environ["PATH"] = old_path
    assert code == 2 and err.count("\n") == 1, (out, err)
    assert "Requested node configuration is not available" in err
    for expected in ("trainer.num_nodes=3: partition gpu has 2 node(s); set trainer.num_nodes=2 or fewer",
                     "launcher.slurm.cpus_per_task=8: the nodes of partition gpu have 32 CPUs for 8 tasks per node "
                     "(trainer.devices); set launcher.slurm.cpus_per_task=4 or fewer",
                     "launcher.slurm.mem=300G: the nodes of partition gpu have 256000M; set launcher.slurm.mem=256000M",
                     "launcher.slurm.gpus_per_node=8: the nodes of partition gpu have 4 GPUs; "
                     "set launcher.slurm.gpus_per_node=4 or fewer",
                     "launcher.slurm.time=3-00:00:00: the time limit of partition gpu is 2-00:00:00"):
        assert expected in err, (expected, err)
    assert (tmp_path / "sbatch.calls").read_text().count("\n") == 1   # the test only: nothing submitted
    assert not (tmp_path / "runs").exists()


def test_a_run_that_recorded_its_error_is_failed_while_its_job_is_still_ending(tmp_path):
    # srun and the batch script take a moment to exit after the run wrote its error: squeue still says RUNNING
    from ibnnet.runs.folder import RunFolder
    from ibnnet.runs.status import live_status
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    (folder.path / "state.json").write_text(json.dumps({"status": "failed", "slurm_job": "7_0", "error": "boom",
                                                        "attempts": []}))
    status, info = live_status(folder, {"7_0": "RUNNING"})
    assert status == "failed" and "still ending" in info["note"]
    (folder.path / "state.json").write_text(json.dumps({"status": "submitted", "slurm_job": "8_0", "attempts": []}))
    assert live_status(folder, {"8_0": "RUNNING"})[0] == "running"   # resubmitted: its new job runs it
