"""Fused low-rank weight update ``W += U Vᵀ`` in place, with optional compensated summation.

Orientation convention (shared by every backend): the update in the math orientation is
``ΔW = U Vᵀ`` of shape (d_out, d_in), with U: (d_out, r) and V: (d_in, r). W is stored either as
(d_out, d_in) (``transpose=False``: torch ``nn.Linear``) or as (d_in, d_out) (``transpose=True``:
GPT-2's ``Conv1D``), in which case ``W += (U Vᵀ)ᵀ = V Uᵀ``. No (d_out, d_in) temporary is made: each
program computes its tile of ΔW from rows of U and V in float32 and adds it to W's tile.

Compensation: an edit's ΔW is small against W, and in bf16 (8 significant bits) most of it rounds
away; thousands of sequential edits then drift from their exact sum. With a compensation buffer C
(same shape as W, float32 or W's dtype) the pair (W, C) holds W's exact value as ``W + C``: each update
is Kahan's compensated summation, per element, in float32::

    y = ΔW + C             # the update plus what earlier updates lost
    s = round(W + y)       # the new stored weight (W's dtype)
    C = y - (s - W)        # what this rounding lost (s - W is exact)

so W stays within half an ulp (plus float32 rounding) of the exact sum of all updates.
"""

from __future__ import annotations

import torch

from . import HAS_TRITON, INTERPRET

# Ranks up to this use outer products in registers; larger ranks use tl.dot over rank chunks.
_OUTER_MAX_RANK = 16

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _round_to(x, dtype: tl.constexpr, BF16_BY_BITS: tl.constexpr):
        """Round float32 x to dtype, to nearest even.

        The interpreter truncates float32 -> bfloat16 casts, so there the rounding is done on the bits.
        """
        if BF16_BY_BITS and dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = bits + (((bits >> 16) & 1) + 0x7FFF)
            rounded = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
            return tl.where(x == x, rounded, x.to(tl.bfloat16))
        else:
            return x.to(dtype)

    @triton.jit
    def _lowrank_update_kernel(
        W_ptr,
        P_ptr,
        Q_ptr,
        C_ptr,
        m,
        n,
        r,
        w_row_stride,
        w_col_stride,
        p_row_stride,
        p_col_stride,
        q_row_stride,
        q_col_stride,
        c_row_stride,
        c_col_stride,
        HAS_COMP: tl.constexpr,
        USE_DOT: tl.constexpr,
        BF16_BY_BITS: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_R: tl.constexpr,
    ):
        """W[i, j] += Σ_r P[i, r] Q[j, r] on one (BLOCK_M × BLOCK_N) tile of the stored W (m × n)."""
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_m = offs_m < m
        mask_n = offs_n < n

        delta = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if USE_DOT:
            offs_r = tl.arange(0, BLOCK_R)
            for r0 in range(0, r, BLOCK_R):
                rr = r0 + offs_r
                p = tl.load(
                    P_ptr + offs_m[:, None] * p_row_stride + rr[None, :] * p_col_stride,
                    mask=mask_m[:, None] & (rr[None, :] < r),
                    other=0.0,
                )
                q = tl.load(
                    Q_ptr + offs_n[:, None] * q_row_stride + rr[None, :] * q_col_stride,
                    mask=mask_n[:, None] & (rr[None, :] < r),
                    other=0.0,
                )
                # ieee: a tf32 product would lose more than the bf16 rounding this kernel avoids
                delta = tl.dot(p, tl.trans(q), delta, input_precision="ieee")
        else:
            for rr in range(0, r):
                p = tl.load(P_ptr + offs_m * p_row_stride + rr * p_col_stride, mask=mask_m, other=0.0)
                q = tl.load(Q_ptr + offs_n * q_row_stride + rr * q_col_stride, mask=mask_n, other=0.0)
                delta += p[:, None] * q[None, :]

        mask = mask_m[:, None] & mask_n[None, :]
        w_ptrs = W_ptr + offs_m.to(tl.int64)[:, None] * w_row_stride + offs_n[None, :] * w_col_stride
        w_raw = tl.load(w_ptrs, mask=mask, other=0.0)
        w = w_raw.to(tl.float32)
        if HAS_COMP:
            c_ptrs = C_ptr + offs_m.to(tl.int64)[:, None] * c_row_stride + offs_n[None, :] * c_col_stride
            c_raw = tl.load(c_ptrs, mask=mask, other=0.0)
            y = delta + c_raw.to(tl.float32)
            s = _round_to(w + y, w_raw.dtype, BF16_BY_BITS)
            c_new = y - (s.to(tl.float32) - w)
            tl.store(w_ptrs, s, mask=mask)
            tl.store(c_ptrs, _round_to(c_new, c_raw.dtype, BF16_BY_BITS), mask=mask)
        else:
            tl.store(w_ptrs, _round_to(w + delta, w_raw.dtype, BF16_BY_BITS), mask=mask)


