"""GPU acceptance run: every CUDA-specific claim of the package checked in one process, reported in one table.

Sections (budgeted for one H100 so that ``bench/gpu_acceptance.sh``, pytest included, stays under 8 minutes):

  parity     every norm layer x {fp32, bf16, fp16} x {NCHW, channels-last}, fused and native kernel, forward
             and backward, against float64 on the same (dtype-rounded) input; bound derived per row (below)
  fp16scale  fp16 forward/backward with the upstream gradient scaled by 2^16 (GradScaler's initial scale):
             gradients finite and, unscaled, within the fp16 parity bound; the largest finite scale reported
  train      30 SGD steps of resnet50_ibn_a / resnet50_sn / torchvision resnet50 under fp32 (TF32, the
             project default), bf16 and fp16 (GradScaler) autocast, NCHW and channels-last, plus the
             Inductor-compiled step in bf16 channels-last: finite loss, ms/step vs torchvision, host-device
             syncs per step (torch.cuda.set_sync_debug_mode("warn"), warnings counted)
  evalmem    peak CUDA memory of one 2048x1024 multi-scale (0.5-1.75, flip) evaluation of the segmentation
             task (resnet50_ibn_a, output stride 8, configs/segmentation.yaml), fp32 and bf16 autocast
  loader     images/s of the ImageNet training loader (bench/loader.py's JPEGs, our pipeline) against the
             GPU's images/s of the bf16 channels-last resnet50_ibn_a step measured in ``train``
  multigpu   (2+ GPUs, NCCL) DDP evaluation == single process; SyncBN 2x2 == BN 1x4 (also inside IBN); SN
             batch-average buffers equal on every rank; a rank that raises ends the job within the timeout

Parity bound. For a quantity q (output, input gradient, parameter gradients and running statistics) the error
is max|q - q64| / max|q64| against the float64 result of the same layer on the same input (the input rounded
to the dtype first, so input rounding is not counted). kappa = err(plain PyTorch fp32) / eps(fp32) is how many
float32 epsilons PyTorch's own float32 ops (the native kernel, cuDNN/F.batch_norm where one exists) lose on
this input: the problem's conditioning. A kernel in dtype d must satisfy err <= 8 * max(kappa, 1) * eps(d):
the same conditioning, paid in d's epsilon, with 8 epsilons (16 roundings to nearest) for the few roundings a
half-precision pass adds (centring, scale, shift, output cast). For fp32 this says "within 8x of PyTorch's
own float32 error".

    bash bench/gpu_acceptance.sh                               # the one command (pytest -m gpu + this script)
    python bench/gpu_acceptance.py --dry-run                   # the plan, nothing run
    python bench/gpu_acceptance.py --device cpu --tiny         # CPU smoke test of every section at tiny sizes
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Sizes: FULL is budgeted for one H100; TINY runs every code path on a CPU in about a minute.
FULL = SimpleNamespace(
    parity_shape=(9, 64, 28, 28),     # 9 images: ghost batches of 2 leave a smaller last one
    fp16_shape=(8, 64, 56, 56),       # a ResNet layer1-sized activation
    models=("resnet50_ibn_a", "resnet50_sn"), baseline="resnet50",
    batch=32, size=224, steps=30, warmup=5, timed=20, sync_steps=5,
    compile=True, compile_precision="bf16",
    seg_model="resnet50_ibn_a", eval_hw=(1024, 2048), eval_scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), eval_flip=True,
    loader_images=128, loader_samples=1024, loader_rounds=3,
    ddp_images=7, ddp_hw=(256, 512), ddp_model="resnet18_ibn_a", pg_timeout_s=30,
)
TINY = SimpleNamespace(
    parity_shape=(5, 8, 6, 7), fp16_shape=(4, 8, 16, 16),
    models=("resnet18_ibn_a", "resnet18_sn"), baseline="resnet18",
    batch=2, size=32, steps=4, warmup=1, timed=2, sync_steps=1,
    compile=False, compile_precision="bf16",
    seg_model="resnet18_ibn_a", eval_hw=(64, 128), eval_scales=(0.5, 1.0), eval_flip=True,
    loader_images=8, loader_samples=16, loader_rounds=1,
    ddp_images=5, ddp_hw=(32, 64), ddp_model="resnet18_ibn_a", pg_timeout_s=10,
)

# Estimated seconds per section on one H100 with the FULL sizes (compile dominates ``train``).
ESTIMATE_S = {"parity": 25, "fp16scale": 15, "train": 260, "evalmem": 25, "loader": 35, "multigpu": 90}
PYTEST_ESTIMATE_S = 60
SECTIONS = tuple(ESTIMATE_S)
SAFETY = 8
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def layer_factories():
    """The norm layers the package ships, as in tests/test_kernels.py (ghost batches of 2)."""
    from ibnnet.layers import IBN, GhostBatchNorm2d, InstanceNorm2d, PartialInstanceNorm2d, SwitchNorm2d
    return {
        "ibn": lambda c: IBN(c, 0.5),
        "ibn_ghost": lambda c: IBN(c, 0.5, bn_layer=lambda k: GhostBatchNorm2d(k, ghost_batch_size=2)),
        "sn": lambda c: SwitchNorm2d(c),
        "sn_ghost": lambda c: SwitchNorm2d(c, ghost_batch_size=2),
        "in": lambda c: InstanceNorm2d(c, affine=True),
        "ghost_bn": lambda c: GhostBatchNorm2d(c, ghost_batch_size=2),
        "partial_in": lambda c: PartialInstanceNorm2d(c, 0.5),
    }


LAYER_NAMES = ("ibn", "ibn_ghost", "sn", "sn_ghost", "in", "ghost_bn", "partial_in")


def row(section, check, measured, bound, result):
    return {"section": section, "check": check, "measured": measured, "bound": bound, "result": result}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------------
# Kernel parity against float64


def randomized_layer(name: str, c: int, device) -> nn.Module:
    layer = layer_factories()[name](c)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 1.5 + 0.25)
    return layer.to(device).train()


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max|a - ref| / max|ref| in float64 (inf when a is not finite)."""
    a = a.double()
    if not torch.isfinite(a).all():
        return math.inf
    scale = ref.abs().max().item()
    return (a - ref).abs().max().item() / (scale if scale > 0 else 1.0)


