"""GPU-path checks that run on CPU: each takes the device type, compute capability or GPU list as an argument."""
import os

import pytest

from helpers import SEG, TINY, config
from ibnnet.config import ConfigError, compose


def _cfg(tmp_path, body=TINY, *overrides):
    return compose(config(tmp_path, body), list(overrides))


# --- 1: deterministic segmentation on CUDA -------------------------------------------------------------------

def test_deterministic_segmentation_is_refused_on_cuda_only(tmp_path):
    from ibnnet.runs.runner import check_device_support
    seg = _cfg(tmp_path, SEG, "trainer.deterministic=true")
    with pytest.raises(ConfigError) as e:
        check_device_support(seg, "cuda", (9, 0))
    msg = str(e.value)
    assert "\n" not in msg and "trainer.deterministic=true" in msg and "segmentation" in msg
    assert "trainer.deterministic=false" in msg   # what to set instead
    check_device_support(seg, "cpu")   # CPU has deterministic kernels for both
    check_device_support(_cfg(tmp_path, SEG, "trainer.deterministic=false"), "cuda", (9, 0))
    check_device_support(_cfg(tmp_path, TINY, "trainer.deterministic=true"), "cuda", (9, 0))   # classification


def test_train_refuses_before_building_anything(tmp_path, monkeypatch):
    """train_and_evaluate checks the device it will train on first (here made to look like CUDA)."""
    import ibnnet.data.datamodule as datamodule
    import ibnnet.models.compiling as compiling
    from ibnnet.runs import runner
    from ibnnet.runs.folder import RunFolder
    monkeypatch.setattr(compiling, "training_device_type", lambda accelerator: "cuda")
    monkeypatch.setattr(runner, "cuda_capability", lambda: (7, 0))

    def no_data(*a, **k):
        raise AssertionError("the data module was built before the check")
    monkeypatch.setattr(datamodule, "DataModule", no_data)
    with pytest.raises(ConfigError, match="trainer.deterministic=true"):
        runner.train_and_evaluate(_cfg(tmp_path, SEG, "trainer.deterministic=true"), RunFolder(tmp_path / "r"))
    with pytest.raises(ConfigError, match="trainer.precision=bf16-mixed"):
        runner.train_and_evaluate(_cfg(tmp_path, TINY, "trainer.precision=bf16-mixed"), RunFolder(tmp_path / "r"))


def test_slurm_submission_refuses_deterministic_segmentation_on_gpus(tmp_path):
    from ibnnet.launchers.slurm import check_slurm_config
    cfg = _cfg(tmp_path, SEG, "trainer.deterministic=true", "launcher.name=slurm", "launcher.slurm.gpus_per_node=1",
               "trainer.accelerator=gpu")
    with pytest.raises(ConfigError, match=r"^cell x: trainer\.deterministic=true"):
        check_slurm_config(cfg, "cell x")
    check_slurm_config(_cfg(tmp_path, SEG, "trainer.deterministic=true", "launcher.name=slurm"), "cell x")   # CPU


# --- 3: bf16 -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["bf16-mixed"])
def test_bf16_needs_compute_capability_8(tmp_path, precision):
    from ibnnet.runs.runner import check_device_support
    cfg = _cfg(tmp_path, TINY, f"trainer.precision={precision}")
    for v100_or_t4 in ((7, 0), (7, 5)):
        with pytest.raises(ConfigError) as e:
            check_device_support(cfg, "cuda", v100_or_t4)
        msg = str(e.value)
        assert "\n" not in msg and f"trainer.precision={precision}" in msg and "trainer.precision=16-mixed" in msg
        assert f"{v100_or_t4[0]}.{v100_or_t4[1]}" in msg
    for ampere_or_later in ((8, 0), (8, 6), (9, 0)):
        check_device_support(cfg, "cuda", ampere_or_later)
    check_device_support(cfg, "cuda", None)   # capability unknown (ROCm): not refused
    check_device_support(cfg, "cpu")          # CPU autocast has bf16
    check_device_support(_cfg(tmp_path, TINY, "trainer.precision=16-mixed"), "cuda", (7, 0))


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_half_true_precisions_are_refused_with_the_reason(tmp_path, precision):
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, TINY, f"trainer.precision={precision}")
    msg = str(e.value)
    assert "\n" not in msg and f"trainer.precision='{precision}'" in msg
    assert "master weights" in msg and "running statistics" in msg and "bf16-mixed" in msg


# --- 4: local workers share out the GPUs ---------------------------------------------------------------------

