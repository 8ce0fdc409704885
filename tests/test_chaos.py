"""The chaos test: a sweep of six tiny cells, three workers sharing one SLURM job id, random SIGKILL / SIGTERM /
SIGINT to workers and run processes, ESTALE injected into heartbeats and checkpoint writes. It must end with every
cell done once, weights bit-identical to uninterrupted runs, no temporary file left, and ``status`` right at every
step. ``IBNNET_CHAOS_SEED=N pytest tests/test_chaos.py`` replays the fault schedule of seed N."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import torch
from helpers import ENV, REPO, TINY, cli, config

from ibnnet.experiments.grid import load_experiment
from ibnnet.runs import claims
from ibnnet.runs.folder import DONE, FAILED
from ibnnet.runs.status import live_status

# Loaded by every worker and run process of the test (PYTHONPATH): os.pwrite on a claim file (the heartbeat) and
# os.replace onto a checkpoint fail with ESTALE, as on an NFS client whose handles went stale.
FAULTS = textwrap.dedent("""
    import errno, os, random
    _rng = random.Random(os.environ["IBNNET_CHAOS_SEED"] + ":" + str(os.getpid()))
    _pwrite, _replace = os.pwrite, os.replace
    _ckpt_faults = [1]

    def pwrite(fd, data, offset):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if "/claims/claim-" in target and _rng.random() < 0.3:
            raise OSError(errno.ESTALE, "Stale file handle (injected)")
        return _pwrite(fd, data, offset)

    def replace(src, dst, **kw):
        if str(dst).endswith(".ckpt") and _ckpt_faults[0] and _rng.random() < 0.5:
            _ckpt_faults[0] -= 1
            raise OSError(errno.ESTALE, "Stale file handle (injected)")
        return _replace(src, dst, **kw)

    os.pwrite, os.replace = pwrite, replace
""")

BODY = TINY.replace("num_samples: 32", "num_samples: 48").replace("max_epochs: 2", "max_epochs: 3") + \
    "launcher: {heartbeat_s: 0.5, claim_timeout_s: 10}\n"


def _experiment(tmp_path, runs):
    base = config(tmp_path, BODY, name=f"base-{runs}.yaml")
    base.write_text(base.read_text().replace(str(tmp_path / "runs"), str(tmp_path / runs)))
    path = tmp_path / f"chaos-{runs}.yaml"
    path.write_text(textwrap.dedent(f"""
        experiment: chaos
        base: {base}
        grid:
          model:
            key: model.name
            values: {{BN: resnet18_bn, IBN-a: resnet18_ibn_a}}
          lr:
            key: optim.lr
            values: {{a: 0.01, b: 0.02, c: 0.04}}
        table: {{rows: model, columns: lr, metrics: [top1_err]}}
    """))
    return path


def _weights(folder):
    return torch.load(folder.checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def test_a_sweep_survives_kills_signals_and_nfs_errors_exactly(tmp_path):
    seed = int(os.environ.get("IBNNET_CHAOS_SEED", "0"))
    rng = random.Random(seed)
    from ibnnet.runs.runner import execute, prepare

    # uninterrupted references, trained in this process (the same pinned kernels as the run processes)
    reference = {}
    for cell, cfg, folder in load_experiment(_experiment(tmp_path, "reference-runs")).folders():
        prepare(cfg)
        execute(folder.path)
        reference[cell.name] = _weights(folder)

    exp_path = _experiment(tmp_path, "runs")
    triples = load_experiment(exp_path).folders()
    folders = [f for _, _, f in triples]
    faults_dir = tmp_path / "faults"
    faults_dir.mkdir()
    (faults_dir / "sitecustomize.py").write_text(FAULTS)
    env = dict(ENV, SLURM_JOB_ID="4242", SLURM_RESTART_COUNT="0", IBNNET_CHAOS_SEED=str(seed),
               PYTHONPATH=os.pathsep.join([str(faults_dir), ENV.get("PYTHONPATH", "")]))
    logs = []

    def start_worker():
        log = open(tmp_path / f"worker-{len(logs)}.log", "w")
        logs.append(log.name)
        return subprocess.Popen([sys.executable, "-m", "ibnnet", "sweep", str(exp_path), "--no-table", "--yes"],
                                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    workers = [start_worker() for _ in range(3)]

    def first_cell(log):   # the first cell a worker began, or None
        return next((line.split(") ", 1)[1].strip() for line in open(log) if line.startswith("[ibnnet] (")), None)
    # the faults begin once the three workers, started together, have each begun a cell
    deadline = time.monotonic() + 120
    while not all(first_cell(p) for p in logs):
        assert time.monotonic() < deadline and all(w.poll() is None for w in workers), \
            "\n".join(open(p).read()[-2000:] for p in logs)
        time.sleep(0.2)
    first = [first_cell(p) for p in logs]
    # ... three different cells: no worker lost a race for one after seconds of its run's start-up
    assert len(set(first)) == 3, first
    faults = ["worker SIGKILL", "worker SIGTERM", "worker SIGINT", "run SIGKILL", "run SIGKILL", "worker SIGINT"]
    rng.shuffle(faults)
    next_fault = time.monotonic() + rng.uniform(0.5, 3)
    done_seen = set()
    deadline = time.monotonic() + 240
    try:
        while not all(f.is_done() for f in folders):
            assert time.monotonic() < deadline, "\n".join(open(p).read()[-2000:] for p in logs)
            for f in folders:   # status is right at every step
                status = live_status(f, None, 10)[0]
                assert status != FAILED, (f.path.name, f.state(), open(f.log_path).read()[-3000:])
                if status == DONE:
                    assert f.metrics_path.is_file()
                    done_seen.add(f.path.name)
                else:
                    assert f.path.name not in done_seen, f"{f.path.name} went back from done to {status}"
            if faults and time.monotonic() > next_fault:
                what, how = faults.pop().split()
                if what == "worker":
                    alive = [w for w in workers if w.poll() is None]
                    if alive:
                        os.kill(rng.choice(alive).pid, getattr(signal, how))
                else:
                    held = [c for c in (claims.holder(f.path) for f in folders) if c is not None and c.info.get("pid")]
                    if held:
                        try:
                            os.kill(rng.choice(held).info["pid"], signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                next_fault = time.monotonic() + rng.uniform(1.5, 4)
            workers = [w for w in workers if w.poll() is None]
            while len(workers) < 3 and not all(f.is_done() for f in folders):
                workers.append(start_worker())   # as a user (or SLURM's requeue) starts the sweep again
            time.sleep(0.2)
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait()

    for cell, _, f in triples:
        attempts = f.state()["attempts"]
        finished = [a for a in attempts if a.get("status") == DONE]
        assert len(finished) <= 1, (f.path.name, attempts)     # trained to completion once ...
        done_at = f.metrics()["finished_at"]
        assert all(time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(a["start"])) <= done_at for a in attempts)
        w = _weights(f)                                         # ... to the uninterrupted run's weights, bit for bit
        assert w.keys() == reference[cell.name].keys()
        assert all(torch.equal(w[k], reference[cell.name][k]) for k in w), f.path.name
    # nothing half-written left anywhere
    leftovers = [p for p in (tmp_path / "runs").rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    assert not leftovers, leftovers
    assert "6 done" in cli("status", str(exp_path))
    # a sweep of the finished grid touches nothing
    mtimes = [f.metrics_path.stat().st_mtime for f in folders]
    assert "0 finished, 6 already done, 0 failed" in cli("sweep", str(exp_path), "--no-table")
    assert [f.metrics_path.stat().st_mtime for f in folders] == mtimes