def run_layer(layer, x, gy, kind):
    """Forward + backward with ``kind`` forced; (y, x.grad, [parameter grads + float buffers])."""
    from ibnnet.layers import use_kernel
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with use_kernel(kind):
        y = layer(x)
    y.backward(gy)
    extra = [p.grad for p in layer.parameters()] + [b for b in layer.buffers() if b.is_floating_point()]
    return y.detach(), x.grad, extra


def errors(result, ref) -> dict[str, float]:
    y, gx, extra = result
    y64, gx64, extra64 = ref
    return {"y": rel_err(y, y64), "gx": rel_err(gx, gx64),
            "gp": max((rel_err(a, b) for a, b in zip(extra, extra64)), default=0.0)}


def parity_case(name: str, dtype: torch.dtype, channels_last: bool, device, shape) -> dict:
    """Fused and native kernel of one layer in ``dtype`` against float64; errors, bounds and the layout kept."""
    torch.manual_seed(0)
    n, c, h, w = shape
    x = (torch.randn(n, c, h, w, device=device) * 2 + 1).to(dtype)
    gy = torch.randn(n, c, h, w, device=device).to(dtype)
    base = randomized_layer(name, c, device)
    ref = run_layer(copy.deepcopy(base).double(), x.double(), gy.double(), "native")
    # Plain PyTorch float32 on the same rounded input: the conditioning kappa of this problem.
    base32 = errors(run_layer(copy.deepcopy(base), x.float(), gy.float(), "native"), ref)
    eps32, eps = torch.finfo(torch.float32).eps, torch.finfo(dtype).eps
    bounds = {q: SAFETY * max(e / eps32, 1.0) * eps for q, e in base32.items()}
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xl, gyl = x.contiguous(memory_format=fmt), gy.contiguous(memory_format=fmt)
    out = {"bounds": bounds, "baseline_fp32": base32, "kernels": {}}
    for kind in ("fused", "native"):
        res = run_layer(copy.deepcopy(base), xl, gyl, kind)
        layout_ok = (not channels_last) or (res[0].is_contiguous(memory_format=torch.channels_last)
                                            and res[1].is_contiguous(memory_format=torch.channels_last))
        errs = errors(res, ref)
        ok = layout_ok and res[0].dtype == dtype and all(errs[q] <= bounds[q] for q in errs)
        out["kernels"][kind] = {"errors": errs, "layout_kept": layout_ok, "ok": ok}
    return out


def fmt_errs(e: dict[str, float]) -> str:
    return " ".join(f"{q} {v:.1e}" for q, v in e.items())


def section_parity(dev, sz, args):
    rows = []
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")   # bmm inside the kernels: no TF32 in the fp32 rows
    try:
        for name in LAYER_NAMES:
            for dname in ("fp32", "bf16", "fp16"):
                dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dname]
                for cl in (False, True):
                    r = parity_case(name, dtype, cl, dev, sz.parity_shape)
                    k = r["kernels"]
                    measured = "; ".join(f"{kind}: {fmt_errs(v['errors'])}"
                                         + ("" if v["layout_kept"] else " LAYOUT LOST") for kind, v in k.items())
                    kappa = max(r["baseline_fp32"].values()) / torch.finfo(torch.float32).eps
                    bound = f"{fmt_errs(r['bounds'])} (fp32 kappa {kappa:.1f})"
                    ok = all(v["ok"] for v in k.values())
                    rows.append(row("parity", f"{name} {dname} {'CL' if cl else 'NCHW'}", measured, bound,
                                    "PASS" if ok else "FAIL"))
    finally:
        torch.set_float32_matmul_precision(saved)
    return rows


# ----------------------------------------------------------------------------------------------------------
# fp16 with scaled gradients


