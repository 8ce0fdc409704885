"""ibnnet weights list | download NAME | verify PATH."""
from __future__ import annotations

from pathlib import Path

import torch

from ..models import MODELS, RELEASES, Release
from ..models.weights import (
    WeightsError,
    adapt_state_dict,
    describe_mismatch,
    expected_hash_prefix,
    read_checkpoint,
    sha256_file,
    unwrap_state_dict,
)
from ..progress import progress_enabled


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_path(r: Release) -> Path:
    return cache_dir() / r.file


def find_release(name: str) -> Release:
    matches = [r for r in RELEASES if name in (r.model, r.name, r.file)]
    if not matches:
        known = ", ".join(sorted({r.model for r in RELEASES}))
        hint = " (it has no official weights)" if name in MODELS else ""
        raise WeightsError(f"no official weights named {name!r}{hint}; models with weights: {known}")
    return matches[0]


def cmd_list(show_all: bool) -> int:
    rows = []
    for r in RELEASES:
        path = cached_path(r)
        cached = "yes" if path.is_file() else "-"
        acc = f"{r.top1:.2f}" + (f"/{r.top5:.2f}" if r.top5 else "") if r.top1 else "-"
        where = r.url or f"manual: {r.origin} -> save as {path}"
        rows.append((r.name, r.file, r.sha256_prefix or "-", acc, cached, where))
    header = ("model.tag", "file", "sha256", "top1/top5 %", "cached", "source")
    widths = [max(len(str(x[i])) for x in rows + [header]) for i in range(5)]
    print("  ".join(h.ljust(w) for h, w in zip(header[:5], widths)) + "  " + header[5])
    for row in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row[:5], widths)) + "  " + row[5])
    if show_all:
        with_weights = {r.model for r in RELEASES}
        others = sorted(set(MODELS) - with_weights)
        print(f"\nwithout official weights ({len(others)}): " + ", ".join(others))
    print(f"\ncache: {cache_dir()}  (timm.create_model(NAME, pretrained=True) downloads and verifies)")
    return 0


def download(r: Release, force: bool = False, progress: bool | None = None) -> Path:
    """Download ``r`` into torch's hub cache and verify it; ``progress``: a bar (default: stderr is a terminal)."""
    if not r.url:
        raise WeightsError(f"{r.name}: hosted on Google Drive only, no direct download; fetch {r.file} from "
                           f"{r.origin} by hand and save it as {cached_path(r)}")
    path = cached_path(r)
    if path.is_file() and not force:
        digest = sha256_file(path)
        if r.sha256_prefix and digest.startswith(r.sha256_prefix):
            print(f"{path}: already cached, sha256 {digest[:16]}... ok")
            return path
        print(f"{path}: cached copy fails its hash check; downloading again")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # torch.hub writes to a temporary file, checks the sha256 prefix, then renames into place.
        torch.hub.download_url_to_file(r.url, str(path), hash_prefix=r.sha256_prefix,
                                       progress=progress_enabled(progress))
    except RuntimeError as e:
        raise WeightsError(f"{r.url}: {e}") from None
    except OSError as e:
        raise WeightsError(f"{r.url}: download failed ({type(e).__name__}: {e})") from None
    print(f"{path}: downloaded, sha256 prefix {r.sha256_prefix} verified")
    return path


def fitting_models(state_dict) -> list[str]:
    """Registered models whose state_dict layout the checkpoint fits (built on the meta device: no memory)."""
    import timm
    fits = []
    for name in sorted(MODELS):
        with torch.device("meta"):
            model = timm.create_model(name)
        try:
            sd = adapt_state_dict(state_dict, model)
        except WeightsError:
            return []
        if describe_mismatch(sd, model) is None:
            fits.append(name)
    return fits


def cmd_verify(path_str: str) -> int:
    path = Path(path_str)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    digest = sha256_file(path)
    prefix = expected_hash_prefix(path)
    known = next((r for r in RELEASES if r.file == path.name), None)
    print(f"{path}\n  sha256: {digest}")
    ok = True
    if prefix:
        if digest.startswith(prefix):
            print(f"  hash: matches the {prefix} in its name")
        else:
            print(f"  hash: MISMATCH, the name promises {prefix} (truncated or corrupt file)")
            ok = False
    else:
        print("  hash: the name carries no sha256 prefix; nothing to compare")
    try:
        sd = unwrap_state_dict(read_checkpoint(path), str(path))
    except WeightsError as e:
        print(f"  contents: {e}")
        return 1
    print(f"  contents: {len(sd)} tensors, {sum(v.numel() for v in sd.values()):,} values (loaded weights_only)")
    fits = fitting_models(sd)
    if fits:
        print("  fits: " + ", ".join(fits))
    else:
        print("  fits: none of the registered models exactly")
        if known:
            ok = False
    if known:
        print(f"  release: {known.name} ({known.origin})")
    return 0 if ok else 1


def run(args) -> int:
    if args.weights_command == "list":
        return cmd_list(args.all)
    if args.weights_command == "download":
        download(find_release(args.name), force=args.force, progress=args.progress)
        return 0
    return cmd_verify(args.path)
