"""The one dispatcher from engine code to the linear-algebra kernels.

Engine code calls these functions and nothing below them; each picks a backend by device and
availability and records which (:func:`last_backend`, and a log line the first time a choice is
made for an op and device):

========  ==================================================================================
torch     pure torch (BLAS/LAPACK on CPU, cuBLAS/cuSOLVER on GPU). Always available.
triton    the Triton kernels of :mod:`fastedit.kernels` (CUDA tensors; CPU tensors only in
          Triton's interpreter mode, for tests).
cuda      the CUDA kernels of the compiled extension ``fastedit._C`` (CUDA tensors).
cpp       the C++ CPU kernels of the compiled extension (CPU tensors).
========  ==================================================================================

Default choice: CPU tensors use torch (the fast CPU path), except the Cholesky factor update, which
torch lacks (cpp, then torch); CUDA tensors try, in order, covariance accumulation: triton, cuda,
torch; Cholesky and SPD solves: cuda (n <= 256), triton (n <= 64), torch; low-rank update: triton,
cuda, torch; Cholesky factor update: cuda, triton, torch. A backend is forced with
``with ops.use_backend("triton"): ...``, :func:`set_backend`, or the environment variable
``FASTEDIT_BACKEND`` (read at import); a forced backend that cannot run a call raises
:class:`BackendUnavailableError` with the reason instead of falling back.

The Triton launchers and the extension's operators are declared through ``torch.library`` (schema
plus fake implementation), so all of these functions trace under ``torch.compile``; the checked
solvers (:func:`cholesky`, :func:`spd_solve`) read the failure codes on the host and so end a graph
there; their ``*_ex`` forms do not.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Optional

import torch
from torch import Tensor

from . import _ext
from .kernels import chol_update as _chu
from .kernels import covariance as _cov
from .kernels import lowrank_update as _lru
from .kernels import spd_solve as _spd
from .kernels import triton_unavailable_reason

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "triton", "cuda", "cpp")

# Automatic choice on CUDA tensors, first that can run the call wins; CPU tensors use torch.
_CUDA_PREFERENCE = {
    "second_moment_accumulate_": ("triton", "cuda", "torch"),
    "cholesky_ex": ("cuda", "triton", "torch"),
    "spd_solve_ex": ("cuda", "triton", "torch"),
    "cholesky_solve": ("cuda", "triton", "torch"),
    "lowrank_update_": ("triton", "cuda", "torch"),
    "cholesky_update_": ("cuda", "triton", "torch"),
}
# Automatic choice on CPU tensors where torch is not the fast path (default: torch).
_CPU_PREFERENCE = {
    "cholesky_update_": ("cpp", "torch"),
}
# Above this n the one-block-per-matrix CUDA solver is not chosen automatically (torch's blocked
# solvers win); it still runs any n when forced.
_CUDA_SPD_AUTO_MAX_N = 256


class BackendUnavailableError(RuntimeError):
    """A forced backend cannot run this call (the message says why)."""


class NotPositiveDefiniteError(ValueError):
    """A matrix of a batch is not (numerically) symmetric positive definite.

    Attributes: ``index``, the batch index of the first failing matrix (a tuple over the batch
    dimensions; ``()`` for an unbatched call); ``order``, the order j of its first leading minor that
    is not positive definite (its j-th pivot was <= 0, NaN or infinite); ``failures``, every failing
    ``(index, order)`` pair in batch order.
    """

    def __init__(self, failures: list[tuple[tuple[int, ...], int]], batch_shape: tuple[int, ...], n: int):
        self.failures = failures
        self.index, self.order = failures[0]
        if not batch_shape:
            where = "the matrix"
        elif len(batch_shape) == 1:
            where = f"matrix {self.index[0]} of the batch of {batch_shape[0]}"
        else:
            where = f"matrix {self.index} of the batch of shape {batch_shape}"
        message = (
            f"{where} ({n} x {n}) is not positive definite: its leading minor of order {self.order} is not "
            "positive (pivot <= 0, NaN or infinite)"
        )
        if len(failures) > 1:
            shown = ", ".join(
                f"{idx[0] if len(idx) == 1 else idx} (order {order})" for idx, order in failures[:8]
            )
            more = ", ..." if len(failures) > 8 else ""
            message += f"; {len(failures)} matrices failed: {shown}{more}"
        super().__init__(message)


# --------------------------------------------------------------------------------------------------
# backend selection


def _check_backend_name(name: str | None) -> str | None:
    if name is None or name == "":
        return None
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS} (or None for automatic)")
    return name


_forced: str | None = _check_backend_name(os.environ.get("FASTEDIT_BACKEND", "").strip() or None)
_last: dict[str, str] = {}
_logged: set[tuple[str, str, str]] = set()


def set_backend(name: str | None) -> None:
    """Force every op to one backend (``"torch"``, ``"triton"``, ``"cuda"``, ``"cpp"``), or None for automatic."""
    global _forced
    _forced = _check_backend_name(name)


def forced_backend() -> str | None:
    """The forced backend, or None when the choice is automatic."""
    return _forced


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Within the block, force every op to backend ``name`` (None: automatic). Not thread-local."""
    global _forced
    previous = _forced
    _forced = _check_backend_name(name)
    try:
        yield
    finally:
        _forced = previous


