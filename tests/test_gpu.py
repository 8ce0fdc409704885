"""CUDA checks (``pytest -m gpu``; skipped without a CUDA device): kernel parity against float64, fp16 with
GradScaler-sized gradients, bf16-mixed training, the confusion matrix's CUDA branch.

``bench/gpu_acceptance.sh`` runs these before ``bench/gpu_acceptance.py``, which shares the parity code
(and its bound: 8 * max(kappa, 1) * eps(dtype), kappa from plain PyTorch float32's own error; see its docstring).
``IBNNET_GPU_TESTS_ON_CPU=1`` runs them on the CPU at small sizes, to check the tests without a GPU.
"""
import csv
import importlib.util
import math
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_acceptance", REPO / "bench" / "gpu_acceptance.py")
ga = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ga)   # by path: putting bench/ on sys.path would shadow modules named loader/kernels

ON_CPU = os.environ.get("IBNNET_GPU_TESTS_ON_CPU") == "1"
DEVICE = torch.device("cpu") if ON_CPU else torch.device("cuda", 0)
SIZES = ga.TINY if ON_CPU else ga.FULL
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not (torch.cuda.is_available() or ON_CPU), reason="needs a CUDA device")]


@pytest.fixture(autouse=True)
def _full_fp32_matmuls():
    import ibnnet  # noqa: F401  (registers the models)
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(saved)


@pytest.mark.parametrize("layout", ["NCHW", "CL"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", ga.LAYER_NAMES)
def test_kernel_parity_against_float64(name, dtype, layout):
    """Fused and native kernel, forward and backward (input, parameter gradients, running statistics), within
    the format-derived bound of the float64 result; channels-last stays channels-last."""
    r = ga.parity_case(name, DTYPES[dtype], layout == "CL", DEVICE, SIZES.parity_shape)
    for kind, v in r["kernels"].items():
        assert v["layout_kept"], f"{kind}: channels-last input gave an NCHW output or gradient"
        assert v["ok"], f"{kind}: errors {v['errors']} > bounds {r['bounds']} (fp32 baseline {r['baseline_fp32']})"


@pytest.mark.parametrize("kind", ["fused", "native"])
@pytest.mark.parametrize("name", ga.LAYER_NAMES)
def test_fp16_gradients_scaled_2_to_16_stay_finite(name, kind):
    """A segmentation-loss-sized upstream gradient times GradScaler's initial 2^16: finite, and unscaled within
    the fp16 bound of float64."""
    r = ga.fp16_scaled_case(name, kind, DEVICE, SIZES.fp16_shape)
    assert r["finite"], f"non-finite gradients at 2^16 (finite up to 2^{r['max_finite_exp']})"
    assert r["ok"], f"errors {r['errors']} > bounds {r['bounds']}"


def test_bf16_mixed_training_resnet18_ibn_a(tmp_path):
    """`ibnnet train` (Lightning, precision bf16-mixed) on the GPU: a few steps of resnet18_ibn_a, finite loss."""
    from helpers import TINY, config, ibnnet
    body = TINY.replace("resnet18_bn", "resnet18_ibn_a").replace("{logger: disabled}", "{logger: offline}")
    path = config(tmp_path, body)
    accelerator = "cpu" if ON_CPU else "gpu"
    ibnnet("train", path, f"trainer.accelerator={accelerator}", "trainer.precision=bf16-mixed",
           "trainer.deterministic=false", "trainer.max_epochs=2")
    logs = list((tmp_path / "runs").rglob("metrics.csv"))
    assert logs, "no metrics.csv written"
    with open(logs[0]) as f:
        losses = [float(r["train/loss_step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]
    assert len(losses) >= 4 and all(math.isfinite(v) for v in losses), losses


@pytest.mark.parametrize("deterministic", [False, True], ids=["bincount", "sorted-unique"])
def test_confusion_matrix_cuda_branch_equals_cpu(deterministic):
    """Both CUDA counting paths (bincount; sorted unique + index_put_ under deterministic algorithms) give the
    CPU matrix, ignore_index skipped."""
    from ibnnet.tasks.metrics import ConfusionMatrix
    g = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 19, (3, 257, 511), generator=g)
    target = torch.randint(0, 19, (3, 257, 511), generator=g)
    target[:, :40] = 255
    cpu = ConfusionMatrix(19)
    cpu.update(preds, target)
    dev = ConfusionMatrix(19).to(DEVICE)
    torch.use_deterministic_algorithms(deterministic)   # restored by tests/conftest.py
    dev.update(preds.to(DEVICE), target.to(DEVICE))
    dev.update(preds.to(DEVICE)[:1], target.to(DEVICE)[:1])   # accumulation
    cpu.update(preds[:1], target[:1])
    assert torch.equal(dev.confmat.cpu(), cpu.confmat)
    assert int(cpu.confmat.sum()) == 4 * 217 * 511
