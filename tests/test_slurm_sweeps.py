"""Sweeps on a real SLURM cluster (tests/conftest.py starts one): arrays, DDP, requeue, retry."""
import csv
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import CLS, REPO, TINY, assert_same_training, cli, config

from ibnnet.experiments.grid import load_experiment
from ibnnet.runs import claims

pytestmark = pytest.mark.slurm

SLURM = """
launcher:
  name: slurm
  slurm: {cpus_per_task: 1, time: "00:20:00", signal_seconds: 60}
"""


def env_for(cluster):
    return dict(cluster.env, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1")


def wait_done(exp_path, folders, env, timeout=420):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(f.is_done() or f.state().get("status") == "failed" for f in folders):
            # a failed run's job may still be finishing: let the scheduler catch up
            return
        time.sleep(2)
    status = cli("status", exp_path, env=env)
    raise AssertionError(f"runs did not finish in {timeout} s:\n{status}")


def make_experiment(tmp_path, name, base, grid):
    path = tmp_path / "experiments" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(f"""
        experiment: {name}
        base: {base}
        grid: {grid}
        table: {{rows: model, columns: eval, metrics: [top1_err]}}
    """))
    return path


def test_demo_sweep_runs_as_a_job_array_and_its_table_renders(slurm_cluster, tmp_path):
    env = env_for(slurm_cluster)
    overrides = [f"paths.runs={tmp_path / 'runs'}", f"paths.results={tmp_path / 'results'}",
                 "trainer.max_epochs=1", "data.train.num_samples=64", "data.augment.image_size=32",
                 "data.augment.eval_resize=32", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
                 "launcher.slurm.cpus_per_task=1", "launcher.slurm.time=00:20:00"]
    demo = REPO / "experiments" / "demo.yaml"
    cut = ("--only", "model=IBN-*")  # a 2-cell cut of the demo: IBN-a and IBN-b
    dry = cli("sweep", demo, "--launcher", "slurm", "--dry-run", *cut, *overrides, env=env)
    assert "#SBATCH --array=0-1" in dry and "srun --kill-on-bad-exit=1" in dry and "nothing written" in dry
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
    out = cli("sweep", demo, "--launcher", "slurm", *cut, *overrides, env=env)
    assert "submitted job array" in out and "(2 runs)" in out
    # submitting again while the array is queued or running starts nothing new
    again = cli("sweep", demo, "--launcher", "slurm", *cut, *overrides, env=env)
    assert "nothing to submit" in again
    folders = [f for c, _, f in load_experiment(demo).folders(tuple(overrides)) if c.name != "model=BN"]
    script = next((tmp_path / "runs" / "demo" / "_slurm").glob("*/job.sbatch")).read_text()
    assert "#SBATCH --signal=USR1@120" in script and "--ntasks-per-node=1" in script
    wait_done(demo, folders, env)
    assert all(f.is_done() for f in folders), cli("status", demo, *overrides, env=env)
    jobs = {f.state()["slurm_job"].split("_")[0] for f in folders}
    assert len(jobs) == 1  # one array
    status = cli("status", demo, *overrides, env=env)
    assert status.count(" done ") == 2 and "pending" in status  # BN was left out of the cut
    table = cli("table", demo, *overrides, env=env)
    # made under result-changing overrides (1 epoch, 32 px): beside the demo's own table, never over it
    plot = Path(next(ln for ln in table.splitlines() if ln.startswith("[ibnnet] plot:")).split(":", 1)[1].strip())
    assert "| IBN-b |" in table and plot.is_file() and plot.parent.parent == tmp_path / "results" / "demo" / "variants"


def test_two_task_ddp_job_records_world_size_two(slurm_cluster, tmp_path):
    env = env_for(slurm_cluster)
    body = CLS.replace("trainer: {max_epochs: 8,", "trainer: {devices: 2, strategy: ddp, max_epochs: 1,")
    base = config(tmp_path, body + SLURM, "base.yaml")
    path = make_experiment(tmp_path, "ddp", base, "{model: {key: model.name, values: {IBN-a: resnet18_ibn_a}}}")
    out = cli("sweep", path, "--launcher", "slurm", env=env)
    assert "(1 runs)" in out
    (_, cfg, folder), = load_experiment(path).folders()
    assert cfg.trainer.devices == 2
    script = next((tmp_path / "runs" / "ddp" / "_slurm").glob("*/job.sbatch")).read_text()
    assert "--ntasks-per-node=2" in script
    wait_done(path, [folder], env)
    metrics = folder.metrics()
    assert metrics is not None, folder.log_tail(40)
    assert metrics["world_size"] == 2


