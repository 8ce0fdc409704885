"""Composing, validating and saving run configurations.

A config file may start with ``defaults``: a list of parts, each ``group: name`` (the file
``configs/<group>/<name>.yaml`` placed under ``group``) or a path to another full config.  The file's own
keys come next, then ``key=value`` overrides.  Every error names the source (file or "command line"),
the key and the value.
"""
from __future__ import annotations

import copy
import difflib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationResolutionError,
    OmegaConfBaseException,
    ValidationError,
)

from ..errors import ConfigError
from .schema import RunConfig
from .shipped import lookup_dirs, resolve_shipped_path, shipped_dir

CONFIG_DIR = shipped_dir("configs")   # the shipped parts; the user's ./configs and IBNNET_CONFIG_PATH come first
PART_GROUPS = ("model", "data", "optim", "trainer", "logger", "launcher", "segmentation", "paths")


@dataclass
class Source:
    label: str      # file path or "command line"
    cfg: DictConfig  # rooted at the run config's top level
    # ``data.val.0.num_samples=64``: keys that go through a list element, set after ``cfg`` is merged (a
    # merge would replace the whole list); the other elements and the element's other keys are kept.
    element_updates: tuple[tuple[str, Any], ...] = ()


def search_dirs(near: Path | None = None) -> list[Path]:
    """Folders holding ``<group>/<name>.yaml`` parts: next to the file, the user's, the shipped ones."""
    dirs = []
    if near is not None:
        dirs += [near / "configs", near.parent / "configs"]
    dirs += lookup_dirs("configs")
    seen, out = set(), []
    for d in dirs:
        if d.resolve() not in seen and d.is_dir():
            seen.add(d.resolve())
            out.append(d)
    return out


# libyaml's parser where PyYAML has it (same safe-load semantics, ~10x faster): expanding a grid reads
# the same parts once per cell.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# (resolved path, mtime_ns, size) -> parsed data; an edited file has a new key.
_parsed: dict[tuple[str, int, int], Any] = {}


def _parse_yaml(path: Path) -> Any:
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _parsed:
        try:
            _parsed[key] = yaml.load(path.read_text(), Loader=_SafeLoader)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return copy.deepcopy(_parsed[key])


def load_yaml(path: str | Path) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    data = _parse_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys, got {type(data).__name__}")
    try:
        return OmegaConf.create(data)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {e}") from None


def find_part(group: str, name: str, near: Path | None) -> Path:
    for d in search_dirs(near):
        candidate = d / group / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    available = sorted({p.stem for d in search_dirs(near) for p in (d / group).glob("*.yaml")})
    hint = difflib.get_close_matches(name, available, n=3)
    raise ConfigError(f"no config part {group}/{name}.yaml"
                      + (f"; did you mean {', '.join(hint)}?" if hint else f"; available: {', '.join(available)}"))


def file_sources(path: str | Path, _stack: tuple[Path, ...] = ()) -> list[Source]:
    """The sources a config file contributes, its ``defaults`` first, in merge order."""
    path = Path(path)
    if path.resolve() in _stack:
        raise ConfigError(f"{path}: includes itself through defaults ({' -> '.join(map(str, _stack))})")
    cfg = load_yaml(path)
    defaults = cfg.pop("defaults", None) if "defaults" in cfg else None
    sources: list[Source] = []
    if defaults is not None:
        if not isinstance(defaults, ListConfig):
            raise ConfigError(f"{path}: defaults must be a list of `group: name` entries or file paths")
        for entry in defaults:
            if isinstance(entry, str):
                inc = (path.parent / entry) if not Path(entry).is_absolute() else Path(entry)
                sources += file_sources(inc, _stack + (path.resolve(),))
            elif isinstance(entry, DictConfig) and len(entry) == 1:
                group, name = next(iter(entry.items()))
                if group not in PART_GROUPS:
                    raise ConfigError(f"{path}: defaults entry {group}: {name}: unknown group {group!r} "
                                      f"(groups: {', '.join(PART_GROUPS)})")
                part = find_part(group, str(name), path.parent)
                part_sources = file_sources(part, _stack + (path.resolve(),))
                sources += [Source(s.label, OmegaConf.create({group: s.cfg})) for s in part_sources]
            else:
                raise ConfigError(f"{path}: defaults entry {entry!r} must be `group: name` or a file path")
    sources.append(Source(str(path), cfg))
    return sources