def fp16_scaled_case(name: str, kind: str, device, shape, scale_exp: int = 16) -> dict:
    """Upstream gradient of a per-pixel loss averaged over (N, H, W) (as a segmentation cross-entropy),
    times 2^scale_exp: finite gradients, and unscaled within the fp16 parity bound of float64.
    Also the largest exponent (16..30) at which every gradient stays finite."""
    torch.manual_seed(0)
    n, c, h, w = shape
    x = (torch.randn(n, c, h, w, device=device) * 2 + 1).half()
    g = torch.randn(n, c, h, w, device=device) / (n * h * w)   # d(loss)/dy, float32
    base = randomized_layer(name, c, device)
    ref = run_layer(copy.deepcopy(base).double(), x.double(), g.double(), "native")
    base32 = errors(run_layer(copy.deepcopy(base), x.float(), g, "native"), ref)
    eps32, eps16 = torch.finfo(torch.float32).eps, torch.finfo(torch.float16).eps
    bounds = {q: SAFETY * max(e / eps32, 1.0) * eps16 for q, e in base32.items() if q != "y"}

    def scaled(k):
        y, gx, extra = run_layer(copy.deepcopy(base), x, (g * 2.0 ** k).half(), kind)
        grads = [gx] + [t for t in extra[:len(list(base.parameters()))]]
        finite = all(bool(torch.isfinite(t).all()) for t in grads if t is not None)
        return finite, gx, extra

    finite, gx, extra = scaled(scale_exp)
    nparams = len(list(base.parameters()))
    unscaled = (gx.double() / 2.0 ** scale_exp, [t.double() / 2.0 ** scale_exp for t in extra[:nparams]])
    errs = {"gx": rel_err(unscaled[0], ref[1]) if finite else math.inf,
            "gp": max((rel_err(a, b) for a, b in zip(unscaled[1], ref[2][:nparams])), default=0.0) if finite
            else math.inf}
    # Headroom: the largest scale at which the layer's gradients stay finite, and the largest at which the
    # upstream gradient itself is still representable in fp16 (beyond it GradScaler skips the step anyway).
    top = representable = scale_exp - 1
    for k in range(scale_exp, 41):
        if not bool(torch.isfinite((g * 2.0 ** k).half()).all()):
            break
        representable = k
        if top == k - 1 and scaled(k)[0]:
            top = k
    ok = finite and all(errs[q] <= bounds[q] for q in errs)
    return {"finite": finite, "errors": errs, "bounds": bounds, "max_finite_exp": top,
            "representable_exp": representable, "ok": ok}


def section_fp16scale(dev, sz, args):
    rows = []
    for name in LAYER_NAMES:
        cells, bound, ok = [], "", True
        for kind in ("fused", "native"):
            r = fp16_scaled_case(name, kind, dev, sz.fp16_shape)
            cells.append(f"{kind}: {'finite' if r['finite'] else 'NOT FINITE'}, unscaled {fmt_errs(r['errors'])}, "
                         f"finite up to 2^{r['max_finite_exp']} (upstream gradient representable up to "
                         f"2^{r['representable_exp']})")
            bound, ok = fmt_errs(r["bounds"]), ok and r["ok"]
        rows.append(row("fp16scale", f"{name} fp16 grad x2^16 {tuple(sz.fp16_shape)}", "; ".join(cells), bound,
                        "PASS" if ok else "FAIL"))
    return rows


# ----------------------------------------------------------------------------------------------------------
# Training steps


def build_model(name: str) -> nn.Module:
    import timm
    import torchvision
    if name in ("resnet50", "resnet18"):
        return getattr(torchvision.models, name)()
    return timm.create_model(name)


def train_run(name: str, precision: str, channels_last: bool, compiled: bool, dev, sz) -> dict:
    """``sz.steps`` SGD steps on one fixed random batch: warm-up, timed steps, then steps with sync counting."""
    from ibnnet.models.compiling import compile_network
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(name).to(dev).train().to(memory_format=fmt)
    if compiled:
        compile_network(model, dev.type)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    ac = PRECISIONS[precision]
    scaler = torch.amp.GradScaler(dev.type, init_scale=2.0 ** 16) if precision == "fp16" else None
    x = torch.randn(sz.batch, 3, sz.size, sz.size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (sz.batch,), device=dev)
    loss_fn = nn.CrossEntropyLoss()
    losses = []

    def step():
        with torch.autocast(dev.type, dtype=ac or torch.float32, enabled=ac is not None):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        losses.append(loss.detach())   # no .item(): that would be a sync of its own

    t0 = time.perf_counter()
    for _ in range(sz.warmup):
        step()
    sync(dev)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(sz.timed):
        step()
    sync(dev)
    step_s = (time.perf_counter() - t0) / sz.timed
    syncs = None
    if dev.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(sz.sync_steps):
                    step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        sync(dev)
        syncs = sum("synchroniz" in str(w.message) for w in caught) / sz.sync_steps
    else:
        for _ in range(sz.sync_steps):
            step()
    remaining = sz.steps - sz.warmup - sz.timed - sz.sync_steps
    for _ in range(max(0, remaining)):
        step()
    all_losses = torch.stack(losses).float().cpu()
    out = {"steps": len(losses), "finite": bool(torch.isfinite(all_losses).all()), "step_s": step_s,
           "warm_s": warm_s, "syncs": syncs, "first_loss": float(all_losses[0]), "last_loss": float(all_losses[-1])}
    if scaler is not None:
        out["skipped"] = round(math.log2(2.0 ** 16 / scaler.get_scale()))
    if dev.type == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    del model, opt
    return out