def _blocks(use_dot: bool) -> dict:
    """Tile sizes and warps. The update streams W (and C) once: small tiles per thread keep registers
    low (no spills) and many warps in flight; the dot path (large ranks) keeps a 64 x 64 fp32 tile."""
    if INTERPRET:
        return {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_R": 16 if use_dot else 1, "num_warps": 1}
    if use_dot:
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_R": 16, "num_warps": 4}
    return {"BLOCK_M": 16, "BLOCK_N": 128, "BLOCK_R": 1, "num_warps": 4}


def _orient(W: torch.Tensor, U: torch.Tensor, V: torch.Tensor, transpose: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, Q) with W_stored += P Qᵀ, after checking shapes."""
    if W.dim() != 2 or U.dim() != 2 or V.dim() != 2:
        raise ValueError(f"expected 2-d W, U, V, got shapes {tuple(W.shape)}, {tuple(U.shape)}, {tuple(V.shape)}")
    if U.shape[1] != V.shape[1]:
        raise ValueError(f"U (d_out, r) and V (d_in, r) disagree on r: {tuple(U.shape)} and {tuple(V.shape)}")
    P, Q = (V, U) if transpose else (U, V)
    if (P.shape[0], Q.shape[0]) != tuple(W.shape):
        want = "(d_in, d_out)" if transpose else "(d_out, d_in)"
        raise ValueError(
            f"W {tuple(W.shape)} does not match U {tuple(U.shape)} and V {tuple(V.shape)} "
            f"with transpose={transpose}: expected W of shape {want} = {(P.shape[0], Q.shape[0])}"
        )
    return P, Q


def _check_compensation(W: torch.Tensor, compensation: torch.Tensor | None) -> None:
    if compensation is None:
        return
    if compensation.shape != W.shape:
        raise ValueError(f"compensation {tuple(compensation.shape)} must have W's shape {tuple(W.shape)}")
    if compensation.dtype not in (torch.float32, W.dtype):
        raise TypeError(f"compensation must be float32 or W's dtype {W.dtype}, got {compensation.dtype}")
    if compensation.device != W.device:
        raise ValueError(f"compensation is on {compensation.device}, W on {W.device}")


def lowrank_update_triton_(
    W: torch.Tensor,
    U: torch.Tensor,
    V: torch.Tensor,
    transpose: bool = False,
    compensation: torch.Tensor | None = None,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Triton launcher: ``W += U Vᵀ`` (``transpose=False``) or ``W += V Uᵀ`` (``transpose=True``), in place.

    W: (d_out, d_in) or (d_in, d_out), float32/bfloat16/float16, any strides. U: (d_out, r),
    V: (d_in, r), any float dtype (used in float32). compensation: None or like W, float32 or W's
    dtype, updated in place. Returns W.
    """
    if not HAS_TRITON:
        raise RuntimeError("triton is not importable")
    if W.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"the Triton kernel updates float32/bfloat16/float16 weights, got {W.dtype}")
    P, Q = _orient(W, U, V, transpose)
    _check_compensation(W, compensation)
    m, n = W.shape
    r = P.shape[1]
    if m == 0 or n == 0 or (r == 0 and compensation is None):
        return W
    # The factors are small (rank r): one float32 copy each keeps the kernel's loads simple.
    P = P.to(torch.float32)
    Q = Q.to(torch.float32)
    use_dot = r > _OUTER_MAX_RANK
    cfg = _blocks(use_dot)
    bm = block_m or cfg["BLOCK_M"]
    bn = block_n or cfg["BLOCK_N"]
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    C = compensation if compensation is not None else W
    _lowrank_update_kernel[grid](
        W,
        P,
        Q,
        C,
        m,
        n,
        r,
        W.stride(0),
        W.stride(1),
        P.stride(0),
        P.stride(1),
        Q.stride(0),
        Q.stride(1),
        C.stride(0),
        C.stride(1),
        HAS_COMP=compensation is not None,
        USE_DOT=use_dot,
        BF16_BY_BITS=INTERPRET,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_R=cfg["BLOCK_R"],
        num_warps=cfg["num_warps"],
    )
    return W