def test_each_worker_gets_the_gpus_its_runs_ask_for(tmp_path):
    from ibnnet.launchers.local import worker_environments
    eight = _cfg(tmp_path, TINY, "trainer.accelerator=gpu", "trainer.devices=8")
    envs = worker_environments(1, [eight], visible=[str(i) for i in range(8)])
    assert envs[0]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7" and envs[0]["IBNNET_WORKER"] == "0"
    two = _cfg(tmp_path, TINY, "trainer.accelerator=auto", "trainer.devices=2")
    envs = worker_environments(3, [two, two], visible=["3", "4", "5", "6", "7", "9"])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["3,4", "5,6", "7,9"]
    # emulation: devices=8 on physical_devices=2 runs 2 processes, 2 GPUs
    emulated = _cfg(tmp_path, TINY, "trainer.accelerator=gpu", "trainer.devices=8", "trainer.physical_devices=2")
    envs = worker_environments(2, [emulated], visible=list("0123"))
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0,1", "2,3"]
    # CPU cells take no GPU: no worker is pinned
    cpu = _cfg(tmp_path, TINY, "trainer.devices=2")
    envs = worker_environments(4, [cpu], visible=["0"])
    assert [e["IBNNET_WORKER"] for e in envs] == ["0", "1", "2", "3"]
    assert all(e.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES") for e in envs)


def test_more_workers_than_the_gpus_allow_are_refused_with_how_many_fit(tmp_path):
    from ibnnet.launchers.local import worker_environments
    eight = _cfg(tmp_path, TINY, "trainer.accelerator=gpu", "trainer.devices=8")
    two = _cfg(tmp_path, TINY, "trainer.accelerator=gpu", "trainer.devices=2")
    with pytest.raises(ConfigError) as e:
        worker_environments(2, [two, eight], visible=[str(i) for i in range(8)])   # the largest cell decides
    msg = str(e.value)
    assert "\n" not in msg and "--workers 2" in msg and "trainer.devices=8" in msg and "at most 1 worker(s) fit" in msg
    with pytest.raises(ConfigError, match="at most 2 worker"):
        worker_environments(3, [two], visible=list("01234"))
    auto = _cfg(tmp_path, TINY, "trainer.accelerator=gpu", "trainer.devices=auto")
    with pytest.raises(ConfigError, match=r"trainer\.devices=auto .*at most 1 worker"):
        worker_environments(2, [auto], visible=list("0123"))


# --- 5: srun gets the cores of its task ----------------------------------------------------------------------

def test_srun_is_given_the_cpus_per_task(tmp_path):
    from ibnnet.launchers.slurm import render_script
    cfg = _cfg(tmp_path, TINY, "launcher.name=slurm", "launcher.slurm.cpus_per_task=6")
    script = render_script(cfg, "demo", tmp_path / "runs.txt", tmp_path, 2)
    assert "#SBATCH --cpus-per-task=6" in script
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert '--cpus-per-task="${SLURM_CPUS_PER_TASK:-6}"' in srun


# --- 6: no host-device sync every step -----------------------------------------------------------------------

class _FakeTrainer:
    def __init__(self, world_size):
        import torch
        from pytorch_lightning.trainer.states import TrainerFn
        self.world_size = world_size
        self.global_step = 0
        self.accumulate_grad_batches = 1
        self.state = type("State", (), {"fn": TrainerFn.FITTING})()
        self.sanity_checking = self.validating = False
        self.strategy = type("S", (), {"root_device": torch.device("cpu")})()
        self.saved = []

    def save_checkpoint(self, path):
        self.saved.append(path)


def _batches_until_stop(callback, trainer, n, flag_at=None, reason=None):
    from ibnnet.runs.preemption import Preempted
    for i in range(n):
        if i == flag_at:
            callback.flag.reason = reason
        try:
            callback.on_train_batch_start(trainer, None, None, i)
        except Preempted as e:
            return i, e.reason
    return None, None


def test_preemption_flag_is_all_reduced_every_n_batches_under_ddp_and_never_alone(tmp_path, monkeypatch):
    import torch

    from ibnnet.runs import preemption
    from ibnnet.runs.preemption import CHECK_EVERY_N_BATCHES as K
    from ibnnet.runs.preemption import TIME_LIMIT, PreemptionCheckpoint, SignalFlag
    assert 1 < K <= 20
    reduces, tensors = [], []
    other_rank = {"code": 0}   # what the other rank contributes to the MAX

    def all_reduce(t, op=None):
        reduces.append(int(t.item()))
        t.clamp_(min=other_rank["code"])
    real_tensor = torch.tensor
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: tensors.append(a) or real_tensor(*a, **k))

    # one process: the flag is read every batch, no tensor, no collective
    cb, trainer = PreemptionCheckpoint(SignalFlag(), tmp_path), _FakeTrainer(1)
    assert _batches_until_stop(cb, trainer, 3 * K) == (None, None)
    assert _batches_until_stop(cb, trainer, 5, flag_at=3, reason=TIME_LIMIT) == (3, TIME_LIMIT)
    assert reduces == [] and tensors == [] and len(trainer.saved) == 1

    # two processes: one all-reduce per K batches (at the same batches on every rank)
    cb, trainer = PreemptionCheckpoint(SignalFlag(), tmp_path), _FakeTrainer(2)
    cb.on_train_start(trainer, None)
    assert _batches_until_stop(cb, trainer, 3 * K) == (None, None)
    assert reduces == [0, 0, 0] and len(tensors) == 3 and trainer.saved == []
    # this rank's flag, set between two checks: acted on at the next check, on every rank alike
    assert _batches_until_stop(cb, trainer, 2 * K, flag_at=1, reason=TIME_LIMIT) == (K, TIME_LIMIT)
    assert reduces[3:] == [0, preemption._CODES[TIME_LIMIT]]
    # only the other rank got the signal: this one stops at the same batch
    cb, trainer = PreemptionCheckpoint(SignalFlag(), tmp_path), _FakeTrainer(2)
    cb.on_train_start(trainer, None)
    other_rank["code"] = preemption._CODES[TIME_LIMIT]
    assert _batches_until_stop(cb, trainer, 2 * K) == (0, TIME_LIMIT)
    assert preemption.PREEMPT_CHECKPOINT in trainer.saved[0]


