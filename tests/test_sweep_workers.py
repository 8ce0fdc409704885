"""Claims: a cell is trained by exactly one process at a time. Many workers sharing one sweep, killed and
signalled, are tested in tests/test_chaos.py."""
import json
import os
import socket
import subprocess
import sys
import time

from helpers import ENV, REPO, TINY, config

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