def section_train(dev, sz, args, shared):
    saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    # The project's defaults for a non-deterministic CUDA run (ibnnet.runs.runner.apply_numerics).
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    configs = [(p, cl, False) for p in PRECISIONS for cl in (False, True)]
    if sz is TINY:   # a CPU smoke test: each precision and layout once (CPU fp16 convolutions are slow)
        configs = [("fp32", False, False), ("bf16", True, False), ("fp16", False, False)]
    if sz.compile and not args.no_compile:
        configs.append((sz.compile_precision, True, True))
    names = [sz.baseline] + list(sz.models)
    rows = []
    try:
        for precision, cl, compiled in configs:
            results = {}
            for name in names:
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(dev)
                results[name] = train_run(name, precision, cl, compiled, dev, sz)
            base = results[sz.baseline]["step_s"]
            label = f"{precision} {'CL' if cl else 'NCHW'}{' compiled' if compiled else ''}"
            for name, r in results.items():
                if name == sz.models[0] and precision == "bf16" and cl and not compiled:
                    shared["gpu_images_per_s"] = sz.batch / r["step_s"]
                    shared["gpu_rate_from"] = f"{name} {label}"
                syncs = "n/a on CPU" if r["syncs"] is None else f"{r['syncs']:.1f} syncs/step"
                extra = f", {r['skipped']} steps skipped by GradScaler" if "skipped" in r else ""
                peak = f", peak {r['peak_mib']:.0f} MiB" if "peak_mib" in r else ""
                first = f", first {r['warm_s']:.0f} s (compile)" if compiled else ""
                measured = (f"{r['step_s'] * 1e3:.1f} ms/step ({r['step_s'] / base:.2f}x torchvision), {syncs}, "
                            f"loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}{extra}{peak}{first}")
                ok = r["finite"] and r["steps"] == sz.steps
                rows.append(row("train", f"{name} {label}, batch {sz.batch} @ {sz.size} px, {r['steps']} steps",
                                measured, "finite loss; time/syncs reported", "PASS" if ok else "FAIL"))
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved[1], saved[2]
    return rows


# ----------------------------------------------------------------------------------------------------------
# Multi-scale evaluation memory


def segmentation_task(model: str, tmp: Path):
    """The project's SegmentationTask from configs/segmentation.yaml (no pretrained download)."""
    from omegaconf import OmegaConf

    from ibnnet.config import compose
    from ibnnet.tasks.segmentation import SegmentationTask
    cfg = compose(REPO / "configs" / "segmentation.yaml",
                  [f"model.name={model}", "model.pretrained=false", f"paths.runs={tmp / 'runs'}",
                   f"paths.data={tmp / 'data'}"])
    return SegmentationTask(OmegaConf.to_container(cfg, resolve=True), 19, ["eval"])


def section_evalmem(dev, sz, args):
    rows = []
    with tempfile.TemporaryDirectory(prefix="ibnnet-gpu-acceptance-") as tmp:
        task = segmentation_task(sz.seg_model, Path(tmp)).to(dev).eval()
        h, w = sz.eval_hw
        image = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, device=dev)   # as the loader hands it
        passes = len(sz.eval_scales) * (2 if sz.eval_flip else 1)
        for precision in ("fp32", "bf16"):
            ac = PRECISIONS[precision]
            sync(dev)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
                before = torch.cuda.memory_allocated(dev)
            t0 = time.perf_counter()
            with torch.no_grad(), torch.autocast(dev.type, dtype=ac or torch.float32, enabled=ac is not None):
                probs = task.predict_scores(image, scales=sz.eval_scales, flip=sz.eval_flip)
            sync(dev)
            secs = time.perf_counter() - t0
            # Softmax probabilities summed over passes: every pixel's class sum is the number of passes.
            total = probs.float().sum(1)
            ok = bool(torch.isfinite(probs).all()) and torch.allclose(total, torch.full_like(total, passes),
                                                                     rtol=1e-2)
            if dev.type == "cuda":
                peak = torch.cuda.max_memory_allocated(dev)
                cap = torch.cuda.get_device_properties(dev).total_memory
                mem = (f"peak {peak / 2**30:.2f} GiB ({(peak - before) / 2**30:.2f} GiB above the model), "
                       f"{peak / cap:.0%} of {cap / 2**30:.0f} GiB")
            else:
                mem = "peak memory n/a on CPU"
            rows.append(row("evalmem", f"{sz.seg_model} OS8 {w}x{h}, scales {list(sz.eval_scales)}"
                            f"{' + flip' if sz.eval_flip else ''} ({passes} passes), {precision}",
                            f"{mem}, {secs:.2f} s", "fits; probabilities sum to the pass count",
                            "PASS" if ok else "FAIL"))
        del task
    return rows


# ----------------------------------------------------------------------------------------------------------
# Loader throughput


def section_loader(dev, sz, args, shared):
    sys.path.insert(0, str(HERE))
    import loader as bench_loader   # bench/loader.py: the same JPEGs and pipelines as the CPU benchmark
    workers = min(16, os.cpu_count() or 1) if not args.tiny else 1
    with tempfile.TemporaryDirectory(prefix="ibnnet-gpu-acceptance-loader-") as tmp:
        root = Path(tmp) / "imagenet"
        bench_loader.write_imagenet_like(root, sz.loader_images)
        rates = bench_loader.measure({"ibnnet 224": bench_loader.ours(root, 224)}, workers, sz.batch,
                                     sz.loader_rounds, dev, sz.loader_samples)
    rate = rates["ibnnet 224"]
    gpu = shared.get("gpu_images_per_s")
    if gpu is None:
        return [row("loader", f"ImageNet train pipeline, {workers} workers, batch {sz.batch}",
                    f"{rate:.0f} images/s", "GPU rate not measured (train section not run)", "INFO")]
    verdict = "PASS" if rate >= gpu else "WARN"
    return [row("loader", f"ImageNet train pipeline, {workers} workers, batch {sz.batch}",
                f"{rate:.0f} images/s = {rate / gpu:.2f}x the GPU's {gpu:.0f} images/s ({shared['gpu_rate_from']})",
                ">= the GPU's rate (else the run is loader-bound)", verdict)]


