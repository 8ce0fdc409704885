"""Where the configs and experiment files that ship with ibnnet are, and where the user's own ones are.

In a wheel the top-level ``configs/`` and ``experiments/`` folders are package data under
``ibnnet/shipped/`` (``pyproject.toml``: ``force-include``), read through :mod:`importlib.resources`; in a
source checkout or an editable install they are the checkout's folders.  A user's files shadow shipped ones
of the same name: ``./configs`` and ``./experiments`` of the current folder (what ``ibnnet init`` creates),
then the folders in ``IBNNET_CONFIG_PATH`` / ``IBNNET_EXPERIMENT_PATH``, then the shipped ones.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

SHIPPED_FOLDERS = ("configs", "experiments")
_CHECKOUT = Path(__file__).resolve().parents[2]


def shipped_dir(name: str) -> Path:
    """The shipped folder ``name`` (``configs`` or ``experiments``) as a real directory."""
    if name not in SHIPPED_FOLDERS:
        raise ValueError(f"unknown shipped folder {name!r} (known: {', '.join(SHIPPED_FOLDERS)})")
    packaged = resources.files("ibnnet").joinpath("shipped", name)
    if packaged.is_dir():
        # Wheels install as plain files, so the Traversable is a filesystem path; the configs refer to each
        # other by relative path, which needs real directories (a zipped install is not supported).
        path = Path(str(packaged))
        if path.is_dir():
            return path
        raise RuntimeError(f"ibnnet's {name} are inside an archive ({packaged}); install ibnnet unzipped")
    return _CHECKOUT / name   # source checkout or editable install: the repository's own folder


def source_checkout() -> Path | None:
    """The git checkout ibnnet runs from, or None when it is installed from a wheel."""
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "configs").is_dir():
        return _CHECKOUT
    return None


def user_dirs(name: str) -> list[Path]:
    """The user's folders for ``name`` in lookup order (those that exist), before the shipped one."""
    env = {"configs": "IBNNET_CONFIG_PATH", "experiments": "IBNNET_EXPERIMENT_PATH"}[name]
    dirs = [Path.cwd() / name] + [Path(p) for p in os.environ.get(env, "").split(os.pathsep) if p]
    return [d for d in dirs if d.is_dir()]


def lookup_dirs(name: str) -> list[Path]:
    """User folders first, the shipped folder last, each once."""
    seen, out = set(), []
    for d in user_dirs(name) + [shipped_dir(name)]:
        key = d.resolve()
        if key not in seen and d.is_dir():
            seen.add(key)
            out.append(d)
    return out


def resolve_shipped_path(path: str | os.PathLike, name: str) -> Path:
    """``path`` if it exists; else a relative ``<name>/REST`` (e.g. ``configs/demo.yaml`` in a folder without
    configs/, as the README writes it) found under the user's and then the shipped ``name`` folders."""
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    parts = p.parts
    rest = parts[parts.index(name) + 1:] if name in parts else ()
    for d in lookup_dirs(name) if rest else ():
        if d.joinpath(*rest).is_file():
            return d.joinpath(*rest)
    return p
