"""Rank-k update of a Cholesky factor in place: ``L ← chol(L Lᵀ + K Kᵀ)``.

The sequential editing methods (ENCORE, AlphaEdit, MEMIT with an edit history) add each edit's keys
K (d, k) to a d × d system; refactorising costs d³/3 flops per edit, updating the factor O(d² k).

The update is an orthogonal transformation of the rows of ``[L  K]`` (d × (d + k)): one Householder
reflector per column j of L, ``H_j = I − τ_j v_j v_jᵀ`` with ``v_j = [e_j; w_j]`` (w_j ∈ ℝᵏ), chosen
so that row j of K becomes zero, followed by the sign ``σ_j = ±1`` that makes the new L[j, j]
``+sqrt(L[j, j]² + ‖K[j]‖²)``. Each row c of ``[L K]`` is then changed by the reflectors j < c only,
independently of the other rows::

    s = τ_j (L[c, j] + w_j · K[c])       (for j = 0, 1, ..., c − 1, in order)
    L[c, j] = σ_j (L[c, j] − s)
    K[c]   −= s w_j

The reflector takes LAPACK's sign (new diagonal −sign(L[j, j]) ‖·‖, so ‖w_j‖ <= 1 and τ_j ∈ [1, 2])
and the sign is fixed afterwards: the other choice makes ‖w_j‖ ~ L[j, j] / ‖K[j]‖, which is harmless
one reflector at a time but costs two orders of magnitude of accuracy in the compact WY form.

so ``L' L'ᵀ + K' K'ᵀ = L Lᵀ + K Kᵀ`` with K' = 0: the new factor, with the numerical stability of
an orthogonal transformation (an update, unlike a downdate, cannot lose positive definiteness).

Blocked over panels of ``NB`` columns, as every backend does it: the panel's NB reflectors come from
its NB diagonal rows (sequential, small), then every row below applies them (rows independent:
parallel, one pass over the panel's columns). The Triton kernel applies a panel in compact WY form,
``[Lp Kb] ← [(Lp − Y) diag(σ)  Kb − Y W]`` with ``Y = (Lp + Kb Wᵀ) T`` (three small matrix products); the torch
path gets each panel's transformation from a QR factorisation of the panel's ``[L_d K_d]ᵀ``.

Contract, shared by every backend: L (d, d) float32/float64 with a positive diagonal; only its lower
triangle is read and written (the strict upper triangle is left as it is). K is not modified.
"""

from __future__ import annotations

import torch

from . import HAS_TRITON, INTERPRET, next_power_of_2

