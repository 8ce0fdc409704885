# The test process computes with the CPU kernels deterministic runs pin (ibnnet/runs/env.py), set before torch
# loads: tests train in this process and in run subprocesses and compare them bit for bit (a run resumed here
# must continue exactly what a pinned subprocess began), and CI on an AVX-512 Xeon and on an AVX2 EPYC then
# runs the same kernels. Values set in the environment win: `ATEN_CPU_CAPABILITY=default pytest` runs the
# whole suite, subprocesses included, under ATen's scalar kernels.
import os as _os

for _k, _v in {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2,STRICT"}.items():
    _os.environ.setdefault(_k, _v)
# The two xdist workers and their run subprocesses each compute with up to 2 threads on 2 cores. OpenMP threads
# that wait for work spin by default, and spinning threads of one process steal the cores the other's are
# computing on; passive waiting changes no result (the thread counts stay) and took tests/test_training.py,
# test_demo.py and test_exact_runs.py from 176 to 142 s.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# =============================================================================
# BEGIN SLURM local-cluster fixture (owner: slurm/local-cluster.sh).
# Self-contained: keep other fixtures outside this block. If you need your own
# `pytest_configure`, add to the one below instead of defining a second one
# (the later definition would silently replace it).
# =============================================================================
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

_SLURM_SCRIPT = Path(__file__).resolve().parents[1] / "slurm" / "local-cluster.sh"
_SLURM_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
# Executables the packages provide; checked when dpkg is not around.
_SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "munged")

# States a job (or array task) never leaves on its own. REQUEUED/PREEMPTED
# are not here: with JobRequeue=1 such a job goes back to PENDING.
SLURM_FINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
    "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT",
})


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slurm: runs jobs on the real local SLURM cluster (slurm/local-cluster.sh)",
    )


def _slurm_packages_missing() -> list[str]:
    if shutil.which("dpkg-query"):
        missing = []
        for pkg in _SLURM_PACKAGES:
            r = subprocess.run(
                ["dpkg-query", "-W", "-f=${Status}", pkg],
                capture_output=True, text=True,
            )
            if "install ok installed" not in r.stdout:
                missing.append(pkg)
        return missing
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [b for b in _SLURM_BINARIES if not shutil.which(b, path=path)]


def _can_sudo() -> bool:
    if not shutil.which("sudo"):
        return False
    return subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0


def _parse_kv(text: str) -> dict[str, str]:
    """`Key=Value Key2=Value two ...` (scontrol -o / jobcomp filetxt) -> dict.

    Values may contain spaces (e.g. Command, WorkDir), so split on ` Key=`.
    """
    out: dict[str, str] = {}
    for m in re.finditer(r"(?:^|\s)([A-Za-z][\w:/]*)=(.*?)(?=\s+[A-Za-z][\w:/]*=|\s*$)", text.strip()):
        out[m.group(1)] = m.group(2)
    return out


