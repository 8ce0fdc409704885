"""Deterministic runs pin PyTorch's CPU kernels to AVX2 before torch loads, on every way a run starts: the local
launcher's environment, the SLURM script's exports, and a restart of `ibnnet train` / `ibnnet run` started without
them; metrics.json records what ran."""
import json
import os
import subprocess
import sys

import pytest
from helpers import ENV, REPO, TINY, config

from ibnnet.config import compose
from ibnnet.runs.env import PORTABLE_CPU_ENV, _cpu_flags, portable_cpu_env

AVX2 = {"avx2", "fma"} <= _cpu_flags()
needs_avx2 = pytest.mark.skipif(not AVX2, reason="this CPU has no AVX2: runs are not pinned")


def _unpinned(**extra):
    env = {k: v for k, v in ENV.items() if k not in PORTABLE_CPU_ENV and k != "IBNNET_PORTABLE_RESTART"}
    return dict(env, **extra)


@needs_avx2
def test_portable_env_only_for_deterministic_runs_and_user_values_win(monkeypatch):
    for k in PORTABLE_CPU_ENV:
        monkeypatch.delenv(k, raising=False)
    assert portable_cpu_env(True) == PORTABLE_CPU_ENV
    assert portable_cpu_env(False) == {}
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    assert portable_cpu_env(True)["ATEN_CPU_CAPABILITY"] == "default"
    monkeypatch.setenv("IBNNET_CPU_ISA", "native")
    assert portable_cpu_env(True) == {}


@needs_avx2
def test_launchers_put_the_pinned_set_in_the_run_environment(tmp_path, monkeypatch):
    from ibnnet.launchers.local import run_environment
    from ibnnet.launchers.slurm import render_script
    from ibnnet.runs.runner import prepare
    for k in PORTABLE_CPU_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    det = compose(config(tmp_path, TINY), [f"paths.runs={tmp_path}/runs"])
    loose = compose(config(tmp_path, TINY), [f"paths.runs={tmp_path}/runs", "trainer.deterministic=false"])
    env = run_environment(prepare(det), {"PATH": "/bin"})
    assert {k: env[k] for k in PORTABLE_CPU_ENV} == PORTABLE_CPU_ENV and env["PATH"] == "/bin"
    assert not set(PORTABLE_CPU_ENV) & set(run_environment(prepare(loose), {"PATH": "/bin"}))
    script = render_script(det, "tiny", tmp_path / "runs.txt", tmp_path, 1)
    assert 'export ATEN_CPU_CAPABILITY=${ATEN_CPU_CAPABILITY:-avx2}' in script
    assert 'export MKL_CBWR=${MKL_CBWR:-AVX2,STRICT}' in script
    assert script.index("export ONEDNN_MAX_CPU_ISA") < script.index("srun ")
    assert "ATEN_CPU_CAPABILITY" not in render_script(loose, "tiny", tmp_path / "runs.txt", tmp_path, 1)


@needs_avx2
def test_train_started_without_the_pinned_set_restarts_with_it(tmp_path):
    """`ibnnet train` on a deterministic config, from a shell with none of the variables: the run records AVX2
    dispatch and the pinned variables; with IBNNET_CPU_ISA=native it records the CPU's own dispatch."""
    cfg = config(tmp_path, TINY)
    records = {}
    for name, extra in (("pinned", {}), ("native", {"IBNNET_CPU_ISA": "native"})):
        runs = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "ibnnet", "train", str(cfg), f"paths.runs={runs}",
                               "trainer.max_epochs=1"], env=_unpinned(**extra), cwd=REPO, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (metrics,) = runs.rglob("metrics.json")
        records[name] = json.loads(metrics.read_text())["reproducibility"]["cpu_kernels"]
    assert records["pinned"] == {"aten_dispatch": "AVX2", "env": PORTABLE_CPU_ENV, "portable": True}
    native = records["native"]
    assert native["portable"] is False and set(native["env"].values()) == {None}
    assert native["aten_dispatch"] in ("AVX2", "AVX512")


def test_in_process_runs_record_what_they_ran():
    from ibnnet.runs.env import cpu_isa_record
    rec = cpu_isa_record()
    assert rec["aten_dispatch"] in ("DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX", "SVE256")
    assert rec["env"] == {k: os.environ.get(k) for k in PORTABLE_CPU_ENV}
    assert rec["portable"] == (rec["env"] == PORTABLE_CPU_ENV and rec["aten_dispatch"] == "AVX2")


@pytest.mark.parametrize("model", ["resnet18_ibn_a", "resnet18_ibn_b", "resnet18_sn"])
def test_deterministic_runs_drop_pytorchs_nan_fill_and_no_number_changes(model):
    """Deterministic runs turn off PyTorch's NaN fill of new tensors (3 % of the demo's step): a training step of
    each kind of norm layer gives bit-identical gradients and running statistics with and without the fill, so no
    kernel of ours reads memory it did not write; non-deterministic runs get PyTorch's default back."""
    import copy

    import timm
    import torch
    from omegaconf import OmegaConf

    from ibnnet.runs.runner import apply_numerics
    # (conftest's _restore_torch_numerics puts the deterministic flag and the fill back afterwards)
    torch.use_deterministic_algorithms(True)
    apply_numerics(OmegaConf.create({"num_threads": 0, "deterministic": True, "accelerator": "cpu"}))
    assert torch.utils.deterministic.fill_uninitialized_memory is False
    torch.manual_seed(0)
    start = timm.create_model(model, num_classes=10, channels=[16, 32, 32, 32]).train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    results = []
    for fill in (True, False):
        torch.utils.deterministic.fill_uninitialized_memory = fill
        net = copy.deepcopy(start)
        torch.manual_seed(1)   # the SN ResNets' dropout
        torch.nn.functional.cross_entropy(net(x), y).backward()
        results.append([p.grad for p in net.parameters()] + list(net.buffers()))
    assert all(torch.equal(a, b) and not a.isnan().any() for a, b in zip(*results))
    apply_numerics(OmegaConf.create({"num_threads": 0, "deterministic": False, "accelerator": "cpu"}))
    assert torch.utils.deterministic.fill_uninitialized_memory is True