def test_requeue_on_the_time_limit_signal_resumes_bit_identically(slurm_cluster, tmp_path):
    env = env_for(slurm_cluster)
    # one thread: the SLURM task's CPU set and this machine's core count must not change the float sums
    body = CLS.replace("max_epochs: 8", "max_epochs: 4").replace("image_size: 48, eval_resize: 48",
                                                                 "image_size: 32, eval_resize: 32")
    body = body.replace("log_every_n_steps: 1}", "log_every_n_steps: 1, num_threads: 1, log_sample_indices: true}")
    base = config(tmp_path, body + SLURM, "base.yaml")
    path = make_experiment(tmp_path, "requeue", base, "{model: {key: model.name, values: {BN: resnet18_bn}}}")
    cli("sweep", path, "--launcher", "slurm", env=env)
    (_, cfg, folder), = load_experiment(path).folders()
    samples = folder.path / "logs" / "samples-rank0.jsonl"
    deadline = time.time() + 300
    # interrupt mid-epoch: after the first epoch's checkpoint and two batches of the second
    while not (samples.is_file() and len(samples.read_text().splitlines()) >= 96 // 16 + 2):
        assert time.time() < deadline, folder.log_tail(40)
        assert not folder.is_done(), "finished before it could be interrupted; make the run longer"
        time.sleep(0.05)
    job = folder.state()["slurm_job"]
    # what SLURM sends --signal=USR1@N seconds before the time limit, now
    slurm_cluster.run("scancel", "--signal=USR1", job)
    # meanwhile, the same config uninterrupted, here and without SLURM
    from omegaconf import OmegaConf

    from ibnnet.runs.runner import prepare
    ref_cfg = OmegaConf.merge(cfg, {"paths": {"runs": str(tmp_path / "reference")}, "launcher": {"name": "local"}})
    reference = prepare(ref_cfg)
    cli("run", reference.path)
    wait_done(path, [folder], env, timeout=480)
    m = folder.metrics()
    assert m is not None, folder.log_tail(60)
    attempts = folder.state()["attempts"]
    assert len(attempts) == 2, attempts
    assert attempts[0]["status"] == "requeued" and attempts[1]["resume_from"] == "preempt.ckpt"
    assert attempts[1].get("SLURM_RESTART_COUNT") == "1"
    steps_per_epoch = 96 // 16
    assert m["epochs"] == 4 and m["global_step"] == 4 * steps_per_epoch
    with open(folder.path / "logs" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]
    assert len(steps) == len(set(steps)) == 4 * steps_per_epoch   # every step logged once
    assert reference.path.name == folder.path.name
    assert_same_training(reference, folder, epochs=4, steps_per_epoch=steps_per_epoch, num_samples=96)
    assert not (folder.checkpoint_dir / "preempt.ckpt").exists()  # removed once the run finished
    log = "".join(p.read_text() for p in folder.path.glob("slurm-*.out"))
    assert "saved" in log and "preempt.ckpt" in log and "requeued job" in log


def test_a_time_limit_signal_in_the_final_evaluation_requeues_and_finishes(slurm_cluster, tmp_path):
    """SIGUSR1 after training, in the evaluation: the job requeues itself (no new checkpoint); the restarted
    job resumes from the last epoch's last.ckpt, evaluates again and finishes."""
    env = env_for(slurm_cluster)
    # one epoch of 2 batches, evaluated only after training (check_val_every_n_epoch: 2): 800 images, seconds
    # for the signal to land in
    body = TINY.replace("max_epochs: 2,", "max_epochs: 1, check_val_every_n_epoch: 2,").replace(
        "domain: synthetic, num_samples: 8}", "domain: synthetic, num_samples: 800}")
    base = config(tmp_path, body + SLURM, "base.yaml")
    path = make_experiment(tmp_path, "final_eval", base, "{model: {key: model.name, values: {BN: resnet18_bn}}}")
    cli("sweep", path, "--launcher", "slurm", env=env)
    (_, _, folder), = load_experiment(path).folders()
    deadline = time.time() + 300
    while not (folder.checkpoint_dir / "last.ckpt").is_file():   # the one epoch's end: the evaluation comes next
        assert time.time() < deadline and not folder.is_done(), folder.log_tail(40)
        time.sleep(0.05)
    slurm_cluster.run("scancel", "--signal=USR1", folder.state()["slurm_job"])
    wait_done(path, [folder], env)
    assert folder.is_done(), folder.log_tail(60)
    attempts = folder.state()["attempts"]
    assert [a["status"] for a in attempts] == ["requeued", "done"], attempts
    assert attempts[1]["resume_from"] == "last.ckpt" and attempts[1].get("SLURM_RESTART_COUNT") == "1"
    assert not (folder.checkpoint_dir / "preempt.ckpt").exists()
    log = "".join(p.read_text() for p in folder.path.glob("slurm-*.out"))
    assert "stopping (time limit) in the evaluation" in log and "requeued job" in log, log[-3000:]


def test_a_failing_cell_is_reported_and_retried_alone(slurm_cluster, tmp_path):
    env = env_for(slurm_cluster)
    body = CLS.replace("max_epochs: 8", "max_epochs: 1").replace("image_size: 48, eval_resize: 48",
                                                                 "image_size: 32, eval_resize: 32")
    base = config(tmp_path, body + SLURM, "base.yaml")
    weights = tmp_path / "later.pth"
    path = make_experiment(tmp_path, "retry", base, "{model: {OK: {model.name: resnet18_bn}, "
                           f"BROKEN: {{model.name: resnet18_bn, model.pretrained_file: {weights}}}}}}}")
    cli("sweep", path, "--launcher", "slurm", env=env)
    (_, _, ok), (_, _, broken) = load_experiment(path).folders()
    wait_done(path, [ok, broken], env)
    time.sleep(3)
    status = cli("status", path, env=env)
    assert ok.is_done() and not broken.is_done()
    assert "model=BROKEN" in status and "failed" in status and "no such weight file" in status
    with pytest.raises(AssertionError, match="exited 1") as skipped:   # nothing was rerun: not a success
        cli("sweep", path, "--launcher", "slurm", env=env)
    again = str(skipped.value)
    assert "nothing to submit" in again and "1 failed cell skipped: --retry-failed reruns it" in again
    torch.save(torch.nn.Module.state_dict(__import__("timm").create_model("resnet18_bn")), weights)
    ok_mtime = ok.metrics_path.stat().st_mtime
    retry = cli("sweep", path, "--launcher", "slurm", "--retry-failed", env=env)
    assert "(1 runs)" in retry
    wait_done(path, [broken], env)
    for _ in range(30):
        if broken.is_done():
            break
        time.sleep(2)
    assert broken.is_done(), broken.log_tail(40)
    assert ok.metrics_path.stat().st_mtime == ok_mtime  # the finished cell was not run again


def test_a_job_the_partition_cannot_run_is_refused_and_a_pending_job_shows_why(slurm_cluster, tmp_path):
    env = env_for(slurm_cluster)
    overrides = [f"paths.runs={tmp_path / 'runs'}", f"paths.results={tmp_path / 'results'}",
                 "launcher.slurm.time=00:20:00"]
    demo = REPO / "experiments" / "demo.yaml"
    before = slurm_cluster.run("squeue", "-h", "-o", "%i").stdout
    # the schema's 4 CPUs per task on the test cluster's 2-CPU node: SLURM would queue it forever (PartitionConfig)
    with pytest.raises(AssertionError, match="exited 2") as refused:
        cli("sweep", demo, "--launcher", "slurm", "--only", "model=BN", *overrides, env=env)
    assert ("launcher.slurm.cpus_per_task=4: the nodes of partition debug have 2 CPUs; set "
            "launcher.slurm.cpus_per_task=2 or fewer") in str(refused.value)
    assert slurm_cluster.run("squeue", "-h", "-o", "%i").stdout == before and not (tmp_path / "runs").exists()
    # a job that can start but waits (held here) is pending, with SLURM's reason
    cli("sweep", demo, "--launcher", "slurm", "--only", "model=BN", *overrides, "launcher.slurm.cpus_per_task=1",
        "launcher.slurm.extra_sbatch=[--hold]", env=env)
    (_, _, folder), = [t for t in load_experiment(demo).folders(tuple(overrides)) if t[0].name == "model=BN"]
    job = folder.state()["slurm_job"]
    try:
        status = cli("status", demo, *overrides, env=env)
        line = next(ln for ln in status.splitlines() if "model=BN" in ln)
        assert " pending " in line and f"job {job} (PENDING, reason JobHeldUser)" in line, status
    finally:
        slurm_cluster.run("scancel", job.split("_")[0])


def test_two_workers_inside_one_allocation_finish_every_cell_without_a_takeover(slurm_cluster, tmp_path):
    # `ibnnet sweep --workers 2` in one sbatch job: both workers and their runs share SLURM_JOB_ID. A claim of
    # "this job, another pid" was once taken for a dead earlier incarnation: the workers took each other's runs.
    from helpers import TINY
    base = config(tmp_path, TINY + "launcher: {heartbeat_s: 0.5, claim_timeout_s: 10}\n", "base.yaml")
    path = make_experiment(tmp_path, "allocation", base,
                           "{model: {key: model.name, values: {BN: resnet18_bn, IBN-a: resnet18_ibn_a}}}")
    folders = [f for _, _, f in load_experiment(path).folders()]
    script = (f"#!/bin/bash\ncd {REPO}\n"
              f"{sys.executable} -m ibnnet sweep {path} --workers 2 --no-table --yes > {tmp_path}/out.txt 2>&1\n")
    job = slurm_cluster.sbatch(script, "--cpus-per-task=2", "-o", str(tmp_path / "job.out"), cwd=tmp_path)
    assert slurm_cluster.wait(job, timeout=300) == "COMPLETED", (tmp_path / "out.txt").read_text()[-3000:]
    out = (tmp_path / "out.txt").read_text()
    for f in folders:
        assert f.is_done(), out[-3000:]
        attempts = f.state()["attempts"]
        assert len(attempts) == 1 and attempts[0]["SLURM_JOB_ID"] == job, attempts
        assert claims.current(f.path).generation == 1   # claimed once: nobody took it over
    assert "took over" not in out and "taken over" not in out
