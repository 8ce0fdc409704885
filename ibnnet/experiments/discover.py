"""An experiment's runs found from the run folders themselves, however they were launched.

Every run folder's ``config.yaml`` records its experiment, scale, cell (``run_name``) and grid labels. A sweep
started with extra settings (``trainer.devices=8``, ``trainer.num_nodes=2``, another seed) has other run ids
than a plain command would compute, so ``status`` and ``table`` look at what is on disk: each cell gets every
folder that records it. Several folders for one cell are *variants*; they are shown side by side with the keys
in which they differ, and ``--where key=value`` selects among them.
"""
from __future__ import annotations

import difflib

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from ..config import ConfigError
from ..runs.folder import RunFolder, hashed_content, sanitize
from .grid import Cell, Experiment


@dataclass
class CellRuns:
    cell: Cell
    cfg: DictConfig                       # the config this command composes for the cell
    folders: list[RunFolder]              # one, or several variants
    configs: list[dict[str, Any]] = field(default_factory=list)   # each folder's recorded config (plain)

    def differences(self) -> list[str]:
        """For each variant, ``key=value`` of the (hashed) settings in which the variants differ."""
        flat = [_flatten(_hashed(c)) for c in self.configs]
        keys = sorted({k for f in flat for k in f if len({repr(g.get(k)) for g in flat}) > 1})
        return [" ".join(f"{k}={f.get(k)!r}" if not isinstance(f.get(k), (int, float, str)) else f"{k}={f.get(k)}"
                         for k in keys) for f in flat]


def _hashed(plain: dict[str, Any]) -> dict[str, Any]:
    try:
        return hashed_content(OmegaConf.create(plain))
    except Exception:      # an old or hand-edited config: compare it as written
        return plain


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(d, list) and any(isinstance(x, (dict, list)) for x in d):
        out = {}
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: d}


def _read_config(folder: Path) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def parse_where(where: list[str] | None) -> dict[str, Any]:
    out = {}
    for item in where or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--where {item!r}: must look like key=value (e.g. trainer.devices=8)")
        out[key.strip()] = yaml.safe_load(value) if value else ""
    return out


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in [f"{prefix}{key}", *_dotted_keys(v, f"{prefix}{key}.")]]
    return []


def check_where_keys(where: dict[str, Any], cfg: DictConfig) -> None:
    """Every --where key is a key of the run config: a typo would otherwise select nothing and print a table of
    "(pending)" as if the runs had never been made."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    keys = _dotted_keys(plain)
    marker = object()
    for key, value in where.items():
        if OmegaConf.select(cfg, key, default=marker, throw_on_missing=False) is marker:
            close = difflib.get_close_matches(key, keys, n=1)
            raise ConfigError(f"--where {key}={value}: no config key {key!r}"
                              + (f"; did you mean {close[0]}?" if close else " (keys are those of a run's config.yaml)"))


def _matches(config: dict[str, Any], where: dict[str, Any]) -> bool:
    cfg = OmegaConf.create(config)
    marker = object()
    for key, want in where.items():
        have = OmegaConf.select(cfg, key, default=marker, throw_on_missing=False)
        if isinstance(have, DictConfig):
            have = OmegaConf.to_container(have)
        if have is marker or (have != want and str(have) != str(want)):
            return False
    return True


def experiment_runs(exp: Experiment, overrides: tuple[str, ...] = (), where: list[str] | None = None,
                    discover: bool = True) -> list[CellRuns]:
    """Each cell of ``exp`` with its run folders.

    With command-line ``overrides`` the cell's folder is the one those settings name (as ``sweep`` would run
    it). Without, every folder under the experiment's runs root that records this experiment, scale and cell
    counts; a cell with none shows the folder a plain sweep would create. ``where`` keeps folders whose
    config has ``key == value``. ``discover=False``: exactly the folders this command names (a sweep's own).
    """
    conditions = parse_where(where)
    triples = exp.folders(overrides)
    if conditions and triples:
        check_where_keys(conditions, triples[0][1])
    found: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    # Overrides that only say where runs are kept (paths.*, launcher, logger) name the same runs: discover them too.
    same_runs = not overrides or [f.path.name for _, _, f in triples] == [f.path.name for _, _, f in exp.folders()]
    if discover and same_runs:
        roots = {Path(cfg.paths.runs) / sanitize(exp.name) for _, cfg, _ in triples}
        names = {cell.name for cell, _, _ in triples}
        for root in sorted(roots):
            for sub in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
                rec = _read_config(sub)
                if (rec and rec.get("experiment") == exp.name and (rec.get("scale") or "") == (exp.scale or "")
                        and rec.get("run_name") in names):
                    found.setdefault(rec["run_name"], []).append((sub, rec))
    out = []
    for cell, cfg, expected in triples:
        candidates = found.get(cell.name, [])
        if not any(p.resolve() == expected.path.resolve() for p, _ in candidates):
            if expected.path.is_dir() or not candidates:
                plain = _read_config(expected.path) or OmegaConf.to_container(cfg, resolve=True)
                candidates = [(expected.path, plain)] + candidates
        else:   # the folder this command names first, the others after it
            candidates = sorted(candidates, key=lambda c: c[0].resolve() != expected.path.resolve())
        if conditions:
            candidates = [c for c in candidates if _matches(c[1], conditions)]
        out.append(CellRuns(cell, cfg, [RunFolder(p) for p, _ in candidates], [c for _, c in candidates]))
    return out


def single_folders(runs: list[CellRuns]) -> list[tuple[Cell, DictConfig, RunFolder | None]]:
    """One folder per cell for a table; several variants of a cell are an error that lists them."""
    ambiguous = [r for r in runs if len(r.folders) > 1]
    if ambiguous:
        r = ambiguous[0]
        listing = "; ".join(f"{f.path.name}: {d or 'same settings'}" for f, d in zip(r.folders, r.differences()))
        raise ConfigError(f"{len(ambiguous)} cell(s) have several runs (variants), e.g. {r.cell.name}: {listing}. "
                          f"Pick one with --where KEY=VALUE (`ibnnet status` shows them side by side)")
    return [(r.cell, r.cfg, r.folders[0] if r.folders else None) for r in runs]