_OP_ALIASES = {"spd_solve": "spd_solve_ex", "cholesky": "cholesky_ex"}


def last_backend(op: str) -> str | None:
    """The backend the last call of ``op`` used, or None if it was not called yet.

    ``op`` is the function's name here, e.g. ``"spd_solve"`` (same as ``"spd_solve_ex"``),
    ``"second_moment_accumulate_"``, ``"lowrank_update_"``.
    """
    return _last.get(_OP_ALIASES.get(op, op))


def _record(op: str, backend: str, device: torch.device) -> None:
    _last[op] = backend
    if torch.compiler.is_compiling():
        return
    key = (op, device.type, backend)
    if key not in _logged:
        _logged.add(key)
        logger.info("fastedit.ops: %s on %s uses the %s backend", op, device.type, backend)


def _ext_reason(device: torch.device, want_cuda: bool) -> str | None:
    name, kind = ("cuda", "CUDA") if want_cuda else ("cpp", "CPU")
    if device.type != ("cuda" if want_cuda else "cpu"):
        return f"the {name} backend runs {kind} tensors, got {device.type}"
    if not _ext.available():
        return f"the compiled extension fastedit._C is not loaded ({_ext.unavailable_reason()})"
    if want_cuda and not _ext.has_cuda():
        return "fastedit._C was built without CUDA kernels"
    return None


def _choose(op: str, device: torch.device, reason) -> str:
    """The backend for this call. ``reason(backend, auto)`` says why a backend cannot run it (or None)."""
    if _forced is not None:
        why = reason(_forced, False)
        if why is not None:
            raise BackendUnavailableError(
                f"fastedit.ops.{op}: backend {_forced!r} is forced but cannot run this call: {why}"
            )
        return _forced
    preference = _CUDA_PREFERENCE[op] if device.type == "cuda" else _CPU_PREFERENCE.get(op, ())
    for backend in preference:
        if reason(backend, True) is None:
            return backend
    return "torch"


def available_backends(op: str, *tensors: Tensor) -> dict[str, str | None]:
    """For each backend, None if it could run ``op`` on tensors like these, else the reason it cannot.

    ``tensors`` are the op's tensor arguments in order (as for the op itself).
    """
    reasons = {
        "second_moment_accumulate_": lambda b: _cov_reason(b, False, *tensors),
        "cholesky_ex": lambda b: _spd_reason(b, False, tensors[0], None),
        "spd_solve_ex": lambda b: _spd_reason(b, False, tensors[0], tensors[1]),
        "cholesky_solve": lambda b: _spd_reason(b, False, tensors[0], tensors[1]),
        "lowrank_update_": lambda b: _lowrank_reason(b, False, *tensors[:3]),
        "cholesky_update_": lambda b: _chol_update_reason(b, False, *tensors[:2]),
    }
    if op not in reasons:
        raise ValueError(f"unknown op {op!r}; expected one of {sorted(reasons)}")
    return {backend: reasons[op](backend) for backend in BACKENDS}


# --------------------------------------------------------------------------------------------------
# torch.library declarations of the Triton launchers (the extension's ops are declared in C++ and
# get their fakes in fastedit/_ext.py)


@torch.library.custom_op("fastedit_triton::syrk_accumulate_", mutates_args=("acc",))
def _triton_syrk_accumulate_(acc: Tensor, x: Tensor, valid: Optional[Tensor]) -> None:
    _cov.syrk_accumulate_triton_(acc, x, valid)