def _logged(task, step):
    """Every self.log call of one training step: name -> its keyword arguments."""
    import torch
    calls = {}
    task.log = lambda name, value, **kw: calls.__setitem__(name, kw)
    opt = torch.optim.SGD(task.parameters(), lr=0.5)
    task._trainer = type("T", (), {"optimizers": [opt]})()
    step()
    return calls


@pytest.mark.parametrize("body,overrides", [(TINY, []), (SEG, ["segmentation.aux_weight=0.4"])])
def test_step_losses_are_logged_without_sync_dist(tmp_path, body, overrides):
    import torch

    from ibnnet.config import to_plain
    from ibnnet.tasks import TASKS
    cfg = _cfg(tmp_path, body, *overrides)
    task = TASKS[cfg.task](to_plain(cfg), 3, ["synthetic"])
    if cfg.task == "classification":
        batch = (torch.rand(2, 3, 32, 32), torch.tensor([0, 2]))
    else:
        batch = (torch.rand(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32)))
    calls = _logged(task, lambda: task.training_step(batch, 0))
    names = ["train/loss"] + (["train/loss_main", "train/loss_aux"] if cfg.task == "segmentation" else [])
    for name in names:
        step, epoch = calls[f"{name}_step"], calls[f"{name}_epoch"]
        assert step["on_step"] and not step["on_epoch"] and not step.get("sync_dist", False)
        assert epoch["on_epoch"] and not epoch["on_step"] and epoch["sync_dist"]   # once per epoch
    assert calls["train/loss_step"]["prog_bar"]
    assert all(not kw.get("sync_dist") for kw in calls.values() if kw.get("on_step", True))


def test_progress_bar_reads_the_loss_only_when_the_loggers_write(tmp_path):
    from pytorch_lightning.callbacks import TQDMProgressBar

    from ibnnet.runs.callbacks import build_callbacks
    from ibnnet.runs.folder import RunFolder
    bars = [c for c in build_callbacks(_cfg(tmp_path, TINY, "trainer.enable_progress_bar=true",
                                            "trainer.log_every_n_steps=25"), RunFolder(tmp_path / "r"))
            if isinstance(c, TQDMProgressBar)]
    assert [b.refresh_rate for b in bars] == [25]
    assert not any(isinstance(c, TQDMProgressBar) for c in build_callbacks(
        _cfg(tmp_path, TINY, "trainer.enable_progress_bar=false"), RunFolder(tmp_path / "r")))


# --- 8: trainer.compile reaches the training forward with the auxiliary head ---------------------------------

