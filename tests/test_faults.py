"""Faults keep finished work: a full disk, unreadable checkpoints, damaged result files, unreachable wandb."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import ENV, REPO, TINY, cli, config

from ibnnet.config import compose
from ibnnet.experiments.grid import load_experiment
from ibnnet.runs.folder import CheckpointError, RunFolder, run_dir
from ibnnet.runs.runner import prepare

BODY = TINY


@pytest.fixture
def small_disk(tmp_path):
    """A 150 MiB tmpfs: room for one last.ckpt of a ResNet-18 (90 MB), not a second beside it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, small_disk):
    path = config(tmp_path, BODY)
    # No evaluation, so no best.ckpt: the second epoch's last.ckpt is the write that cannot fit (a best.ckpt of
    # the same step would be a hard link to last.ckpt, taking no room of its own).
    folder = prepare(compose(path, [f"paths.runs={small_disk}", "data.val=[]"]))
    proc = subprocess.run([sys.executable, "-m", "ibnnet", "run", str(folder.path)], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and not folder.is_done()
    state = folder.state()
    assert state["status"] == "failed"
    assert "could not write the checkpoint" in state["error"] and "previous last.ckpt is intact" in state["error"]
    assert "no space left on device" in state["error"] and "MiB free" in state["error"]
    assert "could not write the checkpoint" in proc.stderr
    # the epoch-1 checkpoint is whole, and nothing half-written is left behind
    ckpt = torch.load(folder.checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 2
    assert not [p for p in folder.checkpoint_dir.iterdir() if p.name.endswith(".tmp")]
    assert folder.resume_checkpoint() == folder.checkpoint_dir / "last.ckpt"


def _fake_checkpoint(path, step):
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": step, "epoch": step // 2}, path)


def test_an_unreadable_last_checkpoint_falls_back_to_the_previous_one(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.checkpoint_dir.mkdir(parents=True)
    _fake_checkpoint(folder.checkpoint_dir / "last.prev.ckpt", 2)
    _fake_checkpoint(folder.checkpoint_dir / "last.ckpt", 4)
    last = folder.checkpoint_dir / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])   # cut short, as by a crash on a full disk
    assert folder.resume_checkpoint() == folder.checkpoint_dir / "last.prev.ckpt"
    assert (folder.checkpoint_dir / "last.ckpt.unreadable").is_file() and not last.exists()
    # nothing readable: a message naming the files and what to do, not a traceback from inside torch
    (folder.checkpoint_dir / "last.prev.ckpt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"no readable checkpoint.*last\.prev\.ckpt.*delete them to restart"):
        folder.resume_checkpoint()


def test_damaged_result_files_are_reported_and_the_rest_renders(tmp_path):
    base = config(tmp_path, BODY)
    exp_path = tmp_path / "experiments" / "damaged.yaml"
    exp_path.parent.mkdir()
    exp_path.write_text(textwrap.dedent(f"""
        experiment: damaged
        base: {base}
        grid:
          model:
            key: model.name
            values: {{BN: resnet18_bn, IBN-a: resnet18_ibn_a, IBN-b: resnet18_ibn_b}}
        table: {{rows: model, columns: eval, metrics: [top1_err]}}
    """))
    (_, bn_cfg, bn), (_, a_cfg, ibn_a), (_, b_cfg, ibn_b) = load_experiment(exp_path).folders()
    for cfg in (bn_cfg, a_cfg, b_cfg):
        prepare(cfg)
    bn.metrics_path.write_text(json.dumps({"metrics": {"synthetic": {"top1_err": 12.5}}}))
    ibn_a.metrics_path.write_text('{"metrics": {"synthetic": {"top1_')   # cut short
    ibn_b.state_path.write_text("\x00\x00")
    status = cli("status", exp_path)
    lines = {line.split()[0]: line for line in status.splitlines() if line.startswith("model=")}
    assert " done " in lines["model=BN"]
    assert " broken " in lines["model=IBN-a"] and "metrics.json is unreadable" in lines["model=IBN-a"]
    assert " broken " in lines["model=IBN-b"] and "state.json is unreadable" in lines["model=IBN-b"]
    assert not ibn_a.is_done()   # a sweep resumes it and writes metrics.json again
    table = cli("table", exp_path)
    assert "12.50" in table and table.count("(broken)") == 2


def test_an_unreachable_wandb_server_never_stops_training(tmp_path):
    path = config(tmp_path, BODY.replace("{logger: disabled}", "{logger: default}").replace("max_epochs: 2",
                                                                                            "max_epochs: 1"))
    env = dict(ENV, WANDB_MODE="online", WANDB_BASE_URL="http://127.0.0.1:9", WANDB_API_KEY="x" * 40,
               WANDB_INIT_TIMEOUT="3")
    proc = subprocess.run([sys.executable, "-m", "ibnnet", "train", str(path)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = RunFolder(run_dir(compose(path)))
    assert folder.is_done() and folder.metrics()["metrics"]["synthetic"]["top1_err"] >= 0
    assert "logging it offline instead" in proc.stdout + proc.stderr
    assert list((folder.path / "wandb").glob("offline-run-*"))   # kept for `wandb sync` later
    assert (folder.path / "logs" / "metrics.csv").is_file()
