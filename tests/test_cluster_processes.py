"""Which process of a multi-process run writes run state, and how many processes a run keeps alive."""
import pytest

from ibnnet.runs.env import is_rank_zero

_RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_RANK", "SLURM_PROCID", "SLURM_LOCALID",
              "SLURM_NODEID", "SLURM_NTASKS", "SLURM_STEP_ID", "SLURM_JOB_ID")
_STEP = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0"}
_BATCH = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}   # sbatch's batch script

# (name, environment, rank 0?) for every way ibnnet's run processes are started
_CASES = [
    ("plain", {}, True),
    ("torchrun rank 0", {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, True),
    ("torchrun rank 1", {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}, False),
    # torchrun started by one srun task per node: every rank inherits that task's SLURM_PROCID
    ("torchrun in srun, node 1", {**_STEP, "SLURM_PROCID": "1", "RANK": "2", "LOCAL_RANK": "0"}, False),
    ("torchrun in srun, rank 1", {**_STEP, "SLURM_PROCID": "0", "RANK": "1", "LOCAL_RANK": "1"}, False),
    ("srun -n2 task 0", {**_STEP, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2"}, True),
    ("srun -n2 task 1", {**_STEP, "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_NTASKS": "2"}, False),
    ("srun 2 nodes, node 1 task 0", {**_STEP, "SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_NODEID": "1"}, False),
    # one srun task; Lightning's _SubprocessScriptLauncher starts ranks 1..N-1 as copies of it with LOCAL_RANK
    # and NODE_RANK set, and they inherit the task's SLURM_PROCID=0
    ("srun task + Lightning, rank 0", {**_STEP, "SLURM_PROCID": "0", "LOCAL_RANK": "0", "NODE_RANK": "0"}, True),
    ("srun task + Lightning, rank 1", {**_STEP, "SLURM_PROCID": "0", "LOCAL_RANK": "1", "NODE_RANK": "0"}, False),
    ("srun task + Lightning, node 1", {**_STEP, "SLURM_PROCID": "0", "LOCAL_RANK": "0", "NODE_RANK": "1"}, False),
    # the batch script of an allocation (`ibnnet sweep --workers 2` inside sbatch) and Lightning's children there
    ("sbatch script", _BATCH, True),
    ("sbatch script + Lightning, rank 1", {**_BATCH, "LOCAL_RANK": "1", "NODE_RANK": "0"}, False),
    # the extra processes of the launcher above on a plain machine
    ("Lightning, rank 1", {"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"}, False),
]


@pytest.mark.parametrize("env,rank0", [c[1:] for c in _CASES], ids=[c[0] for c in _CASES])
def test_exactly_the_global_rank_zero_process_is_rank_zero(monkeypatch, env, rank0):
    for var in _RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert is_rank_zero() is rank0