def test_compiled_network_runs_the_training_forward_with_the_aux_head(tmp_path, monkeypatch):
    import torch

    import ibnnet.models.compiling as compiling
    from ibnnet.config import to_plain
    from ibnnet.tasks import TASKS
    calls = []

    def counting_backend(gm, example_inputs):   # dynamo's graphs run eagerly, each call counted
        def run(*args):
            calls.append(len(gm.graph.nodes))
            return gm.forward(*args)
        return run
    # compile_model's own path (nn.Module.compile in place), with a backend that compiles in seconds
    monkeypatch.setattr(compiling, "compile_network", lambda net, device_type: net.compile(backend=counting_backend))
    torch._dynamo.reset()
    cfg = _cfg(tmp_path, SEG, "segmentation.aux_weight=0.4", "model.name=resnet18_bn", "trainer.compile=true")
    task = TASKS["segmentation"](to_plain(cfg), 3, ["synthetic"])
    task.compile_model()
    task.train()
    x, y = torch.rand(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    loss, parts = task.training_loss(x, y)
    assert calls, "the training forward with the auxiliary head ran eagerly, not the compiled module"
    assert set(parts) == {"loss_main", "loss_aux"} and torch.isfinite(loss)
    loss.backward()
    n = len(calls)
    task.eval()
    with torch.no_grad():
        assert task(x).shape == (2, 3, 32, 32)   # evaluation (no aux) goes through the compiled forward too
    assert len(calls) > n
    torch._dynamo.reset()


# --- 9: predictions encoded off the main thread; DDP fails fast ----------------------------------------------

def test_png_writer_writes_the_bytes_of_serial_encoding_with_a_bounded_queue(tmp_path):
    import threading

    import numpy as np

    from ibnnet.commands.predict import PngWriter, encode_label_png, train_to_label_id_lut
    rng = np.random.default_rng(0)
    lut = train_to_label_id_lut()
    maps = [rng.integers(0, 19, size=(h, w), dtype=np.uint8) for h, w in [(31, 47), (64, 64), (5, 200)] * 4]
    maps[1][:10] = 3   # some runs that compress
    writer = PngWriter(workers=3, max_pending=2)
    for i, m in enumerate(maps):
        writer.submit(tmp_path / "a" / f"{i}.png", lambda ids=m: lut[ids])
    writer.close()
    for i, m in enumerate(maps):
        assert (tmp_path / "a" / f"{i}.png").read_bytes() == encode_label_png(lut[m])

    # bounded: with both slots taken, the next submit waits for one to finish
    gate, returned = threading.Event(), threading.Event()
    writer = PngWriter(workers=1, max_pending=2)

    def blocked():
        gate.wait(10)
        return maps[0]
    writer.submit(tmp_path / "b0.png", blocked)
    writer.submit(tmp_path / "b1.png", maps[1])
    third = threading.Thread(target=lambda: (writer.submit(tmp_path / "b2.png", maps[2]), returned.set()))
    third.start()
    assert not returned.wait(0.3)
    gate.set()
    assert returned.wait(10)
    third.join()
    writer.close()
    assert [(tmp_path / f"b{i}.png").read_bytes() for i in range(3)] == [encode_label_png(m) for m in maps[:3]]

    # an encoding error reaches the caller
    writer = PngWriter(workers=1)
    writer.submit(tmp_path / "c.png", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        writer.close()


def test_ddp_strategies_carry_a_short_process_group_timeout(monkeypatch):
    from datetime import timedelta

    from pytorch_lightning.strategies import DDPStrategy

    from ibnnet.runs.runner import DDP_TIMEOUT_ENV, build_strategy, process_count
    monkeypatch.delenv(DDP_TIMEOUT_ENV, raising=False)
    for name, processes in (("ddp", 8), ("ddp", 1), ("auto", 2)):
        s = build_strategy(name, processes)
        assert isinstance(s, DDPStrategy) and s._timeout == timedelta(minutes=10) < timedelta(minutes=30)
    s = build_strategy("ddp_find_unused_parameters_true", 2)
    assert s._ddp_kwargs["find_unused_parameters"] is True and s._timeout == timedelta(minutes=10)
    assert build_strategy("auto", 1) == "auto"   # one process: no process group at all
    monkeypatch.setenv(DDP_TIMEOUT_ENV, "45")
    assert build_strategy("ddp", 2)._timeout == timedelta(seconds=45)
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv(DDP_TIMEOUT_ENV, bad)
        with pytest.raises(ConfigError, match=f"^{DDP_TIMEOUT_ENV}='{bad}': must be a number of seconds > 0"):
            build_strategy("ddp", 2)
    assert process_count(4, 2, "cuda") == 8 and process_count("auto", 1, "cpu") == 1


def test_a_failing_rank_zero_stops_the_ranks_it_started(tmp_path):
    import subprocess

    from lightning_fabric.plugins.environments import LightningEnvironment
    from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher

    from ibnnet.runs.preemption import Preempted
    from ibnnet.runs.runner import fail_fast
    launcher = _SubprocessScriptLauncher(LightningEnvironment(), num_processes=2, num_nodes=1)
    trainer = type("T", (), {"global_rank": 0, "strategy": type("S", (), {"launcher": launcher})()})()
    # a coordinated preemption stop is not a failure: the other ranks stop by themselves
    launcher.procs = [subprocess.Popen(["sleep", "60"])]
    with pytest.raises(Preempted), fail_fast(trainer):
        raise Preempted("time limit")
    assert launcher.procs[0].poll() is None
    # rank 0 raising before a barrier: its child (rank 1, which would wait in the barrier) is killed at once
    with pytest.raises(RuntimeError, match="boom"), fail_fast(trainer):
        raise RuntimeError("boom")
    assert launcher.procs[0].wait(5) == -9
