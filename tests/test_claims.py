"""Claims under a real cluster's conditions: workers sharing one SLURM job id, NFS errors in the heartbeat, clocks
that disagree, frozen holders that come back, generation numbers, and the order in which a run finishes."""
import errno
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from helpers import REPO, TINY, config

from ibnnet.runs import claims
from ibnnet.runs.folder import DONE, RunFolder
from ibnnet.runs.status import live_status

HOLD = textwrap.dedent("""
    import sys, time
    from ibnnet.runs import claims
    c = claims.try_claim(sys.argv[1], heartbeat_s=0.2, timeout_s=5)
    assert isinstance(c, claims.Claim), c
    c.start_heartbeat()
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def _holder_process(run, seconds, env):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run), str(seconds)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_workers_sharing_one_slurm_job_never_take_each_others_live_runs(tmp_path, monkeypatch):
    # Every process of one allocation has the same SLURM_JOB_ID (sweep --workers N on a GPU node).
    env = dict(os.environ, SLURM_JOB_ID="4242", SLURM_RESTART_COUNT="0")
    run = tmp_path / "run"
    first = _holder_process(run, 30, env)
    try:
        monkeypatch.setenv("SLURM_JOB_ID", "4242")
        monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
        second = claims.try_claim(run, heartbeat_s=0.2, timeout_s=5)
        assert isinstance(second, claims.ClaimRecord) and second.generation == 1, second
        assert second.info["pid"] == first.pid
        assert claims.holder(run) is not None
        folder = RunFolder(run)
        folder.path.joinpath("state.json").write_text(json.dumps({"status": "running", "attempts": [
            {"host": socket.gethostname(), "pid": first.pid, "slurm_job": "4242"}]}))
        assert live_status(folder)[0] == "running"
        assert first.poll() is None   # the holder was not made to exit
    finally:
        first.kill()
        first.wait()


def test_a_requeued_job_takes_its_previous_incarnations_claim_at_once(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "claims").mkdir(parents=True)
    # incarnation 0 of job 4242 held it on another node and died with the node (no release)
    (run / "claims" / "claim-000001.json").write_text(json.dumps(
        {"host": "node-7", "pid": 1234, "slurm_job": "4242", "slurm_restart": 0, "beat": 9}))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    start = time.monotonic()
    taken = claims.try_claim(run, heartbeat_s=1, timeout_s=600, wait=True)
    assert isinstance(taken, claims.Claim) and taken.generation == 2
    assert time.monotonic() - start < 5
    taken.release()
    # the same job's other incarnation-1 processes are not dead to it
    (run / "claims" / "claim-000003.json").write_text(json.dumps(
        {"host": "node-7", "pid": 1234, "slurm_job": "4242", "slurm_restart": 1}))
    assert not claims.provably_dead(claims.current(run))


def test_the_heartbeat_survives_nfs_errors_and_stops_the_holder_when_it_cannot_renew(tmp_path, monkeypatch):
    run = tmp_path / "run"
    c = claims.try_claim(run, heartbeat_s=0.05, timeout_s=4)
    real = os.pwrite
    failures = {"n": 0}

    def flaky(fd, data, offset):
        if failures["n"] < 3:
            failures["n"] += 1
            raise OSError(errno.ESTALE, "Stale file handle")
        return real(fd, data, offset)
    monkeypatch.setattr(os, "pwrite", flaky)
    before = json.loads(c.path.read_bytes())["beat"]
    c.start_heartbeat()
    deadline = time.time() + 10
    while json.loads(c.path.read_bytes())["beat"] <= before + 3:
        assert time.time() < deadline, "the heartbeat stopped after an ESTALE"
        time.sleep(0.05)
    assert failures["n"] == 3 and c._thread.is_alive()
    c.release()
    # renewals that keep failing: the holder exits (code 3) once half the timeout has passed without one,
    # before any reader, watching for the whole timeout, may take the run over
    script = textwrap.dedent("""
        import errno, os, sys, time
        from ibnnet.runs import claims
        c = claims.try_claim(sys.argv[1], heartbeat_s=0.1, timeout_s=2)
        def broken(*a):
            raise OSError(errno.EIO, "Input/output error")
        os.pwrite = broken
        c.start_heartbeat()
        t = time.monotonic()
        while time.monotonic() - t < 10:
            time.sleep(0.05)
        print("still running")
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run2")], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == claims.EXIT_CLAIMED, proc.stdout + proc.stderr
    assert "still running" not in proc.stdout
    # it stopped after half the timeout without a renewal, by its own clock: before any reader could take over
    idle = float(re.search(r"could not renew the claim for ([\d.]+) s", proc.stderr).group(1))
    assert idle < 2, proc.stderr


@pytest.mark.parametrize("content", [b"[]", b"\xff\xfe\x00garbage", b"", b'{"host": "x", "pid": '])
def test_a_damaged_claim_file_is_judged_by_its_content_not_crashed_on(tmp_path, content):
    run = tmp_path / "run"
    (run / "claims").mkdir(parents=True)
    (run / "claims" / "claim-000001.json").write_bytes(content)
    c = claims.current(run)
    assert c.generation == 1 and c.info == {}
    assert claims.holder(run) is not None   # nothing proves its holder dead
    (run / "state.json").write_text(json.dumps({"status": "running", "attempts": []}))
    assert live_status(RunFolder(run))[0] == "running"
    observer = claims.Observer()
    assert claims.try_claim(run, 0.1, 0.3, observer=observer).generation == 1   # first look: not stale yet
    time.sleep(0.35)
    taken = claims.try_claim(run, 0.1, 0.3, observer=observer)   # unchanged for the timeout: stale
    assert isinstance(taken, claims.Claim) and taken.generation == 2
    taken.release()


def test_liveness_never_compares_the_file_servers_clock_with_ours(tmp_path):
    run = tmp_path / "run"
    live = _holder_process(run, 30, dict(os.environ))
    try:
        # the file server's clock is an hour behind ours: its mtimes look an hour old
        path = run / "claims" / "claim-000001.json"
        old = time.time() - 3600
        os.utime(path, (old, old))
        got = claims.try_claim(run, heartbeat_s=0.2, timeout_s=5, wait=True)
        assert isinstance(got, claims.ClaimRecord) and got.info["pid"] == live.pid
    finally:
        live.kill()
        live.wait()
    # a dead holder on another host whose file time lies in the future is still taken over, after the timeout
    run2 = tmp_path / "run2"
    (run2 / "claims").mkdir(parents=True)
    path = run2 / "claims" / "claim-000001.json"
    path.write_text(json.dumps({"host": "node-9", "pid": 1, "beat": 4}))
    future = time.time() + 3600
    os.utime(path, (future, future))
    start = time.monotonic()
    taken = claims.try_claim(run2, heartbeat_s=0.1, timeout_s=0.5, wait=True)
    assert isinstance(taken, claims.Claim) and taken.generation == 2
    assert 0.5 <= time.monotonic() - start < 5
    taken.release()


def test_a_holder_that_was_taken_over_writes_no_state_checkpoint_or_result(tmp_path):
    from ibnnet.runs.callbacks import AtomicCheckpointIO
    run = tmp_path / "run"
    folder = RunFolder(run)
    old = claims.try_claim(run, heartbeat_s=1, timeout_s=4)
    folder.update_state(status="running")
    io = AtomicCheckpointIO()
    ckpt = folder.checkpoint_dir / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(2)}, ckpt)
    # it froze for longer than the timeout; another worker took generation 2
    observer = claims.Observer()
    observer.seen[(str(run), 1)] = (claims.current(run).raw, time.monotonic() - 10)
    new = claims.try_claim(run, heartbeat_s=1, timeout_s=4, observer=observer)
    assert isinstance(new, claims.Claim) and new.generation == 2
    claims._HELD[str(old.run_path)] = old   # the old holder's process, come back to life
    with pytest.raises(claims.ClaimLost, match="taken over"):
        folder.update_state(status="failed")
    with pytest.raises(claims.ClaimLost):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(2)}, ckpt)
    assert folder.state()["status"] == "running"
    assert torch.load(ckpt)["global_step"] == 1
    assert not list(folder.checkpoint_dir.glob(".*.tmp"))
    claims._HELD.pop(str(old.run_path))
    new.release()


