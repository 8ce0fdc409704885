"""Experiment files: a base config, grid axes and/or explicit cases, the paper's numbers, a table layout.

```yaml
experiment: ibn_table5              # default: the file name
title: IBN-Net Table 5 - ratio of IN channels
base: ../configs/imagenet.yaml      # a run config, relative to this file
overrides: {model.name: resnet50_ibn_a}        # for every cell
scales:                              # --scale NAME; without it, the cheapest (fewest gpu_hours)
  reduced: {gpu_hours: 60, overrides: {data.class_subset: 100}}
  full: {gpu_hours: 1900}            # V100-class GPU-hours of the whole grid (sweep prints the estimate)
  # a scale's `patches` apply to matching cells after their own overrides (cells whose protocol differs
  # from the file's, e.g. another dataset, shortened their own way)
  tiny: {gpu_hours: 5, patches: [{match: {model: BN}, set: {trainer.max_epochs: 2}}]}
default_scale: reduced               # optional: only to pick among equally cheap scales (else an error)
grid:                                # cartesian product of the axes
  ratio:                             # axis name: a label -> value (axis is then the config key below) ...
    key: model.in_ratio
    values: {"0": 0.0, "0.25": 0.25, full: full}
  model:                             # ... or label -> overrides
    BN: {model.name: resnet50_bn}
cases:                               # extra cells: axis labels + overrides
  - {labels: {ratio: "1", model: IBN-a}, set: {model.in_ratio: 1.0}}
exclude: [{model: BN, ratio: full}]  # cells of the product to drop
patches: [{match: {model: BN}, set: {optim.warmup_epochs: 5}}]
moving_average_inference:           # SN cells evaluated with moving averages: which, and why (required)
  - {match: {model: SN}, why: "..."}
table: {rows: ratio, columns: eval, metrics: [top1_err, top5_err]}
paper: [{ratio: "0.25", eval: val, top1_err: 22.49, top5_err: 6.39}]
```
A list instead of a mapping gives labels equal to the values (``values: [0, 0.25]`` or ``model.in_ratio: [0, 0.25]``).
"""
from __future__ import annotations

import fnmatch
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..config.loader import ConfigError, Source, compose, dotlist_source, load_yaml
from ..config.shipped import lookup_dirs, resolve_shipped_path, shipped_dir
from ..config.validate import experiment_name_problem
from ..files import sanitize
from ..runs.folder import RunFolder, run_dir, run_id

EXPERIMENTS_DIR = shipped_dir("experiments")   # the user's ./experiments and IBNNET_EXPERIMENT_PATH come first
_TOP_KEYS = {"experiment", "title", "description", "base", "overrides", "scales", "default_scale", "grid", "cases",
             "exclude", "patches", "table", "paper", "notes", "moving_average_inference"}
_TABLE_KEYS = {"rows", "columns", "metrics", "eval_metrics", "format", "eval_labels", "row_title", "join", "select"}


@dataclass
class Cell:
    labels: dict[str, str]            # axis -> label
    overrides: dict[str, Any]         # dotted key -> value

    @property
    def name(self) -> str:
        return "_".join(f"{axis}={label}" for axis, label in self.labels.items()) or "default"