@_triton_syrk_accumulate_.register_fake
def _(acc, x, valid):
    return None


@torch.library.custom_op("fastedit_triton::cholesky_ex", mutates_args=())
def _triton_cholesky_ex(A: Tensor) -> tuple[Tensor, Tensor]:
    return _spd.cholesky_ex_triton(A)


@_triton_cholesky_ex.register_fake
def _(A):
    return torch.empty_like(A), A.new_empty(A.shape[:1], dtype=torch.int32)


@torch.library.custom_op("fastedit_triton::spd_solve_ex", mutates_args=())
def _triton_spd_solve_ex(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    return _spd.spd_solve_ex_triton(A, B)


@_triton_spd_solve_ex.register_fake
def _(A, B):
    return torch.empty_like(B), A.new_empty(A.shape[:1], dtype=torch.int32)


@torch.library.custom_op("fastedit_triton::cholesky_solve", mutates_args=())
def _triton_cholesky_solve(L: Tensor, B: Tensor) -> Tensor:
    return _spd.cholesky_solve_triton(L, B)


@_triton_cholesky_solve.register_fake
def _(L, B):
    return torch.empty_like(B)


@torch.library.custom_op("fastedit_triton::lowrank_update_", mutates_args=("W", "compensation"))
def _triton_lowrank_update_(W: Tensor, U: Tensor, V: Tensor, transpose: bool, compensation: Optional[Tensor]) -> None:
    _lru.lowrank_update_triton_(W, U, V, transpose, compensation)


@_triton_lowrank_update_.register_fake
def _(W, U, V, transpose, compensation):
    return None


@torch.library.custom_op("fastedit_triton::cholesky_update_", mutates_args=("L",))
def _triton_cholesky_update_(L: Tensor, K: Tensor) -> None:
    _chu.cholesky_update_triton_(L, K)


@_triton_cholesky_update_.register_fake
def _(L, K):
    return None


# --------------------------------------------------------------------------------------------------
# covariance accumulation


def _cov_reason(backend: str, auto: bool, acc: Tensor, x: Tensor, valid: Tensor | None = None) -> str | None:
    if backend == "torch":
        return None
    if backend == "triton":
        why = triton_unavailable_reason(acc, x)
        if why is None and x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            why = f"the Triton kernel takes float16/bfloat16/float32 x, got {x.dtype}"
        return why
    if backend == "cuda":
        return _ext_reason(acc.device, want_cuda=True)
    if backend == "cpp":
        return "no C++ kernel for covariance accumulation: torch's BLAS path is the CPU implementation"
    return f"unknown backend {backend!r}"


def second_moment_accumulate_(acc: Tensor, x: Tensor, valid: Tensor | None = None) -> Tensor:
    """Accumulate the uncentred second moment of a batch of keys: ``acc += x[valid]ᵀ x[valid]``, in place.

    acc: (d, d) float32 or float64, the running sum Σ k kᵀ. x: (..., d) keys of any float dtype
    (bf16/fp16 products are exact in float32). valid: optional bool mask of x's leading shape
    (e.g. the attention mask of (batch, seq, d) activations); False rows are skipped.

    Contract: only the **lower triangle** of acc (diagonal included) is updated and meaningful
    between calls; the upper triangle holds backend-dependent values. Call :func:`symmetrize_` once,
    after the last batch, before reading acc as a matrix. Within a call, products and sums are
    float32 (float64 for float64 x) and are added to acc in acc's dtype. Returns acc.
    """
    if acc.dim() != 2 or acc.shape[0] != acc.shape[1]:
        raise ValueError(f"acc must be square (d, d), got {tuple(acc.shape)}")
    if acc.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"acc must be float32 or float64, got {acc.dtype}")
    d = acc.shape[0]
    if x.shape[-1] != d:
        raise ValueError(f"x must be (..., d) with d = {d}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.device != acc.device:
        raise ValueError(f"x is on {x.device}, acc on {acc.device}")
    if valid is not None:
        if valid.shape != x.shape[:-1]:
            raise ValueError(f"valid must have x's leading shape {tuple(x.shape[:-1])}, got {tuple(valid.shape)}")
        if valid.dtype != torch.bool:
            raise TypeError(f"valid must be a bool tensor, got {valid.dtype}")
        valid = valid.reshape(-1)
    x = x.reshape(-1, d)
    backend = _choose("second_moment_accumulate_", acc.device, lambda b, auto: _cov_reason(b, auto, acc, x, valid))
    _record("second_moment_accumulate_", backend, acc.device)
    if backend == "triton":
        _triton_syrk_accumulate_(acc, x, valid)
    elif backend == "cuda":
        torch.ops.fastedit.syrk_accumulate_(acc, x, valid)
    else:
        _cov.syrk_accumulate_torch_(acc, x, valid)
    return acc


def symmetrize_(acc: Tensor) -> Tensor:
    """Mirror the lower triangle of acc (d, d) into its upper triangle, in place; call once at the end.

    Uses panel copies (no d × d temporary). Returns acc.
    """
    if acc.dim() != 2 or acc.shape[0] != acc.shape[1]:
        raise ValueError(f"acc must be square (d, d), got {tuple(acc.shape)}")
    return _cov.symmetrize_(acc)


# --------------------------------------------------------------------------------------------------
# batched SPD solves


def _spd_reason(backend: str, auto: bool, A: Tensor, B: Tensor | None) -> str | None:
    n = A.shape[-1]
    if backend == "torch":
        return None
    if backend == "triton":
        why = triton_unavailable_reason(A, *(() if B is None else (B,)))
        if why is None and n > _spd.TRITON_MAX_N:
            why = f"the Triton kernel keeps the matrix in registers: n <= {_spd.TRITON_MAX_N}, got {n}"
        if why is None and B is not None and B.shape[-1] > _spd.TRITON_MAX_K:
            why = f"the Triton kernel takes at most {_spd.TRITON_MAX_K} right-hand sides, got {B.shape[-1]}"
        return why
    if backend in ("cuda", "cpp"):
        why = _ext_reason(A.device, want_cuda=backend == "cuda")
        if why is None and backend == "cuda" and auto and n > _CUDA_SPD_AUTO_MAX_N:
            why = f"n = {n} > {_CUDA_SPD_AUTO_MAX_N}: torch's blocked solvers are faster there"
        return why
    return f"unknown backend {backend!r}"


def _batched_square(A: Tensor, name: str = "A") -> tuple[Tensor, tuple[int, ...]]:
    if A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"{name} must be (..., n, n), got {tuple(A.shape)}")
    if A.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64, got {A.dtype}")
    n = A.shape[-1]
    batch_shape = tuple(A.shape[:-2])
    return A.reshape(-1, n, n), batch_shape