def test_a_holder_whose_lease_ran_out_writes_nothing(tmp_path):
    run = tmp_path / "run"
    c = claims.try_claim(run, heartbeat_s=0.05, timeout_s=0.2)   # no heartbeat thread: nobody renews it
    time.sleep(0.15)
    with pytest.raises(claims.ClaimLost, match="not renewed"):
        RunFolder(run).update_state(status="running")
    c.release()


def test_a_generation_number_is_never_taken_twice(tmp_path):
    run = tmp_path / "run"
    c = claims.try_claim(run, heartbeat_s=1, timeout_s=4)
    c.release()
    # a slow claimer that saw no claim at all tries generation 1 now
    with pytest.raises(FileExistsError):
        os.open(run / "claims" / "claim-000001.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    again = claims.try_claim(run, heartbeat_s=1, timeout_s=4)
    assert again.generation == 2
    again.release()


BODY = TINY + "launcher: {heartbeat_s: 1, claim_timeout_s: 30}\n"


def test_a_run_is_done_only_once_its_result_is_written(tmp_path, monkeypatch):
    from ibnnet.config import compose
    from ibnnet.runs import runner
    cfg = compose(config(tmp_path, BODY))
    folder = runner.prepare(cfg)
    claim = claims.try_claim(folder.path, 1, 30)
    folder.start_attempt({"host": socket.gethostname(), "pid": os.getpid()})
    folder.checkpoint_dir.mkdir(parents=True)
    for name in ("preempt.ckpt", "last.prev.ckpt", "last.ckpt"):
        (folder.checkpoint_dir / name).write_bytes(b"x")

    def full_disk(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(runner, "atomic_write_json", full_disk)
    result = {"metrics": {"synthetic": {"top1_err": 50.0}}, "epoch": 2, "global_step": 4, "world_size": 1}
    with pytest.raises(OSError):
        runner._finish(cfg, folder, result)
    assert folder.state()["status"] != DONE and not folder.metrics_path.exists()
    assert (folder.checkpoint_dir / "preempt.ckpt").exists() and (folder.checkpoint_dir / "last.prev.ckpt").exists()
    claim.release()
    assert live_status(folder)[0] != DONE
    # a run folder some older version left "done" without metrics.json is not shown as done either
    folder.update_state(status=DONE)
    status, info = live_status(folder)
    assert status != DONE and "metrics.json" in info.get("note", "")