@dataclass
class Experiment:
    path: Path
    name: str
    title: str
    base: Path
    scale: str | None
    scales: dict[str, Any]
    cells: list[Cell]
    common: dict[str, Any]
    table: dict[str, Any]
    paper: list[dict[str, Any]]
    raw: DictConfig
    axes: list[str] = field(default_factory=list)
    scale_is_default: bool = False    # no --scale given: the cheapest scale was chosen
    # SN cells allowed to evaluate with moving averages: {match: {axis: label}, why: "..."}
    moving_average_inference: list[dict[str, Any]] = field(default_factory=list)

    @property
    def gpu_hours(self) -> float | None:
        """The file's estimate for the whole grid at this scale (None if it gives none)."""
        return scale_gpu_hours(self.scales.get(self.scale)) if self.scale else None

    @property
    def follows_paper_protocol(self) -> bool:
        """Whether this scale's numbers can be set against the paper's (a Δ column): a scale that changes the
        protocol (fewer classes, smaller images, fewer epochs) cannot. Default: a scale without overrides; a
        scale says ``paper_protocol: true`` when its overrides keep the protocol (ghost-batch emulation)."""
        spec = self.scales.get(self.scale) or {} if self.scale else {}
        return bool(spec.get("paper_protocol", not (spec.get("overrides") or spec.get("patches"))))

    def configs(self, overrides: tuple[str, ...] = ()) -> list[tuple[Cell, DictConfig]]:
        """Compose and validate every cell's run config (all errors surface before anything runs)."""
        out = []
        for cell in self.cells:
            out.append((cell, self.compose_cell(cell, overrides)))
        return out

    def compose_cell(self, cell: Cell, overrides: tuple[str, ...] = ()) -> DictConfig:
        label = str(self.path)
        extra = [dotlist_source(self.common, f"{label} (overrides)")]
        if self.scale:
            scale_over = dict(self.scales[self.scale].get("overrides") or {})
            extra.append(dotlist_source(scale_over, f"{label} (scale {self.scale})"))
        extra.append(dotlist_source(cell.overrides, f"{label} (cell {cell.name})"))
        identity = {"experiment": self.name, "scale": self.scale or "", "run_name": cell.name,
                    "grid": dict(cell.labels)}
        extra.append(Source(label, OmegaConf.create(identity)))
        cfg = compose(self.base, overrides, extra=extra)
        self._check_sn_inference(cell, cfg)
        return cfg

    def _check_sn_inference(self, cell: Cell, cfg: DictConfig) -> None:
        """SN cells use batch-average inference (SN sec. 3 "Inference"; the default of every trained SN model
        with a BN branch) unless the file says why not."""
        from ..config.validate import needs_batch_average
        if cfg.trainer.batch_average_batches > 0 or not needs_batch_average(cfg):
            return
        if any(_matches(cell.labels, entry["match"]) for entry in self.moving_average_inference):
            return
        raise ConfigError(
            f"{self.path}: cell {cell.name} trains an SN model with a BN branch but evaluates it with moving "
            f"averages (trainer.batch_average_batches: 0); SN cells use batch-average inference (SN sec. 3: "
            f"\"When applying SN in test, BN uses batch average after training\"). Drop the setting, or state "
            f"the reason in the file: moving_average_inference: [{{match: {dict(cell.labels)}, why: ...}}]")

    def folders(self, overrides: tuple[str, ...] = ()) -> list[tuple[Cell, DictConfig, RunFolder]]:
        return [(cell, cfg, RunFolder(run_dir(cfg))) for cell, cfg in self.configs(overrides)]

    def results_dir(self, results_root: str | Path) -> Path:
        root = Path(results_root) / sanitize(self.name)   # the name is checked at load time; this keeps it a folder
        return root if not self.scale or len(self.scales) <= 1 else root / self.scale


def resolve_experiment_path(name_or_path: str | Path) -> Path:
    """A path to an experiment file, or a name looked up in ./experiments, IBNNET_EXPERIMENT_PATH, shipped."""
    p = resolve_shipped_path(name_or_path, "experiments")
    if p.is_file():
        return p
    for d in lookup_dirs("experiments"):
        for candidate in (d / f"{name_or_path}.yaml", d / str(name_or_path)):
            if candidate.is_file():
                return candidate
    known = sorted({x.stem for d in lookup_dirs("experiments") for x in d.glob("*.yaml")})
    raise ConfigError(f"{name_or_path}: no such experiment file (known: {', '.join(known)})")