# Panel width and rows per program of the Triton kernels; key columns per pass (larger k is applied
# as successive updates by column chunks of K, which is the same update).
TRITON_NB = 32
TRITON_RB = 64
TRITON_MAX_K = 32
# Panel width of the torch path (a QR of (NB + k) × NB per panel).
TORCH_NB = 64

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _chol_update_panel_kernel(
        L_ptr,
        K_ptr,
        W_ptr,
        T_ptr,
        S_ptr,
        d,
        k,
        j0,
        l_row_stride,
        l_col_stride,
        k_row_stride,
        k_col_stride,
        NB: tl.constexpr,
        BK: tl.constexpr,
    ):
        """One program: the reflectors of columns j0 .. j0+NB-1 from the panel's diagonal rows.

        Updates L[j0:j0+NB, j0:j0+NB] (lower part) and zeroes K[j0:j0+NB]; writes W (NB × BK, row j:
        w_j), the compact-WY factor T (NB × NB, upper) and the signs σ (NB) to the workspaces.
        """
        rows = tl.arange(0, NB)
        cols = tl.arange(0, NB)
        kc = tl.arange(0, BK)
        grow = j0 + rows
        gcol = j0 + cols
        in_r = grow < d
        lower = rows[:, None] >= cols[None, :]
        lmask = in_r[:, None] & (gcol < d)[None, :] & lower
        l_ptrs = L_ptr + grow.to(tl.int64)[:, None] * l_row_stride + gcol[None, :] * l_col_stride
        k_ptrs = K_ptr + grow.to(tl.int64)[:, None] * k_row_stride + kc[None, :] * k_col_stride
        kmask = in_r[:, None] & (kc < k)[None, :]
        Ld = tl.load(l_ptrs, mask=lmask, other=0.0)
        Kd = tl.load(k_ptrs, mask=kmask, other=0.0)
        zero = Ld * 0.0
        Wm = Kd * 0.0
        T = zero
        S = tl.sum(zero, axis=1) + 1.0
        width = tl.minimum(d - j0, NB)
        for j in range(0, width):
            at_j = rows == j
            x = tl.sum(tl.where(at_j[:, None], Kd, 0.0), axis=0)  # K[j] (BK,)
            lcol = tl.sum(tl.where(cols[None, :] == j, Ld, 0.0), axis=1)  # L[:, j] (NB,)
            alpha = tl.sum(tl.where(at_j, lcol, 0.0), axis=0)
            norm = tl.sqrt(alpha * alpha + tl.sum(x * x, axis=0))
            has = norm > 0.0
            beta = tl.where(alpha >= 0.0, -norm, norm)  # LAPACK's sign: alpha - beta never cancels
            safe_beta = tl.where(has, beta, 1.0)
            v0 = tl.where(has, alpha - beta, 1.0)
            tau = tl.where(has, (beta - alpha) / safe_beta, 0.0)
            sgn = tl.where(has & (beta < 0.0), -1.0, 1.0)
            wv = tl.where(has, x / v0, 0.0)
            s = tl.where(rows > j, (lcol + tl.sum(Kd * wv[None, :], axis=1)) * tau, 0.0)
            newcol = tl.where(at_j, tl.where(has, norm, alpha), (lcol - s) * sgn)
            Ld = tl.where(cols[None, :] == j, newcol[:, None], Ld)
            Kd = tl.where(at_j[:, None], 0.0, Kd - s[:, None] * wv[None, :])
            # T[:j, j] = -tau T[:j, :j] (W[:j] w_j); T[j, j] = tau
            u = tl.sum(Wm * wv[None, :], axis=1)
            tcol = tl.where(at_j, tau, -tau * tl.sum(T * u[None, :], axis=1))
            T = tl.where(cols[None, :] == j, tcol[:, None], T)
            Wm = tl.where(at_j[:, None], wv[None, :], Wm)
            S = tl.where(at_j, sgn, S)
        tl.store(l_ptrs, Ld, mask=lmask)
        tl.store(k_ptrs, Kd, mask=kmask)
        tl.store(W_ptr + rows[:, None] * BK + kc[None, :], Wm)
        tl.store(T_ptr + rows[:, None] * NB + cols[None, :], T)
        tl.store(S_ptr + rows, S)

    @triton.jit
    def _chol_update_apply_kernel(
        L_ptr,
        K_ptr,
        W_ptr,
        T_ptr,
        S_ptr,
        d,
        k,
        j0,
        l_row_stride,
        l_col_stride,
        k_row_stride,
        k_col_stride,
        NB: tl.constexpr,
        BK: tl.constexpr,
        RB: tl.constexpr,
    ):
        """Rows j0+NB+pid*RB ...: ``Lp = (Lp − Y) diag(σ)``, ``Kb −= Y W`` with ``Y = (Lp + Kb Wᵀ) T``."""
        pid = tl.program_id(0)
        grow = j0 + NB + pid * RB + tl.arange(0, RB)
        gcol = j0 + tl.arange(0, NB)
        kc = tl.arange(0, BK)
        in_r = grow < d
        lmask = in_r[:, None] & (gcol < d)[None, :]
        kmask = in_r[:, None] & (kc < k)[None, :]
        l_ptrs = L_ptr + grow.to(tl.int64)[:, None] * l_row_stride + gcol[None, :] * l_col_stride
        k_ptrs = K_ptr + grow.to(tl.int64)[:, None] * k_row_stride + kc[None, :] * k_col_stride
        Lp = tl.load(l_ptrs, mask=lmask, other=0.0)
        Kb = tl.load(k_ptrs, mask=kmask, other=0.0)
        Wm = tl.load(W_ptr + tl.arange(0, NB)[:, None] * BK + kc[None, :])
        T = tl.load(T_ptr + tl.arange(0, NB)[:, None] * NB + tl.arange(0, NB)[None, :])
        S = tl.load(S_ptr + tl.arange(0, NB))
        # ieee: tf32 products would lose the precision the factor is kept in
        xv = Lp + tl.dot(Kb, tl.trans(Wm), input_precision="ieee")
        Y = tl.dot(xv, T, input_precision="ieee")
        tl.store(l_ptrs, (Lp - Y) * S[None, :], mask=lmask)
        tl.store(k_ptrs, Kb - tl.dot(Y, Wm, input_precision="ieee"), mask=kmask)


def _check(L: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """K as a (d, k) matrix after checking both arguments."""
    if L.dim() != 2 or L.shape[0] != L.shape[1]:
        raise ValueError(f"L must be a square (d, d) factor, got shape {tuple(L.shape)}")
    if L.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"L must be float32 or float64, got {L.dtype}")
    if K.dim() == 1:
        K = K.unsqueeze(1)
    if K.dim() != 2 or K.shape[0] != L.shape[0]:
        raise ValueError(f"K must be (d, k) or (d,) with d = {L.shape[0]}, got shape {tuple(K.shape)}")
    if not K.is_floating_point():
        raise TypeError(f"K must be a floating-point tensor, got {K.dtype}")
    if K.device != L.device:
        raise ValueError(f"K is on {K.device}, L on {L.device}")
    return K


