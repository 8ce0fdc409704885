"""Progress bars of long commands (tqdm, on stderr).

Shown when stderr is a terminal, so log files and pipes stay clean; ``--progress`` / ``--no-progress``
on a command, or ``IBNNET_PROGRESS=1`` / ``0`` in the environment, force them on or off. Commands that
run through Lightning (``evaluate``, ``predict``) use the same switch for Lightning's own bar.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Iterable

ENV = "IBNNET_PROGRESS"
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def progress_enabled(choice: bool | None = None, default: bool = True) -> bool:
    """``choice`` (a command's --progress/--no-progress) if given, else $IBNNET_PROGRESS if set, else
    whether stderr is a terminal (and ``default``, e.g. a config's ``trainer.enable_progress_bar``)."""
    if choice is not None:
        return bool(choice)
    env = os.environ.get(ENV, "").strip().lower()
    if env in _ON:
        return True
    if env in _OFF:
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(default and isatty is not None and isatty())


def progress_bar(iterable: Iterable | None = None, *, enabled: bool | None = None, **kwargs: Any):
    """A tqdm bar on stderr, or a silent pass-through when progress is off (see :func:`progress_enabled`)."""
    from tqdm import tqdm
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not progress_enabled(enabled), file=sys.stderr, **kwargs)


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help=f"progress bars on/off (default: on when stderr is a terminal, or ${ENV}=1/0)")


__all__ = ["ENV", "progress_enabled", "progress_bar", "add_progress_option"]
