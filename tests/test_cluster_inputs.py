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
