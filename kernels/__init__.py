"""Triton kernels for the linear-algebra hot spots, each beside its pure-torch reference.

Imported as ``fastedit.kernels`` (setup.py maps this folder to that name). One module per kernel:

- :mod:`fastedit.kernels.covariance`: ``C += Xᵀ X`` over the valid rows of a token batch (syrk: one
  triangle of blocks), plus the mirror that makes ``C`` symmetric once at the end.
- :mod:`fastedit.kernels.spd_solve`: batched Cholesky factorisation and triangular solves of many
  small symmetric positive-definite systems, with per-matrix failure codes.
- :mod:`fastedit.kernels.lowrank_update`: ``W += U Vᵀ`` in place for either weight orientation, with an
  optional compensation buffer (Kahan summation) so small updates to bf16/fp16 weights are kept.
- :mod:`fastedit.kernels.chol_update`: ``L ← chol(L Lᵀ + K Kᵀ)`` in place, the rank-k update of a
  Cholesky factor for systems that grow by each edit's keys (O(d² k) instead of O(d³)).

Engine code never calls these modules directly: it goes through :mod:`fastedit.ops`, which picks
the CUDA extension, Triton or torch and says which. Importing this package needs no triton (the
kernels are then simply unavailable) and initialises no CUDA.

Triton runs CPU tensors only in interpreter mode, which must be switched on (``TRITON_INTERPRET=1``)
before the ``@triton.jit`` functions here are defined, i.e. before this package is imported.
"""

from __future__ import annotations

import os

import torch

try:  # triton is optional: without it the torch and compiled paths still work
    import triton
    import triton.language as tl

    HAS_TRITON = True
    TRITON_IMPORT_ERROR = ""
except Exception as exc:  # ImportError, or a broken install raising something else at import
    triton = None
    tl = None
    HAS_TRITON = False
    TRITON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def _interpret_flag() -> bool:
    if HAS_TRITON:
        knobs = getattr(triton, "knobs", None)
        if knobs is not None:
            return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


# Whether the @triton.jit functions of this package were defined in interpreter mode: decided once, at
# import, because that is when triton decides it.
INTERPRET: bool = _interpret_flag()


def triton_unavailable_reason(*tensors: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot run on these tensors, or None when they can."""
    if not HAS_TRITON:
        return f"triton is not importable ({TRITON_IMPORT_ERROR})"
    device_types = {t.device.type for t in tensors}
    if len(device_types) != 1:
        return f"tensors are on several device types {sorted(device_types)}"
    (device_type,) = device_types
    if device_type == "cpu":
        if not INTERPRET:
            return (
                "Triton runs CPU tensors only in interpreter mode: set TRITON_INTERPRET=1 before "
                "fastedit.kernels is imported"
            )
        return None
    if device_type == "cuda":
        if INTERPRET:
            return "the Triton kernels were defined in interpreter mode (TRITON_INTERPRET=1)"
        return None
    return f"no Triton path for device type {device_type!r}"


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


__all__ = ["HAS_TRITON", "INTERPRET", "next_power_of_2", "triton_unavailable_reason"]