def resolve_base(path: Path, base: str) -> Path:
    """An experiment's ``base``: relative to its file; a ``../configs/NAME.yaml`` that is not there (an
    experiment written outside a project folder) is looked up like a config part: user folders, then shipped."""
    direct = (path.parent / base).resolve()
    if direct.is_file() or Path(base).is_absolute():
        return direct
    parts = Path(base).parts
    rest = parts[parts.index("configs") + 1:] if "configs" in parts else ()
    for d in lookup_dirs("configs") if rest else ():
        if (d.joinpath(*rest)).is_file():
            return d.joinpath(*rest).resolve()
    return direct


def _as_plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=False) if isinstance(node, (DictConfig, ListConfig)) else node


def _axis_cells(path: Path, axis: str, spec: Any) -> list[tuple[str, dict[str, Any]]]:
    """(label, overrides) for each value of one axis."""
    where = f"{path}: grid.{axis}"
    key = None
    values = spec
    if isinstance(spec, dict) and "values" in spec:
        unknown = set(spec) - {"key", "values"}
        if unknown:
            raise ConfigError(f"{where}: unknown entries {sorted(unknown)} (an axis has `key` and `values`)")
        key, values = spec.get("key"), spec["values"]
    elif "." in axis:
        key = axis
    if isinstance(values, list):
        if key is None:
            raise ConfigError(f"{where}: a list of values needs the config key to set (`key: ...` or a dotted "
                              f"axis name such as model.in_ratio)")
        return [(str(v), {key: v}) for v in values]
    if not isinstance(values, dict) or not values:
        raise ConfigError(f"{where}: must be a non-empty list or a mapping label -> value/overrides")
    out = []
    for label, value in values.items():
        if isinstance(value, dict):
            out.append((str(label), dict(value)))
        elif key is not None:
            out.append((str(label), {key: value}))
        else:
            raise ConfigError(f"{where}.{label}: {value!r} is a value but the axis names no config key; "
                              f"give a mapping of overrides or `key:`")
    return out


def _matches(labels: dict[str, str], match: dict[str, Any]) -> bool:
    return all(str(labels.get(k)) == str(v) or fnmatch.fnmatch(str(labels.get(k)), str(v)) for k, v in match.items())