def override_source(overrides: Sequence[str], label: str = "command line") -> Source:
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"{label}: overrides must look like key=value, got {bad[0]!r}")
    dotted = {}
    for o in overrides:
        key, value = o.split("=", 1)
        try:
            dotted[key.strip()] = yaml.safe_load(io.StringIO(value)) if value != "" else ""
        except yaml.YAMLError:
            dotted[key.strip()] = value
    return dotlist_source(dotted, label)


_INDEX = re.compile(r"\[(\d+)\]")


def key_parts(key: str) -> list[str]:
    """``data.val.0.num_samples`` or ``data.val[0].num_samples`` -> ``['data', 'val', '0', 'num_samples']``."""
    return _INDEX.sub(r".\1", key.strip()).split(".")


def is_element_key(key: str) -> bool:
    """Whether a dotted key goes through a list element (a part that is an index)."""
    return any(p.isdigit() for p in key_parts(key)[1:])


def dotlist_source(dotted: Mapping[str, Any], label: str) -> Source:
    """A source from ``{dotted key: value}``; keys through list elements become element updates."""
    plain = {k: v for k, v in dotted.items() if not is_element_key(k)}
    elements = tuple((".".join(key_parts(k)), v) for k, v in dotted.items() if is_element_key(k))
    return Source(label, dotlist_to_config(plain, label), elements)