# ----------------------------------------------------------------------------------------------------------
# Multi-GPU (NCCL) checks, run in spawned processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather(t: torch.Tensor, world: int) -> list[torch.Tensor]:
    import torch.distributed as dist
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t.contiguous())
    return out


def _ddp_eval_check(rank, world, dev, sz) -> dict:
    """Sharded evaluation (UnrepeatedDistributedSampler, as the data module) + the all-reduced ConfusionMatrix
    against one process evaluating every image; batch 1 and deterministic cuDNN, so logits are bitwise equal."""
    import timm
    from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
    from torch.utils.data import DataLoader, TensorDataset

    from ibnnet.tasks.metrics import ConfusionMatrix
    from ibnnet.tasks.segmentation import SegmentationNet
    torch.manual_seed(0)
    backbone = timm.create_model(sz.ddp_model, num_classes=0, output_stride=8)
    net = SegmentationNet(backbone, 19).to(dev).eval()
    g = torch.Generator().manual_seed(0)
    h, w = sz.ddp_hw
    images = torch.randn(sz.ddp_images, 3, h, w, generator=g)
    labels = torch.randint(0, 19, (sz.ddp_images, h, w), generator=g)
    labels[:, : h // 8] = 255   # some ignored pixels
    ds = TensorDataset(images, labels)
    sharded = ConfusionMatrix(19).to(dev)
    local_all = ConfusionMatrix(19, sync_on_compute=False).to(dev)
    sampler = UnrepeatedDistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False)
    with torch.no_grad():
        for x, y in DataLoader(ds, batch_size=1, sampler=sampler):
            sharded.update(net(x.to(dev)).argmax(1), y.to(dev))
        if rank == 0:
            for x, y in DataLoader(ds, batch_size=1):
                local_all.update(net(x.to(dev)).argmax(1), y.to(dev))
    reduced = sharded.compute()   # every rank takes part in the all-reduce
    if rank != 0:
        return {}
    single = local_all.compute()
    return {"equal": torch.equal(reduced["confmat"].cpu(), single["confmat"].cpu()),
            "pixels": int(reduced["confmat"].sum()), "miou": (float(reduced["miou"]), float(single["miou"]))}


def _syncbn_check(rank, world, dev) -> dict:
    """SyncBN over 2 processes x 2 images against BN over 4 images in one process (also as IBN's BN half):
    outputs, input gradients, summed weight gradients and running statistics, each within the fp32 bound
    derived from plain BN's own float32 error against float64."""
    import torch.distributed as dist

    from ibnnet.layers import IBN
    if dev.type != "cuda":
        return {"skip": "SyncBatchNorm runs on GPUs only"}
    results = {}
    c = 16
    for label, make_sync, make_ref in (
        ("SyncBatchNorm", lambda: nn.SyncBatchNorm(c), lambda: nn.BatchNorm2d(c)),
        ("IBN(SyncBN)", lambda: IBN(c, 0.5, bn_layer=nn.SyncBatchNorm), lambda: IBN(c, 0.5)),
    ):
        torch.manual_seed(0)
        x = torch.randn(2 * world, c, 12, 10, device=dev) * 2 + 1
        gy = torch.randn_like(x)
        ref_layer = make_ref().to(dev).train()
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in ref_layer.parameters():
                p.copy_(torch.rand(p.shape, generator=gen) * 1.5 + 0.25)
        sync_layer = make_sync().to(dev).train()
        sync_layer.load_state_dict(ref_layer.state_dict())
        mine = slice(2 * rank, 2 * rank + 2)
        xs = x[mine].clone().requires_grad_()
        ys = sync_layer(xs)
        ys.backward(gy[mine])
        y_all = torch.cat(_gather(ys.detach(), world))
        gx_all = torch.cat(_gather(xs.grad, world))
        gparams = [p.grad.clone() for p in sync_layer.parameters()]
        for t in gparams:
            dist.all_reduce(t)   # what DDP does (then divides by the world size, for both alike)
        bufs = [b for b in sync_layer.buffers() if b.is_floating_point()]
        gathered = [_gather(b, world) for b in bufs]   # every rank runs every collective (no short-circuit)
        same_bufs = all(torch.equal(a, b) for b, per_rank in zip(bufs, gathered) for a in per_rank)
        if rank != 0:
            continue
        ref = run_plain(copy.deepcopy(ref_layer).double(), x.double(), gy.double())
        bn32 = run_plain(copy.deepcopy(ref_layer), x, gy)
        eps32 = torch.finfo(torch.float32).eps
        got = (y_all, gx_all, gparams + bufs)
        errs = errors(got, ref)
        base = errors(bn32, ref)
        bounds = {q: SAFETY * max(e / eps32, 1.0) * eps32 for q, e in base.items()}
        results[label] = {"errors": errs, "bounds": bounds, "buffers_equal_on_ranks": same_bufs,
                          "ok": same_bufs and all(errs[q] <= bounds[q] for q in errs)}
    return results


def run_plain(layer, x, gy):
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    y.backward(gy)
    return y.detach(), x.grad, [p.grad for p in layer.parameters()] + [b for b in layer.buffers()
                                                                     if b.is_floating_point()]