def _batched_rhs(A: Tensor, B: Tensor, batch_shape: tuple[int, ...]) -> tuple[Tensor, bool]:
    """B as (b, n, k); True when B was a batch of vectors (..., n)."""
    n = A.shape[-1]
    if B.dtype != A.dtype:
        raise TypeError(f"B ({B.dtype}) must have A's dtype ({A.dtype})")
    if B.device != A.device:
        raise ValueError(f"B is on {B.device}, A on {A.device}")
    if tuple(B.shape) == batch_shape + (n,):
        return B.reshape(-1, n, 1), True
    if B.dim() == len(batch_shape) + 2 and tuple(B.shape[:-1]) == batch_shape + (n,):
        return B.reshape(-1, n, B.shape[-1]), False
    raise ValueError(
        f"B must be (..., n, k) or (..., n) with batch shape {batch_shape} and n = {n}, got {tuple(B.shape)}"
    )


def _raise_if_failed(info: Tensor, batch_shape: tuple[int, ...], n: int) -> None:
    if info.numel() == 0 or not bool(info.any()):
        return
    flat = torch.nonzero(info.reshape(-1)).flatten().tolist()
    orders = info.reshape(-1)[flat].tolist()
    failures = []
    for position, order in zip(flat, orders):
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(position), batch_shape)) if batch_shape else ()
        failures.append((index, int(order)))
    raise NotPositiveDefiniteError(failures, batch_shape, n)


