"""The numerical acceptance rule for kernels, in one place.

A kernel passes when its error against the float64 reference is at most twice the error that plain
torch achieves in the same precision, plus a small floor from the one table below (the floor covers
cases where plain torch is exact, e.g. a float64 computation that *is* the reference). Matrices are
judged by relative Frobenius error; a failure says where the largest deviation is and by how much.
"""

from __future__ import annotations

import torch

# The one tolerance table: floor added to 2 × err(plain torch), keyed by the precision the result is
# computed in (about 1-90 units of roundoff; the float64 floor allows for the condition numbers of the
# SPD test matrices, which stay below ~1e2).
TOLERANCE_FLOOR = {
    torch.float64: 1e-13,
    torch.float32: 1e-6,
    torch.float16: 5e-4,
    torch.bfloat16: 4e-3,
}


def rel_frobenius(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖_F / ‖expected‖_F in float64 (absolute error when expected is zero)."""
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    num = torch.linalg.vector_norm(a - e).item()
    den = torch.linalg.vector_norm(e).item()
    return num / den if den > 0 else num


def _worst(actual: torch.Tensor, expected: torch.Tensor) -> str:
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    diff = (a - e).abs()
    if diff.numel() == 0:
        return "empty"
    nan = torch.isnan(diff)
    if nan.any():
        flat = int(torch.nonzero(nan.flatten())[0])
    else:
        flat = int(diff.flatten().argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
    return (
        f"largest deviation at {index}: got {a[index].item():.9g}, expected {e[index].item():.9g} "
        f"(|Δ| = {diff[index].item():.3g})"
    )


def assert_within_rule(
    actual: torch.Tensor,
    expected: torch.Tensor,
    baseline: torch.Tensor,
    precision: torch.dtype,
    what: str = "",
) -> tuple[float, float]:
    """Assert err(actual) <= 2 err(baseline) + TOLERANCE_FLOOR[precision] against ``expected`` (float64).

    baseline: what plain torch computes in the same precision. Returns (err, baseline_err).
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    err = rel_frobenius(actual, expected)
    base = rel_frobenius(baseline, expected)
    bound = 2.0 * base + TOLERANCE_FLOOR[precision]
    if not err <= bound:  # also catches NaN
        raise AssertionError(
            f"{what}: relative Frobenius error {err:.3e} exceeds 2 x plain torch ({base:.3e}) + floor "
            f"{TOLERANCE_FLOOR[precision]:.0e} = {bound:.3e}; {_worst(actual, expected)}"
        )
    return err, base


def spd_batch(batch: int, n: int, dtype: torch.dtype, generator: torch.Generator, cond: float = 50.0) -> torch.Tensor:
    """(batch, n, n) symmetric positive-definite matrices with eigenvalues spread over [1, cond]."""
    q, _ = torch.linalg.qr(torch.randn(batch, n, n, generator=generator, dtype=torch.float64))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    eig = eig[torch.randperm(n, generator=generator)]
    a = q @ torch.diag_embed(eig.expand(batch, n)) @ q.mT
    return (0.5 * (a + a.mT)).to(dtype)
