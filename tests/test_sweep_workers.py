"""Many workers, one sweep: every cell is claimed by exactly one process, a dead worker's cell is taken
over and resumed, nothing runs twice at the same time and nothing is lost."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

from helpers import ENV, REPO, TINY, cli, config

from ibnnet.experiments.grid import load_experiment
from ibnnet.runs import claims


def test_a_claim_is_exclusive_until_released_or_stale(tmp_path):
    run = tmp_path / "run"
    first = claims.try_claim(run, heartbeat_s=1, timeout_s=60)
    assert isinstance(first, claims.Claim) and first.path.name == "claim-000001.json"
    info = json.loads(first.path.read_text())
    assert info["host"] == socket.gethostname() and info["pid"] == os.getpid()
    # the holder is alive: nobody else gets it
    other = claims.try_claim(run, heartbeat_s=1, timeout_s=60)
    assert isinstance(other, claims.ClaimRecord) and other.generation == 1
    assert claims.holder(run).generation == 1
    # seen without a heartbeat for longer than the timeout (by the reader's own clock; the file's time is not
    # looked at): the next generation is taken, recording whom it replaced
    observer = claims.Observer()
    assert claims.holder(run, observer, timeout_s=60) is not None
    key = (str(run), 1)
    observer.seen[key] = (observer.seen[key][0], time.monotonic() - 120)
    second = claims.try_claim(run, heartbeat_s=1, timeout_s=60, observer=observer)
    assert isinstance(second, claims.Claim) and second.record.generation == 2
    assert json.loads(second.path.read_text())["took_over"]["pid"] == os.getpid()
    second.release()
    assert claims.holder(run) is None and claims.current(run).released
    third = claims.try_claim(run, heartbeat_s=1, timeout_s=60)
    assert isinstance(third, claims.Claim) and third.record.generation == 3
    third.release()
    first.release()   # taken over long ago: releasing marks nothing
    assert claims.current(run).generation == 3


def test_a_claim_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    run = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (run / "claims").mkdir(parents=True)
    (run / "claims" / "claim-000001.json").write_text(json.dumps({"host": socket.gethostname(), "pid": pid}))
    assert claims.holder(run, 3600) is None
    taken = claims.try_claim(run, heartbeat_s=1, timeout_s=3600)
    assert isinstance(taken, claims.Claim) and taken.record.generation == 2
    # the heartbeat thread keeps the file's mtime fresh
    before = taken.path.stat().st_mtime
    taken.start_heartbeat()
    time.sleep(1.5)
    assert taken.path.stat().st_mtime > before
    taken.release()


def test_a_claimed_run_is_not_started_twice(tmp_path):
    path = config(tmp_path, BODY)
    from ibnnet.config import compose
    from ibnnet.runs.runner import prepare
    folder = prepare(compose(path))
    held = claims.try_claim(folder.path, heartbeat_s=1, timeout_s=30).start_heartbeat()
    try:
        proc = subprocess.run([sys.executable, "-m", "ibnnet", "run", str(folder.path)], env=ENV, cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == claims.EXIT_CLAIMED, proc.stdout + proc.stderr
        assert "being trained by" in proc.stdout and str(os.getpid()) in proc.stdout
        assert not (folder.path / "state.json").exists()   # the refused process wrote nothing
    finally:
        held.release()


BODY = TINY + """launcher: {heartbeat_s: 1, claim_timeout_s: 30}
"""


def test_three_workers_share_four_cells_and_survive_a_killed_one(tmp_path):
    base = config(tmp_path, BODY)
    exp_path = tmp_path / "experiments" / "shared.yaml"
    exp_path.parent.mkdir()
    exp_path.write_text(textwrap.dedent(f"""
        experiment: shared
        base: {base}
        grid:
          model:
            key: model.name
            values: {{BN: resnet18_bn, IBN-a: resnet18_ibn_a}}
          lr:
            key: optim.lr
            values: {{small: 0.01, large: 0.02}}
        table: {{rows: model, columns: lr, metrics: [top1_err]}}
    """))
    folders = [f for _, _, f in load_experiment(exp_path).folders()]
    assert len(folders) == 4
    # workers 1 and 2: one `--workers 2` sweep; worker 3: a second sweep command, in its own process group
    pair = subprocess.Popen([sys.executable, "-m", "ibnnet", "sweep", exp_path, "--workers", "2"], env=ENV,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lone = subprocess.Popen([sys.executable, "-m", "ibnnet", "sweep", exp_path, "--no-table"], env=ENV, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # kill the lone worker (and its training process) once a cell of its has finished an epoch
    victim = None
    deadline = time.time() + 400
    while victim is None:
        assert time.time() < deadline and lone.poll() is None, "the lone worker never got a cell"
        for f in folders:
            c = claims.holder(f.path, 30)
            if c is not None and c.info.get("ppid") == lone.pid and (f.checkpoint_dir / "last.ckpt").exists():
                victim = f
                break
        time.sleep(0.05)
    os.killpg(lone.pid, signal.SIGKILL)
    lone.wait()
    out = pair.communicate(timeout=900)[0]
    assert pair.returncode == 0, out
    assert all(f.is_done() for f in folders), out
    for f in folders:
        attempts = f.state()["attempts"]
        finished = [a for a in attempts if a.get("status") == "done"]
        assert len(finished) == 1, (f.path.name, attempts)   # ran to completion exactly once
        # attempts never overlap: each starts after the one before it ended or died
        for a, b in zip(attempts, attempts[1:]):
            assert b["start"] >= a["start"]
        if f == victim:
            assert len(attempts) == 2 and "status" not in attempts[0]   # the killed attempt never ended
            assert attempts[1]["resume_from"] == "last.ckpt"
            assert claims.current(f.path).generation == 2
        else:
            assert len(attempts) == 1, (f.path.name, attempts)
    assert "4 done" in cli("status", exp_path)
    # a sweep of the finished grid touches nothing
    mtimes = [f.metrics_path.stat().st_mtime for f in folders]
    assert "0 finished, 4 already done, 0 failed" in cli("sweep", exp_path, "--no-table")
    assert [f.metrics_path.stat().st_mtime for f in folders] == mtimes
    assert (tmp_path / "results" / "shared" / "table.md").is_file()