def _sn_batch_average_check(rank, world, dev, tmp: Path) -> dict:
    """The project's BatchAverageStats.estimate (SN batch-average inference) under DDP: each rank estimates from
    its own shard of the training set, then the callback averages the buffers; they must be equal everywhere."""
    from omegaconf import OmegaConf

    from ibnnet.config import compose
    from ibnnet.data.datamodule import DataModule
    from ibnnet.data.transforms.pipeline import normalize_batch
    from ibnnet.layers import estimate_batch_average_stats
    from ibnnet.runs.callbacks import BatchAverageStats, statistics_loader
    from ibnnet.tasks.classification import ClassificationTask
    cfg_path = tmp / "sn.yaml"
    if rank == 0:
        cfg_path.write_text(
            "defaults: [{optim: demo}, {trainer: cpu_demo}, {logger: disabled}, {launcher: local}]\n"
            "task: classification\nmodel: {name: resnet18_sn}\n"
            "data:\n  train: {dataset: builtin_cls, split: train, domain: synthetic, num_samples: 32}\n"
            "  val: [{name: synthetic, dataset: builtin_cls, split: val, domain: synthetic, num_samples: 8}]\n"
            "  batch_size: 4\n  num_workers: 0\n  augment: {image_size: 32, eval_resize: 32}\n"
            f"paths: {{runs: {tmp / 'runs'}, results: {tmp / 'results'}}}\n")
    import torch.distributed as dist
    dist.barrier()
    cfg = compose(cfg_path)
    dm = DataModule(cfg)
    dm.setup("fit")
    torch.manual_seed(0)
    task = ClassificationTask(OmegaConf.to_container(cfg, resolve=True), dm.num_classes, dm.val_names).to(dev)
    stats = {n: b for n, b in task.named_buffers() if n.endswith(("running_mean", "running_var"))}
    callback = BatchAverageStats(num_batches=2)
    trainer = SimpleNamespace(datamodule=dm, world_size=world, global_rank=rank)
    # Before the callback's average: what this rank estimated alone (differs between ranks: other images).
    alone = copy.deepcopy(task)
    estimate_batch_average_stats(alone, statistics_loader(dm, cfg.trainer.seed, world, rank), 2,
                                 forward_fn=lambda m, b: m(normalize_batch(b[0].to(dev))))
    alone_stats = torch.cat([b.flatten() for n, b in alone.named_buffers() if n in stats])
    used = callback.estimate(trainer, task)
    mine = torch.cat([b.flatten() for b in stats.values()])
    everyone = _gather(mine, world)
    alone_all = _gather(alone_stats, world)
    if rank != 0:
        return {}
    return {"used": used, "equal": all(torch.equal(everyone[0], t) for t in everyone[1:]),
            "spread_before": max((alone_all[0] - t).abs().max().item() for t in alone_all[1:]),
            "buffers": mine.numel()}