# --------------------------------------------------------------------------------------------------
# torch


def lowrank_update_torch_(
    W: torch.Tensor,
    U: torch.Tensor,
    V: torch.Tensor,
    transpose: bool = False,
    compensation: torch.Tensor | None = None,
    *,
    max_chunk_elements: int | None = None,
) -> torch.Tensor:
    """The torch backend: same arithmetic as the kernel, by row chunks of the stored W, in place.

    W: (d_out, d_in) or (d_in, d_out) (see the module docstring), any float dtype. U: (d_out, r),
    V: (d_in, r). compensation: None or like W (float32 or W's dtype). Temporaries are a few float32
    copies of one chunk of ``max_chunk_elements`` elements (default: 2^18 on CPU, where chunks that
    stay in cache make it ~10x faster than whole-matrix temporaries; 2^24 on GPUs, where fewer
    launches matter more), never d_out × d_in. Computes in float32 (float64 for float64 W). Returns W.
    """
    if max_chunk_elements is None:
        max_chunk_elements = 1 << 18 if W.device.type == "cpu" else 1 << 24
    P, Q = _orient(W, U, V, transpose)
    _check_compensation(W, compensation)
    m, n = W.shape
    if m == 0 or n == 0:
        return W
    compute = torch.float64 if W.dtype == torch.float64 else torch.float32
    P = P.to(compute)
    Qt = Q.to(compute).mT
    if compensation is None and W.dtype == compute:
        # nothing to round or remember: BLAS updates W in place (beta = 1), no temporary at all
        return W.addmm_(P, Qt)
    rows = max(1, max_chunk_elements // max(n, 1))
    for s in range(0, m, rows):
        e = min(s + rows, m)
        delta = P[s:e] @ Qt  # (e - s, n) in the compute dtype
        w_chunk = W[s:e]
        w = w_chunk.to(compute)  # may alias W itself: no in-place ops on it below
        if compensation is None:
            w_chunk.copy_(w + delta)  # one rounding, to W's dtype
            continue
        c_chunk = compensation[s:e]
        y = delta.add_(c_chunk.to(compute))
        stored = (w + y).to(W.dtype)
        c_new = y - (stored.to(compute) - w)
        w_chunk.copy_(stored)
        c_chunk.copy_(c_new)
    return W


def lowrank_update_reference(
    W: torch.Tensor,
    U: torch.Tensor,
    V: torch.Tensor,
    transpose: bool = False,
    compensation: torch.Tensor | None = None,
    upcast: bool = True,
) -> torch.Tensor:
    """Pure-torch reference of the update, as a new tensor of the stored W's shape.

    upcast=True: the exact value ``W + C + ΔW`` in float64 (ground truth; C the compensation, if any).
    upcast=False: what plain torch gives in W's precision, ``W + (U Vᵀ)`` with every operand in W's
    dtype (the baseline of the tolerance rule; compensation ignored).
    """
    P, Q = _orient(W, U, V, transpose)
    if upcast:
        out = W.to(torch.float64) + P.to(torch.float64) @ Q.to(torch.float64).mT
        if compensation is not None:
            out = out + compensation.to(torch.float64)
        return out
    return W + P.to(W.dtype) @ Q.to(W.dtype).mT


__all__ = ["lowrank_update_reference", "lowrank_update_torch_", "lowrank_update_triton_"]
