"""A run's files survive a kill at any moment: logs trimmed on resume are replaced, never rewritten in place, and
the temporary files a kill leaves behind are removed when the run starts again."""
import csv
import json
import os
from types import SimpleNamespace

from ibnnet.runs.exact import SampleLog
from ibnnet.runs.folder import RunFolder
from ibnnet.runs.loggers import _ResumingWriter


def _held(path):
    """The file as it is now, opened: a rewrite in place shows through this handle, a replacement does not."""
    return open(path, "rb"), path.read_bytes()


def test_resuming_replaces_metrics_csv_and_keeps_the_rows_before_the_checkpoint(tmp_path):
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    path = log_dir / "metrics.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["epoch", "step", "train/loss_step"])
        w.writeheader()
        w.writerows({"epoch": 0, "step": s, "train/loss_step": 1.5 + s} for s in range(6))
    handle, before = _held(path)
    # resumed from a checkpoint at global step 4: steps 0-3 were trained by it, 4 and 5 are trained again
    _ResumingWriter(str(log_dir), resume_step=4)
    with handle:
        assert handle.read() == before, "metrics.csv was rewritten in place: a kill there truncates the whole log"
    with open(path, newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [0, 1, 2, 3]
    assert sorted(p.name for p in log_dir.iterdir()) == ["metrics.csv"]


def test_resuming_replaces_the_sample_log(tmp_path):
    path = tmp_path / "logs" / "samples-rank0.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"epoch": 0, "batch": b, "step": b + 1, "indices": [b]}) + "\n"
                            for b in range(5)) + '{"epoch": 0, "ba')   # the last line cut short by a kill
    handle, before = _held(path)
    log = SampleLog(path.parent)
    trainer = SimpleNamespace(global_rank=0, datamodule=SimpleNamespace(resume_position=(0, 3)))
    log.on_train_start(trainer, None)
    log.teardown(trainer, None, "fit")
    with handle:
        assert handle.read() == before, "the sample log was rewritten in place"
    assert [json.loads(line)["batch"] for line in path.read_text().splitlines()] == [0, 1, 2]
    assert sorted(p.name for p in path.parent.iterdir()) == ["samples-rank0.jsonl"]


def test_partial_files_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    folder = RunFolder(tmp_path / "run")
    partial = [  # what AtomicCheckpointIO and ibnnet.files' atomic writes leave when SIGKILLed
        "checkpoints/.last.ckpt.k3_9zq1a.tmp", "checkpoints/.preempt.ckpt.0a1b2c3d.tmp",
        "checkpoints/.last.prev.ckpt.4242.tmp", "checkpoints/.best.ckpt.4242.tmp",
        "logs/.metrics.csv.x1y2z3w4.tmp", "logs/.samples-rank1.jsonl.abcdefgh.tmp",
        ".state.json.q7w8e9r0.tmp", ".metrics.json.m1n2b3v4.tmp",
    ]
    kept = [
        "config.yaml", "state.json", "train.log", "checkpoints/last.ckpt", "checkpoints/last.ckpt.unreadable",
        "logs/metrics.csv", "checkpoints/.hidden", "checkpoints/notes.tmp", "logs/.notes.tmp", ".x.tmp",
        # written by processes that do not hold the run: a sweep refreshing config.yaml, wandb, the claim
        ".config.yaml.a1b2c3d4.tmp", "wandb/.synced.json.a1b2c3d4.tmp", "claims/claim-000001.json",
        "elsewhere/.last.ckpt.k3_9zq1a.tmp",
    ]
    for name in partial + kept:
        (folder.path / name).parent.mkdir(parents=True, exist_ok=True)
        (folder.path / name).write_text("x")
    removed = folder.remove_partial_files()
    assert sorted(removed) == sorted(folder.path / name for name in partial)
    left = sorted(str(p.relative_to(folder.path)) for p in folder.path.rglob("*") if p.is_file())
    assert left == sorted(kept)
    assert folder.remove_partial_files() == []
    assert RunFolder(tmp_path / "absent").remove_partial_files() == []
    assert os.listdir(tmp_path) == ["run"]