def load_experiment(name_or_path: str | Path, scale: str | None = None) -> Experiment:
    path = resolve_experiment_path(name_or_path)
    raw = load_yaml(path)
    data = _as_plain(raw)
    if "analysis" in data and "base" not in data:   # e.g. ibn_fig5.yaml: a figure computed from trained models
        kind = data["analysis"]
        raise ConfigError(f"{path} is an analysis file, not an experiment grid (nothing to sweep, track or tabulate): "
                          f"run it with `ibnnet analyze {kind} {name_or_path}`")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown top-level keys {sorted(unknown)} (allowed: {', '.join(sorted(_TOP_KEYS))})")
    if "base" not in data:
        raise ConfigError(f"{path}: `base` (the run config every cell starts from) is required")
    base = resolve_base(path, str(data["base"]))
    if not base.is_file():
        raise ConfigError(f"{path}: base config {data['base']} not found (looked at {base})")
    scales = data.get("scales") or {}
    if scales and not isinstance(scales, dict):
        raise ConfigError(f"{path}: scales must be a mapping name -> {{gpu_hours, overrides}}")
    for sname, sval in scales.items():
        bad = set(sval or {}) - {"gpu_hours", "overrides", "description", "patches", "paper_protocol"}
        if bad:
            raise ConfigError(f"{path}: scales.{sname}: unknown keys {sorted(bad)}")
    cheapest = default_scale(path, scales, data.get("default_scale"))
    scale_is_default = scale is None and cheapest is not None
    if scale is None:
        scale = cheapest
    if scale is not None and scale not in scales:
        raise ConfigError(f"{path}: no scale {scale!r} (scales: {', '.join(scales) or 'none'})")

    grid = data.get("grid") or {}
    axes = list(grid)
    per_axis = [_axis_cells(path, axis, spec) for axis, spec in grid.items()]
    cells: list[Cell] = []
    if per_axis:
        for combo in itertools.product(*per_axis):
            labels = {axis: label for axis, (label, _) in zip(axes, combo)}
            overrides: dict[str, Any] = {}
            for _, over in combo:
                overrides.update(over)
            cells.append(Cell(labels, overrides))
    for i, case in enumerate(data.get("cases") or []):
        if not isinstance(case, dict) or set(case) - {"labels", "set"} or "labels" not in case:
            raise ConfigError(f"{path}: cases[{i}] must be {{labels: {{axis: label}}, set: {{key: value}}}}")
        labels = {str(k): str(v) for k, v in case["labels"].items()}
        for axis in labels:
            if axis not in axes:
                axes.append(axis)
        cells.append(Cell(labels, dict(case.get("set") or {})))
    if not cells:
        cells = [Cell({}, {})]
    for i, ex in enumerate(data.get("exclude") or []):
        unknown_axes = set(ex) - set(axes)
        if unknown_axes:
            raise ConfigError(f"{path}: exclude[{i}] names unknown axes {sorted(unknown_axes)}")
        cells = [c for c in cells if not _matches(c.labels, ex)]
    # the file's patches, then the chosen scale's (which may shorten cells the scale's overrides do not fit)
    scale_patches = [(f"scales.{scale}.patches", p) for p in ((scales[scale] or {}).get("patches") or [])
                     ] if scale else []
    for where, patch in [("patches", p) for p in data.get("patches") or []] + scale_patches:
        if not isinstance(patch, dict) or set(patch) != {"match", "set"}:
            raise ConfigError(f"{path}: {where}: {patch!r} must be {{match: {{axis: label}}, set: {{key: value}}}}")
        if where != "patches" and set(patch["match"]) - set(axes):
            raise ConfigError(f"{path}: {where} names unknown axes {sorted(set(patch['match']) - set(axes))}")
        for c in cells:
            if _matches(c.labels, patch["match"]):
                c.overrides.update(patch["set"])
    names = [c.name for c in cells]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{path}: cells with identical labels: {dupes}")
    moving_average = list(data.get("moving_average_inference") or [])
    for i, entry in enumerate(moving_average):
        where = f"{path}: moving_average_inference[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"match", "why"} or not isinstance(entry["match"], dict):
            raise ConfigError(f"{where} must be {{match: {{axis: label}}, why: <the reason>}}")
        if not isinstance(entry["why"], str) or not entry["why"].strip():
            raise ConfigError(f"{where}: `why` must state the reason these SN cells use moving averages")
        if set(entry["match"]) - set(axes):
            raise ConfigError(f"{where} names unknown axes {sorted(set(entry['match']) - set(axes))}")
        if not any(_matches(c.labels, entry["match"]) for c in cells):
            raise ConfigError(f"{where} matches no cell")

    table = dict(data.get("table") or {})
    bad = set(table) - _TABLE_KEYS
    if bad:
        raise ConfigError(f"{path}: table: unknown keys {sorted(bad)} (allowed: {', '.join(sorted(_TABLE_KEYS))})")
    if table.get("select", "final") not in ("final", "best"):
        raise ConfigError(f"{path}: table.select={table['select']!r} must be 'final' or 'best'")
    for k in ("rows", "columns"):
        keys = table.get(k)
        for key in keys if isinstance(keys, list) else [keys]:
            if key is not None and key not in axes + ["eval"]:
                raise ConfigError(f"{path}: table.{k}={key!r} is neither a grid axis ({', '.join(axes)}) nor 'eval'")
    eval_metrics = table.get("eval_metrics") or {}
    if not isinstance(eval_metrics, dict) or not all(isinstance(v, list) and v for v in eval_metrics.values()):
        raise ConfigError(f"{path}: table.eval_metrics must map evaluation-set names to metric lists, "
                          f"e.g. {{imagenet_c: [mce, relative_mce]}}")
    paper = list(data.get("paper") or [])
    for i, entry in enumerate(paper):
        names_a_cell = isinstance(entry, dict) and (not axes or any(k in axes + ["eval"] for k in entry))
        if not names_a_cell:
            raise ConfigError(f"{path}: paper[{i}] must name the cell by its axis labels (axes: {', '.join(axes)})")

    name = str(data.get("experiment") or path.stem)
    problem = experiment_name_problem(name)
    if problem:
        stem = "" if data.get("experiment") else "; it is the file's name (the file has no `experiment:` key): set one"
        raise ConfigError(f"{path}: experiment={name!r}: {problem}{stem}")
    return Experiment(path=path, name=name, title=str(data.get("title") or ""),
                      base=base, scale=scale, scales=scales, cells=cells, common=dict(data.get("overrides") or {}),
                      table=table, paper=paper, raw=raw, axes=axes, scale_is_default=scale_is_default,
                      moving_average_inference=moving_average)


