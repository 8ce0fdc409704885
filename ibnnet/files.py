"""Files: atomic writes (a crash or preemption never leaves a half-written result behind; every writer uses
these, checkpoints their own fsync'd writer in runs/callbacks.py), JSON reading, safe names."""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator


@contextlib.contextmanager
def atomic_output(path: str | Path, fsync: bool = True) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` when the block ends without error: readers see the old or the new
    file, never a half-written one. ``fsync=False`` skips the flush to disk (many small resumable outputs,
    where a power cut, unlike a crash, may still leave a damaged file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file lives in the target folder so that os.replace is a same-filesystem rename.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path, fsync=fsync) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any | None:
    """The parsed file; None if it is missing or unreadable (cut short, damaged)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def sanitize(text: str, max_len: int = 80) -> str:
    """``text`` as a file or folder name: letters, digits and ``._=+-`` only (run ids, logger names)."""
    text = re.sub(r"[^A-Za-z0-9._=+-]+", "-", str(text)).strip("-.")
    return text[:max_len] or "run"
