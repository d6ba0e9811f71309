"""Batched Cholesky factorisation and SPD solves for many small systems at once.

The Woodbury cores of MEMIT batches across layers and AlphaEdit's reduced r × r systems are many
small symmetric positive-definite matrices. The Triton kernel runs one program per matrix with the
whole matrix in registers (n <= 64): it factors A = L Lᵀ column by column and, in the same loop,
runs the forward substitution L Y = B; the backward substitution Lᵀ X = Y follows.

Failure codes, shared by every backend: ``info`` is an int32 tensor with one entry per matrix, 0 when
the matrix was factored, else j >= 1, the order of the first leading minor that is not positive
definite (its pivot was <= 0, NaN or infinite). Kernels never stop on a failure and never report
success for a NaN; :mod:`fastedit.ops` turns a non-zero entry into ``NotPositiveDefiniteError``.
Only the lower triangle of A is read.
"""

from __future__ import annotations

import torch

from . import HAS_TRITON, INTERPRET, next_power_of_2

# Largest n the register-resident Triton kernel takes (a 64 × 64 fp64 tile is 128 registers a thread
# over 8 warps already); larger systems go to the CUDA extension or torch.
TRITON_MAX_N = 64
TRITON_MAX_K = 64

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _spd_solve_kernel(
        A_ptr,
        B_ptr,
        L_ptr,
        X_ptr,
        Info_ptr,
        n,
        k,
        a_batch_stride,
        a_row_stride,
        a_col_stride,
        b_batch_stride,
        b_row_stride,
        b_col_stride,
        l_batch_stride,
        l_row_stride,
        l_col_stride,
        x_batch_stride,
        x_row_stride,
        x_col_stride,
        FACTOR: tl.constexpr,
        SOLVE: tl.constexpr,
        STORE_L: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """One program per matrix.

        FACTOR: factor A (read from A_ptr); else read the factor L from A_ptr.
        SOLVE: solve A X = B for X (B_ptr -> X_ptr). STORE_L: write L (zero upper triangle) to L_ptr.
        """
        pid = tl.program_id(0).to(tl.int64)
        rows = tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_N)
        kcols = tl.arange(0, BLOCK_K)
        in_n = (rows[:, None] < n) & (cols[None, :] < n)
        lower = rows[:, None] >= cols[None, :]

        # Only the lower triangle is read; the upper one of the working tile is never used.
        a = tl.load(
            A_ptr + pid * a_batch_stride + rows[:, None] * a_row_stride + cols[None, :] * a_col_stride,
            mask=in_n & lower,
            other=0.0,
        )
        zero = a * 0.0
        if SOLVE:
            x = tl.load(
                B_ptr + pid * b_batch_stride + rows[:, None] * b_row_stride + kcols[None, :] * b_col_stride,
                mask=(rows[:, None] < n) & (kcols[None, :] < k),
                other=0.0,
            ).to(a.dtype)
        info = tl.full((), 0, tl.int32)

        # Forward sweep: column j of L, then row j of Y (L Y = B), in one pass.
        for j in range(0, n):
            colj = tl.sum(tl.where(cols[None, :] == j, a, zero), axis=1)  # a[:, j]
            if FACTOR:
                pivot = tl.sum(tl.where(rows == j, colj, 0.0), axis=0)
                # pivot * 0 == 0 is false for inf and NaN; pivot > 0 is false for NaN.
                ok = (pivot > 0.0) & (pivot * 0.0 == 0.0)
                info = tl.where((info == 0) & (ok == 0), j + 1, info)
                ljj = tl.sqrt(tl.where(ok, pivot, 1.0))
                lcol = tl.where(rows >= j, colj / ljj, 0.0)  # L[:, j]
                trailing = tl.where(cols > j, lcol, 0.0)
                a = tl.where(cols[None, :] == j, lcol[:, None], a - lcol[:, None] * trailing[None, :])
            else:
                lcol = tl.where(rows >= j, colj, 0.0)
                ljj = tl.sum(tl.where(rows == j, colj, 0.0), axis=0)
            if SOLVE:
                yj = tl.sum(tl.where(rows[:, None] == j, x, 0.0), axis=0) / ljj
                below = tl.where(rows > j, lcol, 0.0)
                x = tl.where(rows[:, None] == j, yj[None, :], x - below[:, None] * yj[None, :])

        if SOLVE:
            # Backward sweep: Lᵀ X = Y, rows n-1 .. 0; L[j, :j] is row j of the lower triangle.
            for jj in range(0, n):
                j = n - 1 - jj
                lrow = tl.sum(tl.where(rows[:, None] == j, a, zero), axis=0)  # a[j, :]
                ljj = tl.sum(tl.where(cols == j, lrow, 0.0), axis=0)
                xj = tl.sum(tl.where(rows[:, None] == j, x, 0.0), axis=0) / ljj
                left = tl.where(cols < j, lrow, 0.0)
                x = tl.where(rows[:, None] == j, xj[None, :], x - left[:, None] * xj[None, :])
            tl.store(
                X_ptr + pid * x_batch_stride + rows[:, None] * x_row_stride + kcols[None, :] * x_col_stride,
                x,
                mask=(rows[:, None] < n) & (kcols[None, :] < k),
            )
        if STORE_L:
            tl.store(
                L_ptr + pid * l_batch_stride + rows[:, None] * l_row_stride + cols[None, :] * l_col_stride,
                tl.where(lower, a, zero),
                mask=in_n,
            )
        if FACTOR:
            tl.store(Info_ptr + pid, info)


