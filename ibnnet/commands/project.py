"""``ibnnet init DIR``: a project folder with editable copies of the shipped configs and experiment files."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..config import ConfigError
from ..config.shipped import SHIPPED_FOLDERS, shipped_dir


def init_project(target: str | Path, force: bool = False) -> list[Path]:
    """Copy ``configs/`` and ``experiments/`` into ``target``; returns the files written.

    Existing files are never overwritten without ``force`` (a user's edits are work), and nothing is written
    when any would be: the check runs before the first copy.
    """
    target = Path(target)
    pairs = []
    for name in SHIPPED_FOLDERS:
        src_root = shipped_dir(name)
        for src in sorted(src_root.rglob("*.yaml")):
            pairs.append((src, target / name / src.relative_to(src_root)))
    existing = [dst for _, dst in pairs if dst.exists()]
    if existing and not force:
        raise ConfigError(f"{target}: {len(existing)} file(s) already there (e.g. {existing[0]}); "
                          f"nothing was written. Use --force to overwrite them with the shipped versions")
    written = []
    for src, dst in pairs:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        written.append(dst)
    return written


def run(args) -> int:
    written = init_project(args.dir, force=args.force)
    target = Path(args.dir)
    counts = {name: sum(1 for p in written if p.relative_to(target).parts[0] == name) for name in SHIPPED_FOLDERS}
    print(f"[ibnnet] {target}/: {counts['configs']} configs under configs/, {counts['experiments']} experiment "
          f"files under experiments/")
    print(f"[ibnnet] run ibnnet from {target}: its configs/ and experiments/ shadow the shipped ones by name, "
          f"and runs/, results/ and data/ are created there (or where IBNNET_RUNS, IBNNET_RESULTS, IBNNET_DATA "
          f"point)")
    return 0