def scale_gpu_hours(spec: Any) -> float | None:
    """A scale's ``gpu_hours`` (None if it gives none)."""
    hours = (spec or {}).get("gpu_hours") if isinstance(spec, dict) else None
    return float(hours) if isinstance(hours, (int, float)) and not isinstance(hours, bool) else None


def default_scale(path: Path, scales: dict[str, Any], explicit: str | None) -> str | None:
    """The scale used without ``--scale``: the cheapest (fewest ``gpu_hours``; the first of equally cheap
    ones), so that no command starts the paper-size grid by accident. ``default_scale`` in the file may
    only choose among equally cheap scales; naming a dearer one is an error. Scales without
    ``gpu_hours`` are never the default unless no scale has any (then: ``default_scale`` or the first)."""
    if not scales:
        if explicit:
            raise ConfigError(f"{path}: default_scale {explicit!r} but the file has no scales")
        return None
    if explicit is not None and explicit not in scales:
        raise ConfigError(f"{path}: default_scale {explicit!r} is not one of the scales ({', '.join(scales)})")
    costs = {name: scale_gpu_hours(spec) for name, spec in scales.items()}
    known = {name: h for name, h in costs.items() if h is not None}
    if not known:
        return explicit or next(iter(scales))
    low = min(known.values())
    if explicit is not None:
        if costs[explicit] != low:
            cheapest = next(n for n, h in known.items() if h == low)
            cost = f"{costs[explicit]:g} GPU-hours" if costs[explicit] is not None else "no gpu_hours"
            raise ConfigError(f"{path}: default_scale {explicit!r} ({cost}) is not the cheapest scale ({cheapest!r}, "
                              f"{low:g} GPU-hours): without --scale the cheapest is used; remove default_scale "
                              f"and pass --scale {explicit} when you mean it")
        return explicit
    return next(n for n, h in known.items() if h == low)


def describe_cell(cell: Cell, cfg: DictConfig) -> str:
    """The cell's own settings as its run sees them (``key=value ...``): values are read from the cell's
    composed config, so interpolations such as ``${scale}`` or ``${paths.data}`` show what they resolve to."""
    parts = []
    for key in cell.overrides:
        value = OmegaConf.select(cfg, key, default=cell.overrides[key])
        parts.append(f"{key}={show_value(value)}")
    return " ".join(parts) or "(base config)"


def show_value(value: Any) -> str:
    """A config value on one line: scalars as they are, lists and mappings in YAML flow style."""
    import yaml
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 16).strip()
    return str(value)


def select(cells_with: list[tuple], pattern: str | None) -> list[tuple]:
    """Keep cells whose name or run id matches the glob ``pattern`` (substring match without wildcards)."""
    if not pattern:
        return cells_with
    glob = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
    return [t for t in cells_with if fnmatch.fnmatch(t[0].name, glob) or fnmatch.fnmatch(run_id(t[1]), glob)]