def cholesky_ex(A: Tensor) -> tuple[Tensor, Tensor]:
    """Batched Cholesky factor without a host sync: A = L Lᵀ.

    A: (..., n, n) float32/float64, symmetric positive definite (only its lower triangle is read).
    Returns L (..., n, n) lower triangular (upper triangle zero) and info (...) int32: 0 where the
    factorisation succeeded, else the order of the first leading minor that is not positive definite
    (L is then unspecified there). Use :func:`cholesky` to raise instead.
    """
    A3, batch_shape = _batched_square(A)
    backend = _choose("cholesky_ex", A.device, lambda b, auto: _spd_reason(b, auto, A3, None))
    _record("cholesky_ex", backend, A.device)
    if backend == "triton":
        L, info = _triton_cholesky_ex(A3)
    elif backend in ("cuda", "cpp"):
        L, info = torch.ops.fastedit.cholesky_ex(A3)
    else:
        L, info = _spd.cholesky_ex_torch(A3)
    return L.reshape(A.shape), info.reshape(batch_shape)


def cholesky(A: Tensor) -> Tensor:
    """Batched Cholesky factor L (..., n, n) of A (..., n, n); raises :class:`NotPositiveDefiniteError`
    naming the first failing matrix and leading minor (one host sync to read the failure codes)."""
    L, info = cholesky_ex(A)
    _raise_if_failed(info, tuple(A.shape[:-2]), A.shape[-1])
    return L


def cholesky_solve(L: Tensor, B: Tensor) -> Tensor:
    """Solve L Lᵀ X = B for X with a lower Cholesky factor L (..., n, n) (from :func:`cholesky`).

    B: (..., n, k) or (..., n), same batch shape and dtype as L. Returns X shaped like B.
    """
    L3, batch_shape = _batched_square(L, "L")
    B3, _ = _batched_rhs(L, B, batch_shape)
    backend = _choose("cholesky_solve", L.device, lambda b, auto: _spd_reason(b, auto, L3, B3))
    _record("cholesky_solve", backend, L.device)
    if backend == "triton":
        X = _triton_cholesky_solve(L3, B3)
    elif backend in ("cuda", "cpp"):
        X = torch.ops.fastedit.cholesky_solve(L3, B3)
    else:
        X = _spd.cholesky_solve_torch(L3, B3)
    return X.reshape(B.shape)