def _ddp_worker(rank: int, world: int, port: int, backend: str, sz, out_dir: str) -> None:
    import torch.distributed as dist
    dev = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120), device_id=dev if dev.type == "cuda" else None)
    try:
        out = {}
        for key, fn in (("ddp_eval", lambda: _ddp_eval_check(rank, world, dev, sz)),
                        ("syncbn", lambda: _syncbn_check(rank, world, dev)),
                        ("sn_batch_average", lambda: _sn_batch_average_check(rank, world, dev, Path(out_dir)))):
            try:
                out[key] = fn()
            except Exception as e:  # reported as a FAIL row; the other checks still run
                out[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
            dist.barrier()
        if rank == 0:
            torch.save(out, Path(out_dir) / "result.pt")
    finally:
        dist.destroy_process_group()


def raising_rank_child(rank: int, world: int, port: int, backend: str, timeout_s: int) -> None:
    """One process of a 2-process job in which rank 1 raises after the first all-reduce; rank 0 enters the
    next collective, which its peer never joins: it must end on its own within the process-group timeout."""
    import torch.distributed as dist
    dev = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    t = torch.ones(1024, device=dev)
    dist.all_reduce(t)
    sync(dev)
    print(f"rank {rank} ready {time.time():.3f}", flush=True)
    if rank == 1:
        raise RuntimeError("injected failure on rank 1")
    dist.all_reduce(t)
    sync(dev)   # blocks on the collective until the watchdog (NCCL) or the dead socket (gloo) ends it
    t.sum().item()
    print("rank 0 finished the collective without its peer", flush=True)


def raising_rank_check(backend: str, timeout_s: int) -> dict:
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = [subprocess.Popen([sys.executable, __file__, "--child-raise", str(r), "--child-port", str(port),
                               "--child-backend", backend, "--child-timeout", str(timeout_s)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for r in range(2)]
    limit = timeout_s + 90
    t0 = time.perf_counter()
    ended: dict[int, float] = {}
    while len(ended) < 2 and time.perf_counter() - t0 < limit:
        for r, p in enumerate(procs):
            if r not in ended and p.poll() is not None:
                ended[r] = time.perf_counter()
        time.sleep(0.05)
    killed = [r for r, p in enumerate(procs) if p.poll() is None]
    for p in procs:
        if p.poll() is None:
            p.kill()
    outs = [p.communicate()[0] for p in procs]
    survivor_s = ended[0] - ended[1] if 0 in ended and 1 in ended else None
    return {"rc": [p.returncode for p in procs], "killed": killed, "survivor_s": survivor_s,
            "limit_s": timeout_s + 30, "tail": outs[0][-400:],
            "ok": not killed and survivor_s is not None and survivor_s <= timeout_s + 30 and procs[0].returncode != 0}


def section_multigpu(dev, sz, args):
    if dev.type == "cuda":
        n = torch.cuda.device_count()
        if n < 2:
            return [row("multigpu", "NCCL DDP eval, SyncBN, SN buffers, raising rank", f"skipped: {n} GPU",
                        "needs 2+ GPUs", "SKIP")]
        backend = "nccl"
    else:
        backend = "gloo"   # --device cpu: the same checks on 2 CPU processes (a smoke test of this code)
    world = 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="ibnnet-gpu-acceptance-ddp-") as tmp:
        import torch.multiprocessing as mp
        mp.spawn(_ddp_worker, args=(world, free_port(), backend, sz, tmp), nprocs=world, join=True)
        out = torch.load(Path(tmp) / "result.pt", weights_only=False)
    r = out["ddp_eval"]
    if "error" in r:
        rows.append(row("multigpu", f"{backend} DDP evaluation", r["error"], "", "FAIL"))
    else:
        rows.append(row("multigpu", f"{backend} DDP evaluation, {world} ranks, {sz.ddp_images} images "
                        f"{sz.ddp_hw[1]}x{sz.ddp_hw[0]} (uneven shards)",
                        f"confusion matrices {'equal' if r['equal'] else 'DIFFER'} ({r['pixels']} pixels), "
                        f"mIoU {r['miou'][0]:.4f} vs {r['miou'][1]:.4f}", "identical to 1 process",
                        "PASS" if r["equal"] else "FAIL"))
    r = out["syncbn"]
    if "skip" in r:
        rows.append(row("multigpu", f"{backend} SyncBN 2x2 vs BN 1x4", f"skipped: {r['skip']}", "", "SKIP"))
    elif "error" in r:
        rows.append(row("multigpu", f"{backend} SyncBN 2x2 vs BN 1x4", r["error"], "", "FAIL"))
    else:
        for label, v in r.items():
            rows.append(row("multigpu", f"{backend} {label} 2 ranks x 2 images vs 1 x 4 images",
                            fmt_errs(v["errors"]) + ("" if v["buffers_equal_on_ranks"] else ", BUFFERS DIFFER"),
                            fmt_errs(v["bounds"]), "PASS" if v["ok"] else "FAIL"))
    r = out["sn_batch_average"]
    if "error" in r:
        rows.append(row("multigpu", f"{backend} SN batch-average buffers", r["error"], "", "FAIL"))
    else:
        rows.append(row("multigpu", f"{backend} SN batch-average buffers (BatchAverageStats, {r['used']} batches/rank)",
                        f"{r['buffers']} values {'equal' if r['equal'] else 'DIFFER'} on every rank "
                        f"(per-rank estimates differed by up to {r['spread_before']:.2e} before averaging)",
                        "bitwise equal", "PASS" if r["equal"] else "FAIL"))
    r = raising_rank_check(backend, sz.pg_timeout_s)
    took = "never (killed)" if r["survivor_s"] is None else f"{r['survivor_s']:.1f} s after rank 1 died"
    rows.append(row("multigpu", f"{backend} rank 1 raises; rank 0 waits in all_reduce (pg timeout "
                    f"{sz.pg_timeout_s} s)", f"rank 0 exited (rc {r['rc'][0]}) {took}",
                    f"<= {r['limit_s']} s, non-zero exit", "PASS" if r["ok"] else "FAIL"))
    return rows


# ----------------------------------------------------------------------------------------------------------
# Plan, report, main


def plan_lines(sz, sections, dev_desc: str, compile_on: bool) -> list[str]:
    ps = "x".join(map(str, sz.parity_shape))
    ncfg = 3 if sz is TINY else 3 * 2
    lines = [f"GPU acceptance plan ({dev_desc}); estimated seconds on one H100 with the full sizes:"]
    desc = {
        "parity": f"kernel parity: {len(LAYER_NAMES)} layers ({', '.join(LAYER_NAMES)}) x fp32/bf16/fp16 x "
                  f"NCHW/channels-last x fused/native, forward+backward on {ps} vs float64; "
                  f"bound {SAFETY} * max(kappa, 1) * eps(dtype), kappa = plain fp32 error / eps(fp32)",
        "fp16scale": f"fp16 gradients x2^16: {len(LAYER_NAMES)} layers x fused/native on "
                     f"{'x'.join(map(str, sz.fp16_shape))}; finite, unscaled within the fp16 bound, largest finite "
                     f"scale (up to where the upstream gradient itself overflows)",
        "train": f"training: {sz.baseline} (torchvision), {', '.join(sz.models)}; batch {sz.batch} at {sz.size} px; "
                 f"{sz.steps} steps each ({sz.warmup} warm-up, {sz.timed} timed, {sz.sync_steps} with "
                 f"set_sync_debug_mode('warn')); fp32 (TF32) / bf16 / fp16+GradScaler x NCHW / channels-last "
                 f"({ncfg} configs{': fp32 NCHW, bf16 CL, fp16 NCHW' if sz is TINY else ''})"
                 + (f" + Inductor-compiled {sz.compile_precision} channels-last" if compile_on else ", no compile"),
        "evalmem": f"peak memory of one {sz.eval_hw[1]}x{sz.eval_hw[0]} multi-scale evaluation: "
                   f"SegmentationTask.predict_scores, {sz.seg_model} OS8 (configs/segmentation.yaml), scales "
                   f"{list(sz.eval_scales)}{' + flip' if sz.eval_flip else ''}, fp32 and bf16",
        "loader": f"loader: {sz.loader_images} ImageNet-like JPEGs (bench/loader.py), our training pipeline, "
                  f"{sz.loader_samples} reads x {sz.loader_rounds} rounds, batch {sz.batch}, vs the GPU images/s of "
                  f"the bf16 channels-last {sz.models[0]} step",
        "multigpu": f"multi-GPU (only with 2+ GPUs, NCCL): DDP evaluation of {sz.ddp_images} images "
                    f"{sz.ddp_hw[1]}x{sz.ddp_hw[0]} == 1 process; SyncBN/IBN(SyncBN) 2x2 == BN 1x4; SN batch-average "
                    f"buffers equal on every rank; rank 1 raises, rank 0 must exit within the {sz.pg_timeout_s} s "
                    f"process-group timeout",
    }
    total = 0
    for s in sections:
        est = ESTIMATE_S[s] if (s != "train" or compile_on) else ESTIMATE_S[s] - 180
        total += est if s != "multigpu" else 0
        lines.append(f"  [{s:9s} ~{est:3d} s] {desc[s]}")
    lines.append(f"  total ~{total} s on one GPU (+ ~{ESTIMATE_S['multigpu']} s with 2+ GPUs), "
                 f"+ ~{PYTEST_ESTIMATE_S} s for pytest -m gpu in bench/gpu_acceptance.sh")
    return lines


def write_report(rows, path: Path | None, header: list[str]) -> str:
    def cell(s):
        return str(s).replace("|", "\\|")
    lines = header + ["", "| section | check | measured | bound / reference | result |", "|---|---|---|---|---|"]
    lines += [f"| {cell(r['section'])} | {cell(r['check'])} | {cell(r['measured'])} | {cell(r['bound'])} | "
              f"{r['result']} |" for r in rows]
    counts = {k: sum(r["result"] == k for r in rows) for k in ("PASS", "FAIL", "WARN", "SKIP", "INFO")}
    lines += ["", "Summary: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)]
    text = "\n".join(lines) + "\n"
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="markdown report (default: bench/results/gpu_acceptance-<host>.md)")
    ap.add_argument("--dry-run", action="store_true", help="print what would run and exit")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: run the sections on the CPU (with --tiny: a smoke test of this script)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes and resnet18 models (CPU smoke test)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--no-compile", action="store_true", help="skip the Inductor-compiled training step")
    ap.add_argument("--pytest-summary", default=None, help="pytest -m gpu's summary line (from the .sh)")
    ap.add_argument("--pytest-rc", type=int, default=None)
    ap.add_argument("--child-raise", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--child-backend", default="nccl", help=argparse.SUPPRESS)
    ap.add_argument("--child-timeout", type=int, default=30, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_raise is not None:
        raising_rank_child(args.child_raise, 2, args.child_port, args.child_backend, args.child_timeout)
        return 0
    sz = TINY if args.tiny else FULL
    compile_on = sz.compile and not args.no_compile
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and cuda:
        dev = torch.device("cuda", 0)
        desc = f"{torch.cuda.get_device_name(dev)} x{torch.cuda.device_count()}"
    elif args.device == "cpu":
        dev, desc = torch.device("cpu"), f"CPU, {torch.get_num_threads()} threads"
    else:
        dev, desc = None, "no CUDA device: dry run"
    plan = plan_lines(sz, args.sections, desc, compile_on)
    print("\n".join(plan), flush=True)
    if args.dry_run or dev is None:
        print("dry run: nothing executed" + ("" if cuda else " (torch.cuda.is_available() is False)"))
        return 0
    out = args.out or REPO / "bench" / "results" / f"gpu_acceptance-{socket.gethostname()}.md"
    import ibnnet  # noqa: F401  (registers the models)
    header = [f"# GPU acceptance: {desc}", "",
              f"host {socket.gethostname()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M:%S')}, "
              f"{'tiny' if args.tiny else 'full'} sizes", ""] + [f"    {line}" for line in plan]
    rows = []
    if args.pytest_summary is not None:
        ok = args.pytest_rc in (0, 5)   # 5: nothing collected
        rows.append(row("pytest", "pytest -m gpu", args.pytest_summary, "exit 0", "PASS" if ok else "FAIL"))
    shared: dict = {}
    t_all = time.perf_counter()
    for s in args.sections:
        t0 = time.perf_counter()
        print(f"== {s} ...", flush=True)
        try:
            fn = {"parity": section_parity, "fp16scale": section_fp16scale, "evalmem": section_evalmem,
                  "multigpu": section_multigpu}.get(s)
            got = fn(dev, sz, args) if fn else {"train": section_train, "loader": section_loader}[s](
                dev, sz, args, shared)
        except Exception as e:   # one broken section must not hide the others' results
            import traceback
            traceback.print_exc()
            got = [row(s, "section raised", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300],
                       "", "FAIL")]
        secs = time.perf_counter() - t0
        for r in got:
            print(f"   {r['result']:4s} {r['check']}: {r['measured']}", flush=True)
        rows += got
        rows.append(row(s, "section wall time", f"{secs:.0f} s", f"estimate ~{ESTIMATE_S[s]} s (H100, full)",
                        "INFO"))
    rows.append(row("all", "wall time", f"{time.perf_counter() - t_all:.0f} s", "< 480 s with pytest (H100)",
                    "INFO"))
    text = write_report(rows, out, header)
    print()
    print(text)
    print(f"report: {out}")
    return 1 if any(r["result"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
