"""Checks of tensors read from files, made before any of them touches a model.

A saved session or an edit pack is read whole and judged against the model first: names limited to
the weights the methods edit, exact shapes (a (1, d) tensor would broadcast into (n, d) in
``copy_``), dtypes (``copy_`` would cast float16 into float32 silently), finite values. Each failure
is a ``ValueError`` that names the file, the tensor and the problem.
"""

from __future__ import annotations

from typing import Iterable

import torch

from ..errors import InputError

__all__ = ["check_tensor", "check_names", "factor_sizes", "check_factors", "FACTOR_DTYPES"]

FACTOR_DTYPES = (torch.float32, torch.float64)


def check_tensor(t: torch.Tensor, where: str, shape: Iterable[int], dtypes: Iterable[torch.dtype]) -> None:
    """``t`` has exactly ``shape``, one of ``dtypes`` and only finite values."""
    shape, dtypes = tuple(shape), tuple(dtypes)
    if tuple(t.shape) != shape:
        raise InputError(f"{where}: shape {tuple(t.shape)}, expected {shape}")
    if t.dtype not in dtypes:
        raise InputError(f"{where}: dtype {t.dtype}, expected {' or '.join(str(d) for d in dtypes)}")
    bad = int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0
    if bad:
        raise InputError(f"{where}: {bad} non-finite value(s) (NaN or inf)")


def check_names(found: Iterable[str], expected: Iterable[str], where: str, what: str) -> None:
    """``found`` names exactly the ``expected`` weights: none missing, none other."""
    found, expected = set(found), set(expected)
    missing, other = sorted(expected - found), sorted(found - expected)
    if missing:
        raise InputError(f"{where}: {what} missing for {', '.join(missing)}")
    if other:
        raise InputError(f"{where}: {what} for {', '.join(other)}, which this session does not edit "
                         f"(it edits {', '.join(sorted(expected))})")


def factor_sizes(adapter, weight: torch.Tensor) -> tuple[int, int]:
    """(d_ff, d_model) of an edited projection, from its stored layout."""
    d0, d1 = weight.shape
    return (d0, d1) if adapter.weight_is_in_out else (d1, d0)


def check_factors(keys: torch.Tensor, values: torch.Tensor, weight: torch.Tensor, adapter, where: str) -> None:
    """``keys (d_ff, r)`` and ``values (d_model, r)`` of one update of ``weight``: float32 or float64,
    finite, the same rank r ≥ 1."""
    d_ff, d_model = factor_sizes(adapter, weight)
    if keys.ndim != 2 or keys.shape[1] < 1:
        raise InputError(f"{where}: keys of shape {tuple(keys.shape)}, expected ({d_ff}, rank)")
    rank = keys.shape[1]
    check_tensor(keys, f"{where} keys", (d_ff, rank), FACTOR_DTYPES)
    check_tensor(values, f"{where} values", (d_model, rank), FACTOR_DTYPES)
