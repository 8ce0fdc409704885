"""Tolerances for comparing two float32 implementations, derived from a float64 reference.

PyTorch's CPU kernels dispatch per instruction set (``ATEN_CPU_CAPABILITY`` default / avx2 / avx512), and
each blocks and orders its float32 sums differently, so the difference between two float32 implementations
(fused vs native, eager vs script / trace / export / compile) is not a constant: a fixed ``atol``/``rtol``
that held on one CPU can fail on another. What does not depend on the CPU is how far each implementation is
from the exact result. So the tests run a float64 copy (same weights, same inputs, converted exactly) and
require the two float32 results to be about equally far from it.
"""
from __future__ import annotations

import os

import torch

FLOAT32_EPS = torch.finfo(torch.float32).eps  # 2**-23: one ulp at 1.0

# Why a factor of 4: the two implementations evaluate the same formula in float32 and differ only in the
# order and blocking of their sums (8 vs 16 SIMD lanes, pairwise vs sequential, Welford vs two-pass). Their
# rounding errors share one a-priori bound and, measured as the largest error over a tensor (the maximum of
# many roughly independent rounding errors), land within about 2x of each other: 2.2 at most where the errors
# are above the floor below, in tests/test_kernels.py under ATEN_CPU_CAPABILITY=default, avx2 and avx512.
# 4 leaves room for that spread and not much more: a real bug (a wrong statistic, a biased instead of an
# unbiased variance, a wrong eps) moves the result by orders of magnitude more than float32 rounding (~1e-7
# relative); tests/test_kernels.py::test_float64_derived_tolerance_catches_wrong_results checks that it fails.
FACTOR = 4.0
# Why a few ulps of the reference's magnitude: when the baseline happens to be (nearly) exact, the other
# implementation may still round its last operations differently; 4 ulps of max|reference| is that and no more.
ULPS = 4.0


def _as_list(t):
    return [t] if isinstance(t, torch.Tensor) else list(t)


def _max_error(results, references) -> float:
    """Largest absolute error of one tensor; of a group, the largest error relative to each member's max|reference|."""
    if len(references) == 1:
        r = references[0]
        return (results[0].detach().double() - r).abs().max().item() if r.numel() else 0.0
    worst = 0.0
    for t, r in zip(results, references):
        scale = r.abs().max().item() if r.numel() else 0.0
        worst = max(worst, (t.detach().double() - r).abs().max().item() / (scale or 1.0) if r.numel() else 0.0)
    return worst


def float64_errors(got, expected, reference, factor: float = FACTOR, ulps: float = ULPS) -> dict[str, float]:
    """The numbers :func:`assert_close_to_float64` checks: each result's largest error against the float64
    reference, the floor (``ulps`` float32 ulps of max|reference|), and the bound on each side. For a group of
    tensors (sequences), errors are relative to each member's max|reference| and the floor is ``ulps`` ulps."""
    refs = [r.detach().to(torch.float64) for r in _as_list(reference)]
    err_got, err_expected = _max_error(_as_list(got), refs), _max_error(_as_list(expected), refs)
    magnitude = (refs[0].abs().max().item() if refs[0].numel() else 0.0) if len(refs) == 1 else 1.0  # relative
    floor = ulps * FLOAT32_EPS * magnitude
    return {"err_got": err_got, "err_expected": err_expected, "floor": floor,
            "bound_got": factor * err_expected + floor, "bound_expected": factor * err_got + floor}


def assert_close_to_float64(got, expected, reference, *, factor: float = FACTOR, ulps: float = ULPS,
                            symmetric: bool = True, what: str = "") -> float:
    """Assert that two float32 implementations of one computation are equally accurate.

    ``expected``: the baseline implementation's float32 result; ``got``: the other implementation's float32
    result; ``reference``: the same computation in float64 (a ``.double()`` copy of the model or layer with the
    same weights, run on the same inputs). With ``e(t) = max |t - reference|``:

        e(got)      <= factor * e(expected) + ulps * eps32 * max|reference|
        e(expected) <= factor * e(got)      + ulps * eps32 * max|reference|     (unless symmetric=False)

    The first is the check that ``got`` is as accurate as the baseline. The second keeps the check from being
    weaker than ``assert_close(got, expected)`` was: with one side only, a bug in the *baseline* would inflate
    the bound and pass. Both errors scale with whatever the CPU dispatches to, so the bound holds on every
    instruction set, and both results are always compared with the float64 one, never with each other.

    The largest error over a tensor is a stable estimate of an implementation's rounding noise only when the
    tensor has many elements. Tensors of a few elements can be passed together as sequences (a group): then
    ``e`` is the largest error of any member relative to that member's max|reference|, and the floor is
    ``ulps`` ulps (relative). Non-floating tensors (counters such as ``num_batches_tracked``) must be equal to
    each other and to the reference. Returns the larger error / bound ratio checked (below 1 when it passes).
    """
    name = f"{what}: " if what else ""
    gots, expecteds, refs = _as_list(got), _as_list(expected), _as_list(reference)
    assert len(gots) == len(expecteds) == len(refs) > 0, f"{name}groups of different lengths"
    for g, e, r in zip(gots, expecteds, refs):
        assert g.shape == e.shape == r.shape, \
            f"{name}shapes differ: got {tuple(g.shape)}, expected {tuple(e.shape)}, reference {tuple(r.shape)}"
        if not g.dtype.is_floating_point:
            assert torch.equal(g, e) and torch.equal(g.to(r.dtype), r), \
                f"{name}integer tensors differ: got {g}, expected {e}, reference {r}"
            continue
        assert g.dtype == e.dtype == torch.float32, f"{name}float32 results expected, got {g.dtype} and {e.dtype}"
        assert r.dtype == torch.float64, f"{name}the reference must be float64, got {r.dtype}"
    floating = [i for i, r in enumerate(refs) if r.dtype.is_floating_point]
    if not floating:
        return 0.0
    gots, expecteds, refs = ([t[i] for i in floating] for t in (gots, expecteds, refs))
    n = float64_errors(gots, expecteds, refs, factor, ulps)
    kind = "max |{} - float64|" if len(refs) == 1 else "max relative |{} - float64| over the group"
    of = "max |float64|" if len(refs) == 1 else "1 (relative)"

    def ratio(err, bound):
        return err / bound if bound else (0.0 if err == 0 else float("inf"))

    worst = max(ratio(n["err_got"], n["bound_got"]), ratio(n["err_expected"], n["bound_expected"]) if symmetric else 0)
    log = os.environ.get("NUMERICS_RATIO_LOG")  # margins for reports: one line per comparison
    if log:
        with open(log, "a") as f:
            f.write(f"{worst:.4f} {n['err_got']:.3e} {n['err_expected']:.3e} {n['floor']:.3e} "
                    f"{os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0]} {what}\n")
    assert n["err_got"] <= n["bound_got"], (
        f"{name}{kind.format('got')} = {n['err_got']:.3g} exceeds the bound {n['bound_got']:.3g} = "
        f"{factor:g} x {kind.format('expected')} ({n['err_expected']:.3g}) + {ulps:g} float32 ulps of "
        f"{of} ({n['floor']:.3g})")
    assert not symmetric or n["err_expected"] <= n["bound_expected"], (
        f"{name}the baseline is the inaccurate one: {kind.format('expected')} = {n['err_expected']:.3g} "
        f"exceeds the bound {n['bound_expected']:.3g} = {factor:g} x {kind.format('got')} ({n['err_got']:.3g}) "
        f"+ {ulps:g} float32 ulps of {of} ({n['floor']:.3g})")
    return worst
