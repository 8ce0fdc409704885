"""ibnnet data check | data stylize | data shrink | data corrupt."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import ConfigError
from ..progress import add_progress_option, progress_enabled


def add_data_commands(sub) -> None:
    p = sub.add_parser("data", help="dataset utilities")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    c = dsub.add_parser("check", help="validate a dataset folder and say what to fix",
                        description="Counts per split, missing labels, image/label size mismatches, label values "
                                    "outside the known ids; exits 1 if there are problems.")
    c.add_argument("name", choices=("imagenet", "cityscapes", "gta5", "bdd100k", "mapillary", "synthia", "ade20k",
                                    "imagenet_c", "imagenet_r", "imagenet_sketch"),
                   help="which dataset's layout to check the folder against")
    c.add_argument("root", help="the dataset's folder (e.g. data/imagenet; docs/datasets.md has each layout)")
    c.add_argument("--no-label-values", action="store_true", help="skip decoding labels (faster)")
    c.add_argument("--decode-images", action="store_true",
                   help="imagenet: decode every image to find truncated files (slow: about an hour for train on "
                        "a few cores); without it each file's header is checked")
    add_progress_option(c)
    st = dsub.add_parser("stylize", help="IBN Tables 1/3 'Monet' set: a class-folder image set through CycleGAN",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Translate every image of SRC/<class>/<image> with CycleGAN's photo->Monet "
                                     "generator (Zhu et al. 2017; IBN sec. 4.1: \"style transform, which is "
                                     "realized using CycleGAN\") and write DST/<class>/<image> with the same "
                                     "names and sizes. Resumable: files already in DST are skipped.\n\n"
                                     "  ibnnet data stylize $IBNNET_DATA/imagenet/val $IBNNET_DATA/imagenet_monet/val")
    st.add_argument("src", help="class-folder image set, e.g. ImageNet val sorted into <wnid>/ folders")
    st.add_argument("dst", help="output folder (created); same class folders and file names as SRC")
    st.add_argument("--weights", help="generator file (official latest_net_G.pth format); default: download "
                                      "style_monet.pth from the CycleGAN authors' server once and cache it")
    st.add_argument("--batch-size", type=int, default=8, help="images per step (same-size images share a forward)")
    st.add_argument("--device", default=None, help="default: cuda if available")
    st.add_argument("--quality", type=int, default=95, help="JPEG quality of .jpeg/.jpg outputs")
    add_progress_option(st)
    k = dsub.add_parser("shrink", help="reduced-resolution copy of ImageNet for low-res training (FFCV-style)",
                        description="Copy SRC/{train,val}/<wnid>/* to DST at short side N (aspect kept), re-encoded "
                                    "as JPEG; resumable (done files are skipped), parallel, with a progress bar. "
                                    "Runs with data.shrunk_short_side=N (the reduced ImageNet scales: 160) train "
                                    "on SRC-N when it is complete. What changes in the data: data/README.md.")
    k.add_argument("name", choices=("imagenet",), help="the dataset to copy (ImageNet only)")
    k.add_argument("src", help="ImageNet root (with train/ and/or val/ class folders)")
    k.add_argument("dst", nargs="?", help="destination (default: SRC-N, where the training runs look)")
    k.add_argument("--short-side", type=int, required=True, metavar="N", help="shorter side in pixels (e.g. 160)")
    k.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images (default 90)")
    k.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all CPUs)")
    k.add_argument("--split", action="append", choices=("train", "val"),
                   help="only this split (repeatable; default: every split present)")
    add_progress_option(k)
    cr = dsub.add_parser("corrupt", help="make ImageNet-C from ImageNet val (15 corruptions x 5 severities)",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Write SRC's images resized to 256, centre-cropped to 224, corrupted with the "
                                     "`imagecorruptions` package and saved as JPEG quality 85 to "
                                     "DST/<corruption>/<severity>/<wnid>/<name>, the recipe and layout of the "
                                     "released ImageNet-C (Hendrycks & Dietterich 2019). Resumable (done files are "
                                     "skipped), parallel, reproducible (per-image seeds), with a progress bar. "
                                     "Close to, not byte-identical with, the released set: docs/datasets.md.\n\n"
                                     "  ibnnet data corrupt $IBNNET_DATA/imagenet/val $IBNNET_DATA/imagenet-c\n"
                                     "  ibnnet data corrupt $IBNNET_DATA/imagenet/val $IBNNET_DATA/imagenet-c --extras"
                                     "   # the 4 extras, outside the mCE")
    cr.add_argument("src", help="ImageNet val sorted into <wnid>/ class folders")
    cr.add_argument("dst", help="output folder (created), read by dataset imagenet_c")
    cr.add_argument("--corruption", action="append", dest="corruptions", metavar="NAME",
                    help="only this corruption (repeatable; default: the 15 of the mCE); also one of the 4 "
                         "extras: speckle_noise, gaussian_blur, spatter, saturate")
    cr.add_argument("--extras", action="store_true",
                    help="also the 4 extra corruptions of the release's extra.tar (alone: only those four); "
                         "reported apart, outside the mCE")
    cr.add_argument("--severity", action="append", type=int, dest="severities", metavar="S",
                    help="only this severity 1..5 (repeatable; default: all five)")
    cr.add_argument("--fraction", type=float, default=1.0,
                    help="a seeded share of each class's images (nested: 0.1 is inside 0.2), e.g. 0.1")
    cr.add_argument("--seed", type=int, default=0, help="seed of the corruptions' noise (default 0)")
    cr.add_argument("--resize", type=int, default=256, help="shorter side before the crop (default 256)")
    cr.add_argument("--crop", type=int, default=224, help="centre crop (default 224, the released set's)")
    cr.add_argument("--quality", type=int, default=85, help="JPEG quality (default 85, the released set's)")
    cr.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all CPUs)")
    cr.add_argument("--shard", metavar="K/N", help="only every N-th class folder from the K-th (0-based), to split "
                                                   "the ~90 CPU-hours over N jobs, e.g. --shard $SLURM_ARRAY_TASK_ID/32; "
                                                   "then run once without --shard to check and mark the set complete")
    add_progress_option(cr)


def run(args) -> int:
    handlers = {"stylize": cmd_stylize, "shrink": cmd_data_shrink, "corrupt": cmd_data_corrupt}
    return handlers.get(args.data_command, cmd_data_check)(args)


def cmd_data_check(args) -> int:
    from ..data.tools.check import check_dataset
    report = check_dataset(args.name, args.root, check_label_values=not args.no_label_values,
                           decode_images=args.decode_images,
                           progress=progress_enabled(args.progress))
    print(report.render())
    return 0 if report.ok else 1


def cmd_stylize(args) -> int:
    import torch

    from ..data.tools.stylize import download_style_monet, load_generator, stylize_folder
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 1 <= args.quality <= 100:
        raise ConfigError(f"--quality must be in 1..100, got {args.quality}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    progress = progress_enabled(args.progress)
    weights = args.weights or download_style_monet(progress=progress)
    generator = load_generator(weights)
    counts = stylize_folder(generator, args.src, args.dst, batch_size=args.batch_size, device=device,
                            progress=progress, quality=args.quality)
    print(f"[ibnnet] {args.dst}: {counts['written']} images written, {counts['skipped']} already there, "
          f"{counts['classes']} class folders (weights {weights})")
    return 0


def cmd_data_shrink(args) -> int:
    from ..data.tools.shrink import MARKER, shrink_imagenet
    src = Path(args.src)
    dst = Path(args.dst) if args.dst else src.with_name(f"{src.name}-{args.short_side}")
    if dst.name != f"{src.name}-{args.short_side}":
        print(f"[ibnnet] note: training runs look for the copy at {src.name}-{args.short_side} beside {src.name}; "
              f"{dst} is used only if you pass it as the dataset root", file=sys.stderr)
    results = shrink_imagenet(src, dst, args.short_side, quality=args.quality, workers=args.workers,
                              splits=tuple(args.split) if args.split else None,
                              progress=progress_enabled(args.progress))
    failed = 0
    for split, r in results.items():
        print(f"[ibnnet] {split}: {r.written} resized, {r.copied} copied (already small), {r.skipped} done before, "
              f"{len(r.failed)} failed, {r.seconds:.0f} s")
        for path, err in r.failed[:10]:
            print(f"  failed: {path}: {err}", file=sys.stderr)
        failed += len(r.failed)
    if failed:
        print(f"[ibnnet] {failed} images failed: those splits stay marked incomplete in {dst / MARKER}; "
              f"fix or remove the files and run the command again", file=sys.stderr)
        return 1
    print(f"[ibnnet] {dst}: short side {args.short_side}, JPEG quality {args.quality}, complete")
    return 0


def cmd_data_corrupt(args) -> int:
    from ..data.tools.corruptions import MARKER, corrupt_imagenet
    shard = None
    if args.shard:
        try:
            k, n = (int(v) for v in args.shard.split("/"))
        except ValueError:
            raise ConfigError(f"--shard must be K/N (e.g. 3/32), got {args.shard!r}") from None
        shard = (k, n)
    corruptions = args.corruptions
    if args.extras:   # added to --corruption; alone, the four only (the 15 are the default without it)
        from ..data.datasets.robustness import EXTRA_CORRUPTIONS
        corruptions = list(dict.fromkeys([*(corruptions or []), *EXTRA_CORRUPTIONS]))
    summary = corrupt_imagenet(args.src, args.dst, corruptions=corruptions, severities=args.severities,
                               fraction=args.fraction, seed=args.seed, resize=args.resize, crop=args.crop,
                               quality=args.quality, workers=args.workers, shard=shard,
                               progress=progress_enabled(args.progress))
    print(f"[ibnnet] {args.dst}: {summary.written} corrupted images written, {summary.skipped} done before, "
          f"{len(summary.failed)} source images failed, {summary.seconds:.0f} s")
    for path, err in summary.failed[:10]:
        print(f"  failed: {path}: {err}", file=sys.stderr)
    if summary.failed:
        print(f"[ibnnet] fix or remove the failed images and run the command again (settings: {Path(args.dst) / MARKER})",
              file=sys.stderr)
        return 1
    return 0
