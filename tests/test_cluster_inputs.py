"""What a cluster feeds the suite that one quiet machine does not: array tasks starting together on one folder,
names that reach the shell and the file system, run references that could match more than one run, a
scheduler that does not answer."""
import threading
import time

import pytest

from ibnnet.errors import DataError


def test_corrupt_shards_started_together_all_run_and_a_foreign_folder_is_still_refused(tmp_path, monkeypatch):
    from test_robustness import write_val

    import ibnnet.files
    from ibnnet.data.tools.corruptions import MARKER, _imagecorruptions, corrupt_imagenet
    wnids = ("n01440764", "n01443537", "n01484850")
    src, dst = tmp_path / "val", tmp_path / "c"
    write_val(src, per_class=tuple((w, 1) for w in wnids), all_classes=False, size=(40, 40))
    _imagecorruptions()   # imported once here, not by three threads at once
    # A slow file server: the marker's temporary file stays in the folder for a while (as on NFS under load),
    # long enough for the other array tasks, started meanwhile, to list the folder.
    fsync = ibnnet.files.os.fsync
    monkeypatch.setattr(ibnnet.files.os, "fsync", lambda fd: (time.sleep(0.5), fsync(fd))[1])
    kw = dict(corruptions=["contrast"], severities=[1], resize=32, crop=32, progress=False)
    errors, results = {}, {}

    def shard(k):
        try:
            results[k] = corrupt_imagenet(src, dst, shard=(k, 3), **kw)
        except Exception as e:   # noqa: BLE001 - reported by the assertion below
            errors[k] = e

    threads = [threading.Thread(target=shard, args=(0,))]
    threads[0].start()
    deadline = time.time() + 10
    while not (dst.is_dir() and any(p.name.endswith(".tmp") for p in dst.iterdir())):
        assert time.time() < deadline and threads[0].is_alive(), errors
        time.sleep(0.01)
    threads += [threading.Thread(target=shard, args=(k,)) for k in (1, 2)]   # while shard 0 writes the marker
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(results) == [0, 1, 2] and all(r.written == 1 and not r.failed for r in results.values())
    assert sorted(p.parent.name for p in dst.rglob("*.JPEG")) == sorted(wnids)
    assert not [p for p in dst.rglob("*") if p.name.endswith(".tmp")]
    assert corrupt_imagenet(src, dst, **kw).written == 0   # the run without a shard finds everything done
    # a folder with someone else's files and no marker is still not written into
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=f"has no {MARKER}: not a set made by"):
        corrupt_imagenet(src, foreign, shard=(0, 3), **kw)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def _finished_run(root, experiment, run_id, scale="reduced", lr=0.01):
    import json
    folder = root / experiment / run_id
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(f"experiment: {experiment}\nscale: {scale}\noptim: {{lr: {lr}}}\n")
    (folder / "metrics.json").write_text(json.dumps({"metrics": {}}))
    return folder


def test_a_run_reference_names_exactly_one_run_of_exactly_that_cell(tmp_path):
    from ibnnet.models.weights import WeightsError
    from ibnnet.tasks.common import resolve_weights_path
    runs = tmp_path / "runs"
    plain = _finished_run(runs, "t6", "model=IBN-Net50-0123abcd")
    time.sleep(0.02)
    _finished_run(runs, "t6", "model=IBN-Net50-a-89abcdef")   # another cell whose name starts the same, newer
    assert resolve_weights_path("run:t6/model=IBN-Net50", runs) == plain / "checkpoints" / "last.ckpt"
    assert resolve_weights_path("run:t6/model=IBN-Net50-a:best", runs).parent.parent.name == "model=IBN-Net50-a-89abcdef"
    # a second run of the cell with other settings: which one is meant is not guessed
    other = _finished_run(runs, "t6", "model=IBN-Net50-fedcba98", lr=0.02)
    with pytest.raises(WeightsError) as e:
        resolve_weights_path("run:t6/model=IBN-Net50", runs)
    msg = str(e.value)
    assert "2 finished runs of cell 'model=IBN-Net50'" in msg and "\n" not in msg
    assert "model=IBN-Net50-0123abcd (scale reduced, optim.lr=0.01)" in msg
    assert "model=IBN-Net50-fedcba98 (scale reduced, optim.lr=0.02)" in msg
    assert "run:t6/model=IBN-Net50-0123abcd" in msg and "@<scale>" in msg
    # picked by its run id, or by its scale when that is what differs
    assert resolve_weights_path("run:t6/model=IBN-Net50-fedcba98", runs).parent.parent == other
    _finished_run(runs, "t6", "model=IBN-Net50-00001111", scale="full")
    assert resolve_weights_path("run:t6/model=IBN-Net50@full", runs).parent.parent.name == "model=IBN-Net50-00001111"
    with pytest.raises(WeightsError, match="no finished run of cell 'model=IBN-Net5'"):
        resolve_weights_path("run:t6/model=IBN-Net5", runs)