def spd_solve_ex(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """Solve A X = B for symmetric positive-definite A, without a host sync.

    A: (..., n, n) float32/float64 (only the lower triangle is read); B: (..., n, k) or (..., n),
    same batch shape and dtype. Returns X shaped like B and info (...) int32 as for
    :func:`cholesky_ex` (X is unspecified where info != 0).
    """
    A3, batch_shape = _batched_square(A)
    B3, _ = _batched_rhs(A, B, batch_shape)
    backend = _choose("spd_solve_ex", A.device, lambda b, auto: _spd_reason(b, auto, A3, B3))
    _record("spd_solve_ex", backend, A.device)
    if backend == "triton":
        X, info = _triton_spd_solve_ex(A3, B3)
    elif backend in ("cuda", "cpp"):
        X, info = torch.ops.fastedit.spd_solve_ex(A3, B3)
    else:
        X, info = _spd.spd_solve_ex_torch(A3, B3)
    return X.reshape(B.shape), info.reshape(batch_shape)


def spd_solve(A: Tensor, B: Tensor) -> Tensor:
    """Solve A X = B for symmetric positive-definite A (..., n, n), B (..., n, k) or (..., n).

    Batched over the leading dimensions (one launch for the whole batch on the GPU). Raises
    :class:`NotPositiveDefiniteError` naming the first failing matrix of the batch and its leading
    minor, never returns NaNs for a failed factorisation. Returns X shaped like B.
    """
    X, info = spd_solve_ex(A, B)
    _raise_if_failed(info, tuple(A.shape[:-2]), A.shape[-1])
    return X


# --------------------------------------------------------------------------------------------------
# low-rank update


def _lowrank_reason(backend: str, auto: bool, W: Tensor, U: Tensor, V: Tensor) -> str | None:
    if backend == "torch":
        return None
    if backend == "triton":
        why = triton_unavailable_reason(W, U, V)
        if why is None and W.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            why = f"the Triton kernel updates float32/bfloat16/float16 weights, got {W.dtype}"
        return why
    if backend in ("cuda", "cpp"):
        return _ext_reason(W.device, want_cuda=backend == "cuda")
    return f"unknown backend {backend!r}"


def new_compensation(W: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """A zeroed compensation buffer for :func:`lowrank_update_`: W's shape and device, float32 by default.

    float32 keeps every update exactly to float32 precision (4 bytes per weight); W's own dtype halves
    the memory for bf16/fp16 weights and still keeps drift well under one ulp over thousands of updates.
    """
    if dtype not in (torch.float32, W.dtype):
        raise TypeError(f"compensation must be float32 or W's dtype {W.dtype}, got {dtype}")
    return torch.zeros(W.shape, dtype=dtype, device=W.device)


def lowrank_update_(
    W: Tensor,
    U: Tensor,
    V: Tensor,
    *,
    transpose: bool = False,
    compensation: Tensor | None = None,
) -> Tensor:
    """Add a low-rank update to a weight in place: ``ΔW = U Vᵀ`` in the math (d_out, d_in) orientation.

    U: (d_out, r) or (d_out,) for rank 1; V: (d_in, r) or (d_in,). W is the stored weight:
    (d_out, d_in) when ``transpose=False`` (``nn.Linear``), W += U Vᵀ; (d_in, d_out) when
    ``transpose=True`` (GPT-2's ``Conv1D``), W += V Uᵀ. No (d_out, d_in) temporary on the Triton and
    compiled paths (the torch path works in bounded row chunks). ΔW is formed in float32 (float64 for
    float64 W) and added with one rounding to W's dtype.

    compensation: optional buffer like W (float32 or W's dtype, from :func:`new_compensation`), updated
    in place: Kahan summation, so ``W + compensation`` carries the exact running sum and W stays within
    half an ulp of it, however many small updates are applied. Returns W.
    """
    if U.dim() == 1:
        U = U.unsqueeze(1)
    if V.dim() == 1:
        V = V.unsqueeze(1)
    _lru._orient(W, U, V, transpose)  # shape checks with a clear message
    _lru._check_compensation(W, compensation)
    if U.device != W.device or V.device != W.device:
        raise ValueError(f"W, U, V must be on one device, got {W.device}, {U.device}, {V.device}")
    backend = _choose("lowrank_update_", W.device, lambda b, auto: _lowrank_reason(b, auto, W, U, V))
    _record("lowrank_update_", backend, W.device)
    if backend == "triton":
        _triton_lowrank_update_(W, U, V, transpose, compensation)
    elif backend in ("cuda", "cpp"):
        torch.ops.fastedit.lowrank_update_(W, U, V, transpose, compensation)
    else:
        _lru.lowrank_update_torch_(W, U, V, transpose, compensation)
    return W


# --------------------------------------------------------------------------------------------------
# Cholesky factor update


def _chol_update_reason(backend: str, auto: bool, L: Tensor, K: Tensor) -> str | None:
    if backend == "torch":
        return None
    if backend == "triton":
        return triton_unavailable_reason(L, K)
    if backend in ("cuda", "cpp"):
        return _ext_reason(L.device, want_cuda=backend == "cuda")
    return f"unknown backend {backend!r}"


def cholesky_update_(L: Tensor, K: Tensor) -> Tensor:
    """Update a lower Cholesky factor in place by the keys K: ``L ← chol(L Lᵀ + K Kᵀ)``.

    L: (d, d) float32/float64, lower triangular with a positive diagonal (from :func:`cholesky`);
    only its lower triangle is read and written. K: (d, k) or (d,) of any float dtype (used in L's
    dtype; not modified). O(d² k) work instead of the O(d³) of refactorising; orthogonal
    transformations, so as accurate as a fresh factorisation. Returns L.
    """
    K = _chu._check(L, K)  # shape, dtype and device checks with a clear message
    backend = _choose("cholesky_update_", L.device, lambda b, auto: _chol_update_reason(b, auto, L, K))
    _record("cholesky_update_", backend, L.device)
    if backend == "triton":
        _triton_cholesky_update_(L, K)
    elif backend in ("cuda", "cpp"):
        torch.ops.fastedit.cholesky_update_(L, K)
    else:
        _chu.cholesky_update_torch_(L, K)
    return L


__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "NotPositiveDefiniteError",
    "available_backends",
    "cholesky",
    "cholesky_ex",
    "cholesky_solve",
    "cholesky_update_",
    "forced_backend",
    "last_backend",
    "lowrank_update_",
    "new_compensation",
    "second_moment_accumulate_",
    "set_backend",
    "spd_solve",
    "spd_solve_ex",
    "symmetrize_",
    "use_backend",
]