def dotlist_to_config(dotted: Mapping[str, Any], label: str) -> DictConfig:
    cfg = OmegaConf.create({})
    for key, value in dotted.items():
        try:
            OmegaConf.update(cfg, key, value, merge=False, force_add=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{label}: {key}={value!r}: {e}") from None
    return cfg


_SCHEMA: DictConfig | None = None


def _schema_copy() -> DictConfig:
    """A fresh config of the schema's defaults: a deep copy of one built once (OmegaConf.structured walks
    every dataclass again, ~7x slower, and a grid composes one config per cell)."""
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = OmegaConf.structured(RunConfig)
    return copy.deepcopy(_SCHEMA)


def merge_sources(sources: Iterable[Source]) -> DictConfig:
    cfg = _schema_copy()
    for src in sources:
        try:
            # In place: OmegaConf.merge would deep-copy the whole config for every source (most of the
            # time of expanding a grid).
            cfg.merge_with(src.cfg)
        except (ConfigKeyError, ValidationError) as e:
            raise ConfigError(_describe(src.label, e, src.cfg)) from None
        except (OmegaConfBaseException, TypeError, ValueError) as e:
            # e.g. "Cannot merge incompatible container types" (a ConfigTypeError from merge_with, a
            # TypeError/ValueError from OmegaConf.merge): say which key puts a mapping over a list
            clash = _describe_container_clash(src.label, cfg, src.cfg)
            raise ConfigError(clash or f"{src.label}: {e}") from None
        for key, value in src.element_updates:
            set_element(cfg, key, value, src.label)
    return cfg


def set_element(cfg: DictConfig, key: str, value: Any, label: str) -> None:
    """``key=value`` where ``key`` goes through list elements (``data.val.0.num_samples``), in place.

    Only that element's key changes; an index past the end or a part that does not exist is a
    :class:`ConfigError` naming the key."""
    parts = key_parts(key)
    node: Any = cfg
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the config"
        last = i == len(parts) - 1
        if isinstance(node, ListConfig):
            if not part.isdigit():
                raise ConfigError(f"{label}: {key}={value!r}: {where} is a list; address an element by its "
                                  f"index ({where}.0.{part}) or give the whole list ({where}=[...])")
            if int(part) >= len(node):
                raise ConfigError(f"{label}: {key}={value!r}: index {part} is out of range: {where} has "
                                  f"{len(node)} element{'s' if len(node) != 1 else ''} (indices from 0)")
            if not last:
                node = node[int(part)]
        elif isinstance(node, DictConfig):
            if part not in node:
                break   # omegaconf's own error below names the key and suggests the right one
            if not last:
                node = node[part]
        else:
            raise ConfigError(f"{label}: {key}={value!r}: {where} is a single value ({node!r}), not a list or "
                              f"mapping")
    try:
        OmegaConf.update(cfg, ".".join(parts), value, merge=True)
    except (ConfigKeyError, ConfigAttributeError) as e:
        raise ConfigError(f"{label}: unknown key '{key}' ({str(e).splitlines()[0]})") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{label}: bad value for '{key}' ({value!r}): {str(e).splitlines()[0]}") from None


def _describe_container_clash(label: str, cfg: Any, src: Any, prefix: str = "") -> str | None:
    """Where ``src`` puts a mapping over a list (or the reverse), e.g. ``data.val.x=1``."""
    if isinstance(src, DictConfig) and isinstance(cfg, DictConfig):
        for k in src:
            if k in cfg:
                found = _describe_container_clash(label, cfg._get_node(k), src._get_node(k), f"{prefix}{k}.")
                if found:
                    return found
        return None
    key = prefix.rstrip(".")
    if isinstance(src, DictConfig) and isinstance(cfg, ListConfig):
        sub = str(next(iter(src), "KEY"))
        if re.fullmatch(r"-\d+", sub):
            return (f"{label}: '{key}.{sub}': negative indices are not supported; {key} has {len(cfg)} "
                    f"element{'s' if len(cfg) != 1 else ''}, indices from 0")
        return (f"{label}: '{key}' is a list, so '{key}.{sub}' names no element; set one element with "
                f"{key}.<index>.{sub}=... (indices from 0) or the whole list with {key}=[...]")
    if isinstance(src, ListConfig) and isinstance(cfg, DictConfig):
        return f"{label}: '{key}' is a mapping, not a list; set its keys with {key}.KEY=VALUE"
    return None


def _describe(label: str, e: OmegaConfBaseException, src: DictConfig) -> str:
    key = getattr(e, "full_key", None) or "?"
    msg = str(e).split("\n")[0]
    if isinstance(e, ConfigKeyError):
        return f"{label}: unknown key '{key}' ({msg})"
    value = OmegaConf.select(src, key, default=None, throw_on_missing=False) if key != "?" else None
    return f"{label}: bad value for '{key}'" + (f" ({value!r})" if value is not None else "") + f": {msg}"


def source_of(key: str, sources: Sequence[Source]) -> str:
    """The last source that sets ``key`` (where a wrong value came from)."""
    marker = object()
    dotted = ".".join(key_parts(key))
    for src in reversed(sources):
        for k, _ in src.element_updates:
            if dotted == k or dotted.startswith(k + ".") or k.startswith(dotted + "."):
                return src.label
        if OmegaConf.select(src.cfg, key, default=marker, throw_on_missing=False) is not marker:
            return src.label
    return "built-in defaults"


def group_overrides(overrides: Sequence[str], near: Path | None) -> tuple[list[Source], list[str]]:
    """``launcher=slurm`` picks the part configs/launcher/slurm.yaml, as a defaults entry would."""
    parts, rest = [], []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.strip() in PART_GROUPS and value and not value.lstrip().startswith(("{", "[")):
            part = find_part(key.strip(), value.strip(), near)
            parts += [Source(f"command line {o} ({s.label})", OmegaConf.create({key.strip(): s.cfg}))
                      for s in file_sources(part)]
        else:
            rest.append(o)
    return parts, rest


def compose(path: str | Path | None, overrides: Sequence[str] = (), extra: Sequence[Source] = ()) -> DictConfig:
    """Compose, type-check, resolve and validate a run config; raises :class:`ConfigError`.

    ``overrides`` are ``key=value`` (dotted keys) or ``group=name`` to swap a whole part
    (``launcher=slurm``, ``trainer=gpu_fast``).
    """
    from .validate import fill_defaults, validate

    if path is not None:
        path = resolve_shipped_path(path, "configs")
    sources = (file_sources(path) if path is not None else []) + list(extra)
    parts, overrides = group_overrides(overrides, Path(path).parent if path is not None else None)
    sources += parts
    if overrides:
        sources.append(override_source(overrides))
    cfg = merge_sources(sources)
    try:
        OmegaConf.resolve(cfg)
    except InterpolationResolutionError as e:
        key = getattr(e, "full_key", "?")
        raise ConfigError(f"{source_of(key, sources)}: cannot resolve '{key}': {str(e).splitlines()[0]}") from None
    fill_defaults(cfg)
    problems = validate(cfg)
    if problems:
        lines = [f"{source_of(k, sources)}: {k}={v!r}: {msg}" for k, v, msg in problems]
        raise ConfigError("invalid configuration: " + lines[0] if len(lines) == 1
                          else "invalid configuration:\n  " + "\n  ".join(lines))
    OmegaConf.set_readonly(cfg, True)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True, sort_keys=False)


def load_run_config(path: str | Path) -> DictConfig:
    """A resolved ``config.yaml`` from a run folder, re-validated against the current schema."""
    return compose(path)


def to_plain(cfg: DictConfig | ListConfig) -> Any:
    return OmegaConf.to_container(cfg, resolve=True)