def _num_warps(block_n: int, dtype: torch.dtype) -> int:
    """Warps per matrix: enough threads that the n × n tile (and the right-hand sides) fit in registers."""
    if INTERPRET:
        return 1
    warps = {16: 1, 32: 2, 64: 4}.get(block_n, 4)
    return warps * 2 if dtype == torch.float64 else warps


def _launch(A, B, *, factor: bool, store_l: bool):
    batch, n, _ = A.shape
    k = B.shape[-1] if B is not None else 1
    L = torch.empty_like(A) if store_l else None
    X = torch.empty_like(B) if B is not None else None
    info = torch.zeros(batch, dtype=torch.int32, device=A.device)
    if batch == 0 or n == 0:
        if L is not None:
            L.zero_()
        return L, X, info
    block_n = max(16, next_power_of_2(n))
    block_k = max(16, next_power_of_2(k))
    dummy = A
    Bp = B if B is not None else dummy
    Lp = L if L is not None else dummy
    Xp = X if X is not None else dummy
    _spd_solve_kernel[(batch,)](
        A,
        Bp,
        Lp,
        Xp,
        info,
        n,
        k,
        *A.stride(),
        *Bp.stride(),
        *Lp.stride(),
        *Xp.stride(),
        FACTOR=factor,
        SOLVE=B is not None,
        STORE_L=store_l,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        num_warps=_num_warps(block_n, A.dtype),
    )
    return L, X, info


def _check(A: torch.Tensor, B: torch.Tensor | None = None) -> None:
    if A.dim() != 3 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"expected A of shape (batch, n, n), got {tuple(A.shape)}")
    if A.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"expected a float32 or float64 A, got {A.dtype}")
    if A.shape[-1] > TRITON_MAX_N:
        raise ValueError(f"the Triton kernel takes n <= {TRITON_MAX_N}, got n = {A.shape[-1]}")
    if B is not None:
        if B.dim() != 3 or B.shape[:2] != A.shape[:2]:
            raise ValueError(f"expected B of shape (batch, n, k) = {tuple(A.shape[:2])} + (k,), got {tuple(B.shape)}")
        if B.shape[-1] > TRITON_MAX_K:
            raise ValueError(f"the Triton kernel takes k <= {TRITON_MAX_K} right-hand sides, got {B.shape[-1]}")
        if B.dtype != A.dtype:
            raise TypeError(f"A and B dtypes differ: {A.dtype} and {B.dtype}")