def _triton_blocks(dtype: torch.dtype) -> tuple[int, int, int]:
    """(NB, RB, num_warps). The interpreter runs one program at a time: one warp. float64 tiles take
    twice the registers: eight warps keep the apply kernel's (RB × NB + RB × BK) tiles from spilling."""
    if INTERPRET:
        return TRITON_NB, TRITON_RB, 1
    return TRITON_NB, TRITON_RB, 8 if dtype == torch.float64 else 4


def cholesky_update_triton_(L: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Triton launcher: ``L ← chol(L Lᵀ + K Kᵀ)`` in place. L: (d, d) float32/float64, any strides;
    K: (d, k) or (d,), any float dtype (used in L's dtype, not modified). Returns L.

    Two launches per panel of NB columns (the panel's reflectors, then the rows below it); K is taken
    in column chunks of at most ``TRITON_MAX_K`` (successive updates).
    """
    if not HAS_TRITON:
        raise RuntimeError("triton is not importable")
    K = _check(L, K)
    d, k = K.shape
    if d == 0 or k == 0:
        return L
    nb, rb, warps = _triton_blocks(L.dtype)
    for c0 in range(0, k, TRITON_MAX_K):
        Kc = K[:, c0 : c0 + TRITON_MAX_K].to(L.dtype, copy=True).contiguous()
        kc = Kc.shape[1]
        bk = max(16, next_power_of_2(kc))
        W = torch.empty(nb, bk, dtype=L.dtype, device=L.device)
        T = torch.empty(nb, nb, dtype=L.dtype, device=L.device)
        S = torch.empty(nb, dtype=L.dtype, device=L.device)
        for j0 in range(0, d, nb):
            args = (L, Kc, W, T, S, d, kc, j0, L.stride(0), L.stride(1), Kc.stride(0), Kc.stride(1))
            _chol_update_panel_kernel[(1,)](*args, NB=nb, BK=bk, num_warps=warps)
            below = d - j0 - nb
            if below > 0:
                _chol_update_apply_kernel[(triton.cdiv(below, rb),)](*args, NB=nb, BK=bk, RB=rb, num_warps=warps)
    return L


# --------------------------------------------------------------------------------------------------
# torch


def cholesky_update_torch_(L: torch.Tensor, K: torch.Tensor, *, block: int = TORCH_NB) -> torch.Tensor:
    """The torch backend: ``L ← chol(L Lᵀ + K Kᵀ)`` in place, by panels of ``block`` columns.

    L: (d, d) float32/float64; K: (d, k) or (d,) (not modified). Each panel's orthogonal
    transformation Q ((nb + k) × (nb + k)) comes from ``torch.linalg.qr`` of the panel's
    ``[L_d K_d]ᵀ`` (signs fixed so the new diagonal is positive); the rows below get ``[Lp Kb] Q``.
    Temporaries: a few (d − j) × (nb + k) panels. Returns L.
    """
    K = _check(L, K)
    d, k = K.shape
    if d == 0 or k == 0:
        return L
    K = K.to(L.dtype, copy=True)
    for j0 in range(0, d, block):
        j1 = min(j0 + block, d)
        w = j1 - j0
        Ld = L[j0:j1, j0:j1]
        X = torch.cat([torch.tril(Ld), K[j0:j1]], dim=1)  # (w, w + k): the panel's diagonal rows
        Q, R = torch.linalg.qr(X.mT, mode="complete")  # Xᵀ = Q R, so X Q = Rᵀ = [L_d' 0]
        sign = torch.where(R.diagonal() < 0, -1.0, 1.0).to(L.dtype)
        Q[:, :w] *= sign
        lower = torch.ones(w, w, dtype=torch.bool, device=L.device).tril_()
        Ld.copy_(torch.where(lower, (R[:w] * sign[:, None]).mT, Ld))
        if j1 < d:
            Lp, Kb = L[j1:, j0:j1], K[j1:]
            new_k = Lp @ Q[:w, w:] + Kb @ Q[w:, w:]
            Lp.copy_(torch.addmm(Kb @ Q[w:, :w], Lp, Q[:w, :w]))
            Kb.copy_(new_k)
    return L


def cholesky_update_reference(L: torch.Tensor, K: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Pure-torch reference: the factor of ``L Lᵀ + K Kᵀ`` refactorised in ``dtype``, as a new tensor.

    L: (d, d) (lower triangle read), K: (d, k) or (d,). float64 gives the ground truth; L's own dtype
    gives what plain torch achieves by refactorising (the baseline of the tolerance rule).
    """
    K = _check(L, K)
    Lw = torch.tril(L).to(dtype)
    Kw = K.to(dtype)
    return torch.linalg.cholesky(Lw @ Lw.mT + Kw @ Kw.mT)


__all__ = [
    "TORCH_NB",
    "TRITON_MAX_K",
    "TRITON_NB",
    "TRITON_RB",
    "cholesky_update_reference",
    "cholesky_update_torch_",
    "cholesky_update_triton_",
]