class SlurmCluster:
    """Handle on the local cluster; every client command needs `env_vars`."""

    def __init__(self, env_vars: dict[str, str], state_dir: Path):
        self.env_vars = env_vars
        self.state_dir = state_dir
        self.conf = Path(env_vars["SLURM_CONF"])
        self.jobcomp_log = state_dir / "jobcomp.log"
        env = {
            k: v for k, v in os.environ.items()
            # When pytest itself runs inside a SLURM job, inherited job
            # variables would make srun/sbatch think they are in that job.
            if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))
        }
        env.update(env_vars)
        self.env = env

    # -- plumbing ------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(
            [str(c) for c in cmd], env=self.env, capture_output=True, text=True,
            timeout=timeout, **kw,
        )
        if check and r.returncode != 0:
            raise RuntimeError(
                f"{' '.join(map(str, cmd))} exited {r.returncode}\n"
                f"stdout: {r.stdout}\nstderr: {r.stderr}"
            )
        return r

    def log_tail(self, name: str = "slurmctld", lines: int = 30) -> str:
        f = self.state_dir / "log" / f"{name}.log"
        try:
            return "\n".join(f.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"({f}: {e})"

    # -- jobs ----------------------------------------------------------------
    def sbatch(self, script: "str | os.PathLike", *args: str, cwd: "str | os.PathLike | None" = None) -> str:
        """Submit a script file, or script text (must start with #!).

        Returns the job id as a string (for arrays: the array job id).
        `cwd` becomes the job's working directory (sbatch default).
        """
        text = str(script)
        if isinstance(script, os.PathLike) or (not text.startswith("#!") and Path(text).is_file()):
            r = self.run("sbatch", "--parsable", *args, os.fspath(script), cwd=cwd)
        else:
            r = self.run("sbatch", "--parsable", *args, input=text, cwd=cwd)
        return r.stdout.strip().split(";")[0]

    def completion_records(self, job_id: str) -> list[dict[str, str]]:
        """All jobcomp records of a job / array, oldest first.

        This is the file `sacct -c` reads; read directly because sacct -c
        (22.05) cannot parse ArrayJobId/ArrayTaskId and so shows array tasks
        only under their raw job ids. A requeued run leaves a record with
        JobState=PENDING.
        """
        job_id = str(job_id)
        try:
            lines = self.jobcomp_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        recs = []
        for line in lines:
            rec = _parse_kv(line)
            if rec.get("JobId") == job_id or rec.get("ArrayJobId") == job_id:
                if "ArrayTaskId" in rec:
                    rec["TaskKey"] = f"{rec['ArrayJobId']}_{rec['ArrayTaskId']}"
                else:
                    rec["TaskKey"] = rec["JobId"]
                recs.append(rec)
        return recs

    def records(self, job_id: str) -> dict[str, dict[str, str]]:
        """Latest jobcomp record per task ("J" or "J_T"): JobState, ExitCode, ..."""
        return {r["TaskKey"]: r for r in self.completion_records(job_id)}

    def sacct(self, job_id: "str | None" = None) -> list[dict[str, str]]:
        """Rows of `sacct -c` (job completion file), keyed by raw job id.

        `-j` only matches raw ids, so array tasks other than the last one
        are found by raw id, not by `J_T`.
        """
        fields = "JobIDRaw,JobName,State,ExitCode,Start,End"
        cmd = ["sacct", "-c", "-P", "-n", "-o", fields]
        if job_id is not None:
            cmd += ["-j", str(job_id)]
        r = self.run(*cmd)
        keys = fields.split(",")
        return [dict(zip(keys, line.split("|"))) for line in r.stdout.splitlines() if line.strip()]

    def show_job(self, job_id: str) -> list[dict[str, str]]:
        """`scontrol show job -o` (one dict per array task); [] once purged (MinJobAge)."""
        r = self.run("scontrol", "-o", "show", "job", str(job_id), check=False)
        if r.returncode != 0:
            return []
        return [_parse_kv(line) for line in r.stdout.splitlines() if line.strip()]

    def _live_states(self, job_id: str) -> dict[str, str]:
        r = self.run("squeue", "-h", "-r", "-j", str(job_id), "-o", "%i|%T", check=False)
        out = {}
        for line in r.stdout.splitlines():
            if "|" in line:
                jid, state = line.strip().split("|", 1)
                out[jid] = state
        return out

    def states(self, job_id: str) -> dict[str, str]:
        """Task ("J" or "J_T") -> state.

        Finished runs come from the job completion file (what sacct -c
        reads); tasks still pending/running/completing come from squeue,
        which wins because a requeued task has an older record there.
        """
        out = {k: r.get("JobState", "?") for k, r in self.records(job_id).items()}
        out.update(self._live_states(job_id))
        return out

    def wait(self, job_id: str, timeout: float = 60) -> str:
        """Block until every task is in a final state; return that state.

        For arrays whose tasks ended differently returns "MIXED" (use
        states()). Raises TimeoutError with diagnostics.
        """
        deadline = time.monotonic() + timeout
        st: dict[str, str] = {}
        while time.monotonic() < deadline:
            st = self.states(job_id)
            if st and all(s in SLURM_FINAL_STATES for s in st.values()):
                finals = set(st.values())
                return finals.pop() if len(finals) == 1 else "MIXED"
            time.sleep(0.5)
        shown = self.run("scontrol", "show", "job", str(job_id), check=False)
        raise TimeoutError(
            f"job {job_id} not finished after {timeout}s: {st}\n"
            f"{shown.stdout}{shown.stderr}\n--- slurmctld.log ---\n{self.log_tail()}"
        )


@pytest.fixture(scope="session")
def slurm_cluster():
    """Starts slurm/local-cluster.sh for the session and stops it at the end.

    Skips only when it cannot be started for lack of root (no root, no
    passwordless sudo) and the packages are missing; any other failure fails.
    A cluster that was already up is used and left running.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    state_dir = Path(env.get("IBNNET_SLURM_DIR", "/tmp/ibnnet-slurm"))

    def sh(cmd: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(_SLURM_SCRIPT), cmd], env=env, capture_output=True,
            text=True, timeout=timeout,
        )

    already_up = sh("status", timeout=60).returncode == 0
    if not already_up:
        if os.geteuid() != 0 and not _can_sudo():
            missing = _slurm_packages_missing()
            if missing:
                pytest.skip(
                    "local SLURM cluster needs root or passwordless sudo to "
                    f"install {' '.join(missing)}"
                )
        r = sh("start")
        if r.returncode != 0:
            pytest.fail(
                f"slurm/local-cluster.sh start failed (exit {r.returncode}):\n"
                f"{r.stdout}\n{r.stderr}",
                pytrace=False,
            )
    r = sh("env", timeout=60)
    env_vars = dict(re.findall(r"^export (\w+)=(.*)$", r.stdout, re.M))
    if r.returncode != 0 or "SLURM_CONF" not in env_vars:
        pytest.fail(f"local-cluster.sh env gave no SLURM_CONF:\n{r.stdout}\n{r.stderr}", pytrace=False)

    cluster = SlurmCluster(env_vars, state_dir)
    yield cluster

    if not already_up:
        r = sh("stop", timeout=120)
        if r.returncode != 0:
            pytest.fail(f"local-cluster.sh stop failed:\n{r.stdout}\n{r.stderr}", pytrace=False)
# =============================================================================
# END SLURM local-cluster fixture
# =============================================================================


@pytest.fixture(autouse=True)
def _restore_torch_numerics():
    """A run executed in the test process (``ibnnet train`` through ``cli.main``) sets process-wide numerics
    (threads, deterministic algorithms and their NaN fill, matmul precision), as it should in its own process;
    later tests in this process must not inherit them (float sums, and so tight tolerances, depend on the thread
    count)."""
    import torch
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.get_float32_matmul_precision(),
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"), torch.utils.deterministic.fill_uninitialized_memory)
    yield
    threads, det, warn_only, precision, cublas, fill = saved
    torch.set_num_threads(threads)
    torch.utils.deterministic.fill_uninitialized_memory = fill
    torch.use_deterministic_algorithms(det, warn_only=warn_only)
    torch.set_float32_matmul_precision(precision)
    if cublas is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """The suite runs on two xdist workers (pyproject's addopts; `-n 0` runs it in one process). Each test file
    goes to one worker whole, so module-scoped fixtures (reference runs) are computed once; every test of the
    real SLURM cluster goes to the same worker, which alone starts (and talks to) the one-node cluster.
    tryfirst: xdist turns the xdist_group marks into groups in its own hook of this name, which pluggy would
    otherwise call first (it is registered later), before the marks exist; without it (and with pytest 9.2,
    see pyproject) no test was grouped, and two workers submitted jobs to the one-node cluster at once."""
    for item in items:
        uses_cluster = "slurm_cluster" in getattr(item, "fixturenames", ()) or item.get_closest_marker("slurm")
        item.add_marker(pytest.mark.xdist_group("slurm-cluster" if uses_cluster else item.module.__name__))