def cholesky_ex_triton(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton launcher. A: (batch, n, n) float32/float64, n <= 64 -> (L (batch, n, n), info (batch,) int32)."""
    _check(A)
    L, _, info = _launch(A, None, factor=True, store_l=True)
    return L, info


def spd_solve_ex_triton(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton launcher. A: (batch, n, n), B: (batch, n, k), k <= 64 -> (X (batch, n, k), info (batch,) int32)."""
    _check(A, B)
    _, X, info = _launch(A, B, factor=True, store_l=False)
    return X, info


def cholesky_solve_triton(L: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Triton launcher. L: (batch, n, n) lower factor, B: (batch, n, k) -> X (batch, n, k) with L Lᵀ X = B."""
    _check(L, B)
    _, X, _ = _launch(L, B, factor=False, store_l=False)
    return X


# --------------------------------------------------------------------------------------------------
# torch


def cholesky_ex_torch(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch backend. A: (..., n, n) -> (L, info (...) int32), info as in this module's docstring.

    ``torch.linalg.cholesky_ex`` reports non-positive pivots; a factor whose diagonal is not finite
    (NaN or inf in A, which some GPU solvers let through) is reported too, at its first bad pivot.
    """
    L, info = torch.linalg.cholesky_ex(A)
    info = info.to(torch.int32)
    diag = L.diagonal(dim1=-2, dim2=-1)
    bad = ~torch.isfinite(diag)
    if A.shape[-1] > 0:
        first_bad = torch.where(bad.any(-1), bad.to(torch.int8).argmax(-1).to(torch.int32) + 1, 0)
        # the first failing minor is the smaller of the two codes (0 meaning none)
        both = (info > 0) & (first_bad > 0)
        info = torch.where(both, torch.minimum(info, first_bad), info + first_bad * (info == 0))
    return L, info


def spd_solve_ex_torch(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch backend. A: (..., n, n), B: (..., n, k) -> (X (..., n, k), info (...) int32)."""
    L, info = cholesky_ex_torch(A)
    return torch.cholesky_solve(B, L), info


def cholesky_solve_torch(L: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The torch backend. L: (..., n, n) lower factor, B: (..., n, k) -> X with L Lᵀ X = B.

    On CPUs two triangular solves: ``torch.cholesky_solve`` first copies L into column-major
    storage there, which costs more than the solve itself for a large factor (10-60x at n = 4096).
    """
    if L.device.type == "cpu":
        Y = torch.linalg.solve_triangular(L, B, upper=False)
        return torch.linalg.solve_triangular(L.mT, Y, upper=True)
    return torch.cholesky_solve(B, L)


def cholesky_reference(A: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Pure-torch reference factor of A (..., n, n) in ``dtype`` (float64: the ground truth)."""
    return torch.linalg.cholesky(A.to(dtype))


def spd_solve_reference(A: torch.Tensor, B: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Pure-torch reference solution of A X = B, A (..., n, n) SPD, B (..., n, k), in ``dtype``.

    float64 gives the ground truth; float32 gives what plain torch achieves in float32
    (``torch.linalg.cholesky`` then ``torch.cholesky_solve``).
    """
    L = torch.linalg.cholesky(A.to(dtype))
    return torch.cholesky_solve(B.to(dtype), L)


__all__ = [
    "TRITON_MAX_K",
    "TRITON_MAX_N",
    "cholesky_ex_torch",
    "cholesky_ex_triton",
    "cholesky_reference",
    "cholesky_solve_torch",
    "cholesky_solve_triton",
    "spd_solve_ex_torch",
    "spd_solve_ex_triton",
    "spd_solve_reference",
]
