"""Numerical health of second-moment statistics, checked on load and after collection.

C = E[k kᵀ] must be a real covariance-like matrix before an edit solves with it: a floating dtype,
finite, symmetric, positive semi-definite within rounding, and summed over at least as many key
vectors as the layer is wide (with fewer, C is singular and λC + KKᵀ has no stable solve: MEMIT's
update then breaks the model). :func:`check_second_moment` says which of these fails and how to fix it.
"""

from __future__ import annotations

import torch

from .cache import SecondMoment, StatsMismatchError

__all__ = ["StatsHealthError", "check_second_moment"]

# Relative tolerances: float32 sums of Σ k kᵀ are symmetric and PSD up to rounding of this order.
SYMMETRY_TOL = 1e-4
PSD_TOL = 1e-6


class StatsHealthError(StatsMismatchError):
    """Statistics that cannot be used: the message says what is wrong and how to get good ones."""


def check_second_moment(stat: SecondMoment, width: int | None = None, min_count: int | None = None) -> None:
    """Raise :class:`StatsHealthError` unless ``stat`` (Σ k kᵀ over ``count`` vectors, (d, d)) is a
    usable second moment: floating point, finite, symmetric, PSD within ``PSD_TOL`` · trace, not all
    zero, and summed over at least ``min_count`` vectors (default ``width``, else d; 0: no minimum)."""
    where = f"{stat.path}: " if stat.path is not None else ""
    mom2, d = stat.mom2, stat.mom2.shape[0]
    if not mom2.is_floating_point():
        raise StatsHealthError(f"{where}statistics are stored as {mom2.dtype}; they must be floating point")
    need = (width or d) if min_count is None else min_count
    if stat.count < need:
        raise StatsHealthError(
            f"{where}statistics hold {stat.count} key vectors, fewer than the layer's width {need}, so C is "
            f"singular: collect them from more text (at least {need} tokens; more is better), or set "
            "mom2_min_count to accept fewer"
        )
    if not bool(torch.isfinite(mom2).all()):
        raise StatsHealthError(f"{where}statistics hold non-finite values (inf or NaN): recompute them")
    c = mom2.to(torch.float64) / stat.count  # float64: the checks must not add rounding of their own
    scale = float(c.abs().max())
    if scale == 0.0:
        raise StatsHealthError(f"{where}statistics are all zero: recompute them from text")
    asym = float((c - c.T).abs().max()) / scale
    if asym > SYMMETRY_TOL:
        raise StatsHealthError(f"{where}statistics are not symmetric (relative asymmetry {asym:.2e}): recompute them")
    sym = (c + c.T) / 2
    trace = float(sym.diagonal().sum())
    if trace <= 0:
        raise StatsHealthError(
            f"{where}statistics are not positive semi-definite (trace {trace:.3g}): they are not a second moment of "
            "key vectors; recompute them"
        )
    shifted = sym + (PSD_TOL * trace) * torch.eye(d, dtype=sym.dtype, device=sym.device)
    if int(torch.linalg.cholesky_ex(shifted).info) != 0:
        low = float(torch.linalg.eigvalsh(sym)[0])
        raise StatsHealthError(
            f"{where}statistics are not positive semi-definite (smallest eigenvalue {low:.3g}, trace {trace:.3g}): "
            "they are not a second moment of key vectors; recompute them"
        )
