"""Tests against the real one-node SLURM cluster (slurm/local-cluster.sh).

They pin down the SLURM behaviour our trainer relies on for preemption-safe
requeue: who receives which signal, KillWait, requeue + SLURM_RESTART_COUNT.
"""
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

# Records every USR1/TERM it receives: "<tag> got <SIG> <restart count>";
# exits on TERM like a trainer that has saved its checkpoint.
RECORDER = textwrap.dedent("""\
    import os, signal, sys, time
    tag, out, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
    def note(msg):
        with open(out, "a") as f:
            f.write(msg + "\\n")
    def handler(sig, frame):
        note(f"{tag} got {signal.Signals(sig).name[3:]} {os.environ.get('SLURM_RESTART_COUNT', '0')}")
        if sig == signal.SIGTERM:
            sys.exit(0)
    signal.signal(signal.SIGUSR1, handler)
    signal.signal(signal.SIGTERM, handler)
    note(f"{tag} ready")
    end = time.time() + secs
    while time.time() < end:
        time.sleep(0.1)
""")


def wait_for(pred, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_array_job(slurm_cluster, tmp_path):
    # Each task sleeps so that the two 1-CPU tasks have to overlap when
    # scheduling is per CPU (CR_CPU) rather than per node.
    script = textwrap.dedent("""\
        #!/bin/bash
        echo "$SLURM_ARRAY_TASK_ID" > "task_${SLURM_ARRAY_TASK_ID}.txt"
        echo "$(date +%s.%N) $SLURM_ARRAY_TASK_ID start" >> times.txt
        sleep 2
        echo "$(date +%s.%N) $SLURM_ARRAY_TASK_ID end" >> times.txt
    """)
    jid = slurm_cluster.sbatch(script, "--array=0-2", "-o", "/dev/null", cwd=tmp_path)
    assert slurm_cluster.wait(jid, timeout=60) == "COMPLETED"
    assert slurm_cluster.states(jid) == {f"{jid}_{i}": "COMPLETED" for i in range(3)}
    for i in range(3):
        assert (tmp_path / f"task_{i}.txt").read_text().strip() == str(i)

    # Two tasks ran at the same time on the 2-CPU node.
    events = sorted((float(t), int(task), kind) for t, task, kind in
                    (line.split() for line in lines(tmp_path / "times.txt")))
    running = peak = 0
    for _, _, kind in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak >= 2, events

    # sacct -c agrees, looked up by the tasks' raw job ids.
    recs = slurm_cluster.records(jid)
    raw_ids = {r["JobId"] for r in recs.values()}
    rows = [row for row in slurm_cluster.sacct() if row["JobIDRaw"] in raw_ids]
    assert len(rows) == 3
    assert {(row["State"], row["ExitCode"]) for row in rows} == {("COMPLETED", "0:0")}


def test_srun_inside_batch(slurm_cluster, tmp_path):
    script = textwrap.dedent("""\
        #!/bin/bash
        srun bash -c 'echo "$SLURM_PROCID $SLURM_NTASKS"'
    """)
    jid = slurm_cluster.sbatch(script, "--ntasks=2", "-o", "out.txt", cwd=tmp_path)
    assert slurm_cluster.wait(jid, timeout=60) == "COMPLETED"
    assert sorted(lines(tmp_path / "out.txt")) == ["0 2", "1 2"]


def test_srun_direct(slurm_cluster, tmp_path):
    r = slurm_cluster.run("srun", "-n2", "bash", "-c", 'echo "$SLURM_PROCID $SLURM_NTASKS"',
                          cwd=tmp_path, timeout=60)
    assert sorted(r.stdout.split("\n")[:-1]) == ["0 2", "1 2"]


def test_failing_job_reports_exit_code(slurm_cluster, tmp_path):
    jid = slurm_cluster.sbatch("#!/bin/bash\nexit 3\n", "-o", "/dev/null", cwd=tmp_path)
    assert slurm_cluster.wait(jid, timeout=60) == "FAILED"
    assert slurm_cluster.records(jid)[jid]["ExitCode"] == "3:0"
    assert [(r["State"], r["ExitCode"]) for r in slurm_cluster.sacct(jid)] == [("FAILED", "3:0")]
    assert slurm_cluster.show_job(jid)[0]["ExitCode"] == "3:0"


def test_scontrol_requeue_restarts_job(slurm_cluster, tmp_path):
    # First run: trap TERM, spend 3 s "checkpointing" (must fit in KillWait),
    # record it. Second run: record SLURM_RESTART_COUNT and succeed.
    script = textwrap.dedent("""\
        #!/bin/bash
        echo "run ${SLURM_RESTART_COUNT:-0}" >> log.txt
        [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ] && exit 0
        trap 'echo term >> log.txt; sleep 3; echo checkpointed >> log.txt; exit 0' TERM
        sleep 300 &
        wait
    """)
    log = tmp_path / "log.txt"
    jid = slurm_cluster.sbatch(script, "-o", "/dev/null", cwd=tmp_path)
    wait_for(lambda: lines(log), 30, "first run")
    slurm_cluster.run("scontrol", "requeue", jid)
    assert slurm_cluster.wait(jid, timeout=90) == "COMPLETED"
    assert lines(log) == ["run 0", "term", "checkpointed", "run 1"]
    assert slurm_cluster.show_job(jid)[0]["Restarts"] == "1"
    # The requeued run left a PENDING record; the final one is COMPLETED.
    assert [r["JobState"] for r in slurm_cluster.completion_records(jid)] == ["PENDING", "COMPLETED"]


def _signal_job(tmp_path: Path, name: str, extra: str = "") -> tuple[str, Path]:
    """Batch script with three recorders: its own trap ("batch"), a direct
    child process ("child") and an srun step ("step")."""
    (tmp_path / "recorder.py").write_text(RECORDER)
    out = tmp_path / f"{name}.log"
    py = sys.executable
    script = textwrap.dedent(f"""\
        #!/bin/bash
        OUT={out}
        trap 'echo "batch got USR1 ${{SLURM_RESTART_COUNT:-0}}" >> $OUT; {extra}' USR1
        # On TERM the batch shell waits for its child and step before it exits, as a job script that checkpoints
        # would: exiting at once let slurmd SIGKILL the child before it had written what it got.
        trap 'echo "batch got TERM ${{SLURM_RESTART_COUNT:-0}}" >> $OUT; wait; exit 0' TERM
        if [ "${{SLURM_RESTART_COUNT:-0}}" -ge 1 ]; then
            srun -n1 bash -c 'echo "step restart $SLURM_RESTART_COUNT" >> '$OUT
            exit 0
        fi
        {py} {tmp_path}/recorder.py child $OUT 150 &
        srun -n1 {py} {tmp_path}/recorder.py step $OUT 150 &
        # bash runs a trap only between commands: wait is interruptible,
        # a foreground command is not.
        while true; do wait; sleep 0.1; done
    """)
    return script, out


def _received(out: Path, sig: str) -> set[str]:
    return {line.split()[0] for line in lines(out) if f" got {sig}" in line}


@pytest.mark.parametrize("mode,expected", [
    ([], {"step"}),                           # default: job steps only
    (["--batch"], {"batch"}),                 # only the batch shell itself
    (["--full"], {"batch", "child", "step"}),  # everything in the job
], ids=["default", "batch", "full"])
def test_scancel_signal_targets(slurm_cluster, tmp_path, mode, expected):
    script, out = _signal_job(tmp_path, "sig")
    jid = slurm_cluster.sbatch(script, "-n1", "-o", "/dev/null", cwd=tmp_path)
    try:
        wait_for(lambda: sum(" ready" in x for x in lines(out)) == 2, 30, "recorders ready")
        slurm_cluster.run("scancel", "--signal=USR1", *mode, jid)
        wait_for(lambda: _received(out, "USR1") >= expected, 10, f"USR1 at {expected}")
        time.sleep(1.5)  # anything unexpected would arrive by now
        assert _received(out, "USR1") == expected, lines(out)
    finally:
        slurm_cluster.run("scancel", jid, check=False)
    assert slurm_cluster.wait(jid, timeout=30) == "CANCELLED"


def test_time_limit_signal_and_requeue(slurm_cluster, tmp_path):
    """--signal=[B:]USR1@50 with --time=1; the B: job requeues itself on USR1."""
    # The job requeues itself once its child and its step are both up: the warning can come seconds after the
    # start (the limit check runs every 30 s), before a loaded machine has started the srun step.
    requeue_script, requeue_out = _signal_job(
        tmp_path, "b", extra='until [ $(grep -c " ready" $OUT) -ge 2 ]; do sleep 0.2; done; '
                             'scontrol requeue $SLURM_JOB_ID >> $OUT 2>&1')
    steps_script, steps_out = _signal_job(tmp_path, "steps")
    t0 = time.monotonic()
    jb = slurm_cluster.sbatch(requeue_script, "-n1", "--time=1", "--signal=B:USR1@50",
                              "-o", "/dev/null", cwd=tmp_path)
    js = slurm_cluster.sbatch(steps_script, "-n1", "--time=1", "--signal=USR1@50",
                              "-o", "/dev/null", cwd=tmp_path)
    try:
        # Slurm checks time limits about every 30 s, so the warning comes
        # anywhere from ~0 to ~30 s after "limit - 50 s", but before the limit.
        wait_for(lambda: _received(steps_out, "USR1"), 75, "USR1 for --signal=USR1@50")
        wait_for(lambda: _received(requeue_out, "USR1"), 75, "USR1 for --signal=B:USR1@50")
        assert time.monotonic() - t0 < 60
        time.sleep(1)
        assert _received(steps_out, "USR1") == {"step"}
        assert _received(requeue_out, "USR1") == {"batch"}
    finally:
        slurm_cluster.run("scancel", js, check=False)

    assert slurm_cluster.wait(jb, timeout=90) == "COMPLETED"
    log = lines(requeue_out)
    # Requeue kills the first run with SIGTERM to everything (batch, child,
    # step), then the job runs again with SLURM_RESTART_COUNT=1, steps too.
    assert {"batch", "child", "step"} <= {x.split()[0] for x in log if " got TERM 0" in x}, log
    assert log[-1] == "step restart 1", log
    assert slurm_cluster.show_job(jb)[0]["Restarts"] == "1"
    assert slurm_cluster.wait(js, timeout=30) == "CANCELLED"
