"""End-to-end training on the built-in data: learning, resuming, DDP on CPU, logging."""
import csv
import json

import pytest
import torch
from helpers import CLS, SEG, cli, config, ibnnet

from ibnnet.config import compose
from ibnnet.runs.folder import RunFolder, run_dir


def losses(folder: RunFolder) -> list[float]:
    with open(folder.path / "logs" / "metrics.csv") as f:
        return [float(r["train/loss_step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]


# Segmentation: 4 epochs of 8 steps (the first epoch's mean includes the fast initial drop).
@pytest.mark.parametrize("body", [CLS, SEG.replace("max_epochs: 3", "max_epochs: 4")],
                         ids=["classification", "segmentation"])
def test_training_lowers_the_loss_and_writes_the_run_folder(tmp_path, body):
    path = config(tmp_path, body)
    # classification: the checkpoints go to wandb as references (not hashed: the same run folder)
    out = ibnnet("train", path, *(["logger.wandb.checkpoints=reference"] if "classification" in body else []))
    folder = RunFolder(run_dir(compose(path)))
    assert str(folder.path) in out.stdout
    # in a pipe: our lines only, one per epoch, no progress-bar frames; the libraries' chatter is in train.log
    console = out.stdout + out.stderr
    assert "\r" not in console and "\x1b[" not in console
    assert all(ln.startswith(("[ibnnet]", "ibnnet:")) for ln in console.splitlines() if ln.strip()), console
    epochs = [ln for ln in out.stdout.splitlines() if ln.startswith("[ibnnet] epoch ")]
    assert len(epochs) == compose(path).trainer.max_epochs and " img/s" in epochs[0], out.stdout
    assert f"[ibnnet] wandb (offline): {folder.path / 'wandb'}; `ibnnet sync " in out.stdout
    train_log = folder.log_path.read_text()
    assert "Total params" in train_log and "srun" in train_log   # Lightning's model summary and its SLURM hint
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
    # its summary holds metrics.json, under the same names (read back from the offline file wandb would upload)
    from wandb_files import read_run

    from ibnnet.runs.wandb_results import flatten_metrics
    summary, flat = read_run(offline[-1])["summary"], flatten_metrics(metrics)
    for name in ("metrics/synthetic/" + key, "metrics/real/" + key, "best/epoch", "epochs", "wall_time_s",
                 "config_hash", "reproducibility/cpu_kernels/aten_dispatch"):
        assert summary[name] == flat[name], name
    if "classification" in body:   # checkpoints as references: URIs into the run folder, no bytes copied
        from wandb_files import records
        (artifact,) = [r.artifact for r in records(next(offline[-1].glob("*.wandb")))
                       if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "model"]
        refs = sorted(e.ref for e in artifact.manifest.contents)
        assert refs == [f"file://{(folder.checkpoint_dir / n).resolve()}" for n in ("best.ckpt", "last.ckpt")]
        assert not list(offline[-1].rglob("*.ckpt"))
    # a finished run is skipped, not trained again
    again = cli("train", path)
    assert "already done, skipping" in again
    ckpt = torch.load(folder.checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["cfg"]["model"]["name"] == compose(path).model.name


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


def test_best_and_last_of_one_step_are_one_file(tmp_path):
    """best.ckpt saved at the step last.ckpt is saved at holds the same weights: a hard link, not a second copy;
    a later save of either name replaces that name alone."""
    from ibnnet.runs.callbacks import AtomicCheckpointIO
    io = AtomicCheckpointIO()
    best, last = tmp_path / "best.ckpt", tmp_path / "last.ckpt"

    def state(step):
        return {"global_step": step, "state_dict": {"w": torch.full((1000,), float(step))}}
    io.save_checkpoint(state(5), best)            # validation end of epoch 1 (a new best) ...
    io.save_checkpoint(state(5), last)            # ... then the epoch's last.ckpt
    assert best.stat().st_ino == last.stat().st_ino and best.stat().st_nlink == 2
    io.save_checkpoint(state(10), last)           # epoch 2 is no better: best stays epoch 1's
    assert best.stat().st_ino != last.stat().st_ino
    assert torch.load(best, weights_only=True)["state_dict"]["w"][0] == 5
    assert torch.load(last, weights_only=True)["state_dict"]["w"][0] == 10
    io.save_checkpoint(state(15), last)           # last first, then a best of the same step
    io.save_checkpoint(state(15), best)
    assert best.stat().st_ino == last.stat().st_ino
    assert torch.load(best, weights_only=True)["state_dict"]["w"][0] == 15
    io.save_checkpoint(state(15), tmp_path / "preempt.ckpt")   # a file without a twin is written as it is
    assert (tmp_path / "preempt.ckpt").stat().st_nlink == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt", "last.prev.ckpt", "preempt.ckpt"]
