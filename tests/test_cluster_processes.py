"""Which process of a multi-process run writes run state, and how many processes a run keeps alive."""
import os
from pathlib import Path

import pytest
import torch
from helpers import TINY, config
from pytorch_lightning import Callback

from ibnnet.config import compose
from ibnnet.data.datamodule import DataModule
from ibnnet.runs.env import is_rank_zero
from ibnnet.runs.runner import build_task, make_trainer

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


def _children() -> set[int]:
    me, out = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()   # after "(comm)": state, ppid, ...
        except OSError:   # gone meanwhile
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


def _validate(tmp_path, sets: int, workers: int) -> tuple[list[dict], dict[int, int], set[int]]:
    """Lightning's validate over ``sets`` evaluation sets: the metrics, the most child processes of this one
    alive during each set's batches, and those left afterwards (children that were alive before not counted)."""
    before = _children()
    alive: dict[int, int] = {}

    class Count(Callback):
        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            alive[dataloader_idx] = max(alive.get(dataloader_idx, 0), len(_children() - before))

    val = ", ".join(f"{{name: s{i}, dataset: builtin_cls, split: val, domain: synthetic, num_samples: 4}}"
                    for i in range(sets))
    cfg = compose(config(tmp_path, TINY), [f"data.val=[{val}]", f"data.num_workers={workers}",
                                           "data.eval_batch_size=2"])
    dm = DataModule(cfg)
    torch.manual_seed(0)   # the same weights in every call
    task = build_task(cfg, dm.num_classes, dm.val_names)
    metrics = make_trainer(cfg, progress=False, callbacks=[Count()]).validate(task, datamodule=dm, verbose=False)
    return metrics, alive, _children() - before


def test_evaluation_sets_keep_the_workers_of_one_set_alive_at_a_time(tmp_path):
    # robustness_imagenet evaluates 78 sets: with persistent workers every set's workers stayed alive to the end
    metrics, alive, left = _validate(tmp_path, sets=4, workers=1)
    assert alive == {0: 1, 1: 1, 2: 1, 3: 1}, f"child processes alive during each set's batches: {alive}"
    assert not left, f"worker processes left after validation: {sorted(left)}"
    assert metrics == _validate(tmp_path, sets=4, workers=0)[0]   # the same numbers as without workers


def test_one_or_two_evaluation_sets_keep_their_workers_between_validations(tmp_path):
    two = ("data.val=[{name: a, dataset: builtin_cls, split: val, domain: synthetic, num_samples: 4},"
           "{name: b, dataset: builtin_cls, split: val, domain: real, num_samples: 4}]")
    dm = DataModule(compose(config(tmp_path, TINY), [two, "data.num_workers=1"]))
    assert [loader.persistent_workers for loader in dm.val_dataloader()] == [True, True]
