"""End-to-end training on the built-in data: learning, resuming, DDP on CPU, logging."""
import csv
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from ibnnet.config import compose
from ibnnet.launch.grid import load_experiment
from ibnnet.launch.rundir import RunFolder, run_dir
from helpers import CLS, ENV, REPO, SEG, cli, config, ibnnet

def losses(folder: RunFolder) -> list[float]:
    with open(folder.path / "logs" / "metrics.csv") as f:
        return [float(r["train/loss_step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]


@pytest.mark.parametrize("body", [CLS, SEG], ids=["classification", "segmentation"])
def test_training_lowers_the_loss_and_writes_the_run_folder(tmp_path, body):
    path = config(tmp_path, body)
    out = ibnnet("train", path)
    folder = RunFolder(run_dir(compose(path)))
    assert str(folder.path) in out.stdout
    curve = losses(folder)
    n = len(curve) // compose(path).trainer.max_epochs  # steps per epoch
    first, last = sum(curve[:n]) / n, sum(curve[-n:]) / n
    assert len(curve) >= 16 and last < 0.7 * first, curve
    metrics = json.loads(folder.metrics_path.read_text())
    assert set(metrics["metrics"]) == {"synthetic", "real"}
    key = "top1_err" if "classification" in body else "miou"
    assert all(0 <= m[key] <= 100 for m in metrics["metrics"].values())
    assert metrics["world_size"] == 1 and metrics["config_hash"] in folder.path.name
    assert metrics["versions"]["torch"] and metrics["wall_time_s"] > 0 and metrics["git"]["commit"]
    assert (folder.checkpoint_dir / "last.ckpt").is_file() and (folder.checkpoint_dir / "best.ckpt").is_file()
    assert (folder.path / "config.yaml").is_file() and folder.state()["status"] == "done"
    # wandb ran offline into the run folder, under the run's id
    offline = list((folder.path / "wandb").glob("offline-run-*"))
    assert offline and folder.path.name.replace("=", "-").replace(".", "_") in offline[0].name
    # a finished run is skipped, not trained again
    again = cli("train", path)
    assert "already done, skipping" in again
    ckpt = torch.load(folder.checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["cfg"]["model"]["name"] == compose(path).model.name


def test_half_finished_sweep_skips_done_and_resumes_unfinished(tmp_path):
    # Small and fast: this test is about skipping and resuming, not about learning.
    base = config(tmp_path, CLS.replace("max_epochs: 8", "max_epochs: 6").replace("image_size: 48, eval_resize: 48",
                                                                                   "image_size: 32, eval_resize: 32"))
    exp_path = tmp_path / "experiments" / "mini.yaml"
    exp_path.parent.mkdir()
    exp_path.write_text(textwrap.dedent(f"""
        experiment: mini
        base: {base}
        grid:
          model:
            key: model.name
            values: {{BN: resnet18_bn, IBN-b: resnet18_ibn_b}}
        table: {{rows: model, columns: eval, metrics: [top1_err]}}
    """))
    (bn_cell, bn_cfg, bn), (ibn_cell, ibn_cfg, ibn) = load_experiment(exp_path).folders()
    cli("sweep", exp_path, "--only", "model=BN", "--no-table")
    assert bn.is_done() and not ibn.is_done()
    # start the second cell and kill it hard once its first epoch is checkpointed
    from ibnnet.launch.runner import prepare
    prepare(ibn_cfg)
    proc = subprocess.Popen([sys.executable, "-m", "ibnnet", "run", str(ibn.path)], env=ENV, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (ibn.checkpoint_dir / "last.ckpt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not ibn.is_done()
    killed_at = torch.load(ibn.checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert 0 < killed_at["epoch"] + 1 < 6
    status = cli("status", exp_path)
    assert "done" in status and "failed" in status  # the killed run: its process is gone
    bn_mtime = bn.metrics_path.stat().st_mtime
    out = cli("sweep", exp_path)
    assert "1 finished, 1 already done, 0 failed" in out
    assert bn.metrics_path.stat().st_mtime == bn_mtime
    attempts = ibn.state()["attempts"]
    assert attempts[-1]["resume_from"] == "last.ckpt" and len(attempts) == 2
    m = ibn.metrics()
    steps_per_epoch = 96 // 16
    assert m["epochs"] == 6 and m["global_step"] == 6 * steps_per_epoch
    # steps logged by the resumed attempt start where the checkpoint stopped: no epoch trained twice
    with open(ibn.path / "logs" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]
    assert len(steps) == len(set(steps)) == 6 * steps_per_epoch
    assert (tmp_path / "results" / "mini" / "table.md").is_file()


def test_ddp_on_cpu_and_exact_two_process_evaluation(tmp_path):
    path = config(tmp_path, SEG.replace("max_epochs: 3", "max_epochs: 1"))
    ibnnet("train", path, "trainer.devices=2", "trainer.strategy=ddp")
    cfg = compose(path, ["trainer.devices=2", "trainer.strategy=ddp"])
    folder = RunFolder(run_dir(cfg))
    metrics = folder.metrics()
    assert metrics["world_size"] == 2
    ckpt = folder.checkpoint_dir / "last.ckpt"
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"eval{devices}"
        ibnnet("evaluate", path, "--checkpoint", ckpt, "--appearance", "none", "--devices", devices, "--out", out)
        results[devices] = json.loads((out / "evaluation.json").read_text())
    assert results[2]["world_size"] == 2
    for name in ("synthetic", "real"):  # 7 images: uneven shards, nothing padded or repeated
        one, two = results[1]["results"][name], results[2]["results"][name]
        assert one["confmat"] == two["confmat"]
        assert sum(map(sum, one["confmat"])) == 7 * 32 * 32
        assert one["miou"] == two["miou"]
