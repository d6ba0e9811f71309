"""Second-moment (uncentred covariance) accumulation: ``C += Xᵀ X`` over the valid rows of X.

X is a batch of key vectors (tokens × d, d = d_ff of the edited projection); C is the running sum
``Σ k kᵀ`` that the statistics pass accumulates over ~10⁸ tokens. C is symmetric, so the kernel
computes only the blocks on and below the diagonal (a symmetric rank-k update, "syrk") and
:func:`symmetrize_` mirrors the lower triangle into the upper one once, at the end.

Contract shared by every backend (torch, Triton, CUDA): between accumulate calls only the lower
triangle of C (diagonal included) is meaningful; the upper triangle holds whatever each backend left
there (zeros, stale partial sums, or the full product) until :func:`symmetrize_` is called.

Precision: products and the per-call sum over the batch's rows are computed in float32 (float64 for
float64 inputs; bf16 and fp16 products are exact in float32), and added to C in C's dtype, so a
float64 C keeps the long sum across calls in float64.
"""

from __future__ import annotations

import torch

from . import HAS_TRITON, INTERPRET, next_power_of_2

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _syrk_accumulate_kernel(
        X_ptr,
        Valid_ptr,
        Acc_ptr,
        n_rows,
        d,
        x_row_stride,
        x_col_stride,
        acc_row_stride,
        acc_col_stride,
        HAS_VALID: tl.constexpr,
        UPCAST: tl.constexpr,
        INPUT_PRECISION: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP: tl.constexpr,
    ):
        """One program per lower-triangular (BLOCK_D × BLOCK_D) block (bi, bj), bj <= bi, of C.

        Programs go through the lower triangle of GROUP × GROUP super-blocks, and through each
        super-block's blocks in turn, so the programs in flight share 2·GROUP column panels of x
        (which then stay in L2) instead of streaming every panel for each row of blocks. Programs
        that land above the diagonal of a diagonal super-block, or past the edge, return at once.
        """
        pid = tl.program_id(0)
        sb = pid // (GROUP * GROUP)
        t = pid % (GROUP * GROUP)
        # super-block id -> (si, sj) in row-major order over the lower triangle: sb = si(si+1)/2 + sj.
        # The float square root is exact to +-1 for any realistic block count; the two fix-ups
        # make the integer result exact.
        si = ((tl.sqrt(8.0 * sb.to(tl.float32) + 1.0) - 1.0) * 0.5).to(tl.int32)
        si = tl.where(si * (si + 1) // 2 > sb, si - 1, si)
        si = tl.where((si + 1) * (si + 2) // 2 <= sb, si + 1, si)
        sj = sb - si * (si + 1) // 2
        bi = si * GROUP + t // GROUP
        bj = sj * GROUP + t % GROUP
        if (bj > bi) | (bi * BLOCK_D >= d):
            return

        offs_i = bi * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_j = bj * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_k = tl.arange(0, BLOCK_K)
        mask_i = offs_i < d
        mask_j = offs_j < d

        block = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
        for k0 in range(0, n_rows, BLOCK_K):
            rows = k0 + offs_k
            row_ok = rows < n_rows
            if HAS_VALID:
                flag = tl.load(Valid_ptr + rows, mask=row_ok, other=0)
                row_ok = row_ok & (flag != 0)
            row_off = rows.to(tl.int64)[:, None] * x_row_stride
            a = tl.load(
                X_ptr + row_off + offs_i[None, :] * x_col_stride,
                mask=row_ok[:, None] & mask_i[None, :],
                other=0.0,
            )
            b = tl.load(
                X_ptr + row_off + offs_j[None, :] * x_col_stride,
                mask=row_ok[:, None] & mask_j[None, :],
                other=0.0,
            )
            if UPCAST:
                # The interpreter multiplies the raw bits of bf16 operands in tl.dot: upcast there.
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            block = tl.dot(tl.trans(a), b, block, input_precision=INPUT_PRECISION)

        acc_ptrs = Acc_ptr + offs_i.to(tl.int64)[:, None] * acc_row_stride + offs_j[None, :] * acc_col_stride
        mask = mask_i[:, None] & mask_j[None, :]
        old = tl.load(acc_ptrs, mask=mask, other=0.0)
        tl.store(acc_ptrs, old + block.to(old.dtype), mask=mask)


def _triton_config(x_dtype: torch.dtype, d: int, n: int) -> tuple[int, int, int, int]:
    """(BLOCK_D, BLOCK_K, num_warps, num_stages) for this problem."""
    if INTERPRET:
        # numpy does the work: moderate blocks keep the per-program overhead down.
        return min(32, max(16, next_power_of_2(d))), 32, 4, 1
    if x_dtype == torch.float32:
        block_d = min(64, max(16, next_power_of_2(d)))
        return block_d, 32, 4, 3
    block_d = min(128, max(16, next_power_of_2(d)))
    return block_d, 64, (8 if block_d == 128 else 4), 3


def syrk_accumulate_triton_(
    acc: torch.Tensor,
    x: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    block_d: int | None = None,
    block_k: int | None = None,
    group: int | None = None,
) -> torch.Tensor:
    """Triton launcher: lower-triangular blocks of ``acc += x[valid]ᵀ x[valid]``, in place.

    acc: (d, d) float32 or float64, any strides. x: (n, d) float16, bfloat16 or float32, any strides.
    valid: optional (n,) bool, rows where it is False are skipped. Returns acc.
    Blocks strictly above the diagonal are not touched (diagonal blocks are computed whole).
    ``group``: the side of the super-blocks the programs walk (default 8 on a GPU for 16 or more
    block rows, else 1: plain row-major order).
    """
    if not HAS_TRITON:
        raise RuntimeError("triton is not importable")
    n, d = x.shape
    if n == 0 or d == 0:
        return acc
    cfg_d, cfg_k, num_warps, num_stages = _triton_config(x.dtype, d, n)
    block_d = block_d or cfg_d
    block_k = block_k or cfg_k
    nb = triton.cdiv(d, block_d)
    # super-blocks of GROUP x GROUP blocks for L2 reuse on a GPU; the interpreter gains nothing
    if group is None:
        group = 1 if INTERPRET or nb < 16 else 8
    ns = triton.cdiv(nb, group)
    grid = (ns * (ns + 1) // 2 * group * group,)
    # the kernel reads the mask with unit stride; x stands in as a pointer that is never read
    valid_u8 = valid.contiguous().view(torch.uint8) if valid is not None else x
    upcast = INTERPRET and x.dtype in (torch.bfloat16, torch.float16)
    _syrk_accumulate_kernel[grid](
        x,
        valid_u8,
        acc,
        n,
        d,
        x.stride(0),
        x.stride(1),
        acc.stride(0),
        acc.stride(1),
        HAS_VALID=valid is not None,
        UPCAST=upcast,
        # fp32 inputs must not be rounded to tf32: the statistics would lose 13 bits per product
        INPUT_PRECISION="ieee",
        BLOCK_D=block_d,
        BLOCK_K=block_k,
        GROUP=group,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return acc


# --------------------------------------------------------------------------------------------------
# torch


@torch.compiler.assume_constant_result
def _mm_out_dtype_supported(device_type: str) -> bool:
    """Whether torch.mm(bf16, bf16, out_dtype=float32) has a kernel for this device type (CUDA, torch >= 2.8).

    Asks the dispatcher rather than running a product, so the answer is the same while tracing.
    """
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key("aten::mm.dtype", device_type.upper()))
    except Exception:  # no such operator in this torch
        return False


def _panel_size(d: int) -> int:
    # About eight panels for large d (the flop count is then (1 + 1/8)/2 of the full product), and
    # panels of at least 1024 so that each BLAS call stays large; d <= 2048 takes one full product.
    return max(1024, -(-d // 8 // 64) * 64)


def syrk_accumulate_torch_(acc: torch.Tensor, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The torch backend: ``acc += x[valid]ᵀ x[valid]`` on and below the diagonal, in place.

    acc: (d, d) float32 or float64. x: (n, d) any float dtype. valid: optional (n,) bool.
    For large d the product is taken by row panels up to the diagonal (about 56% of the full flops);
    for small d it is one full ``addmm_``. Returns acc.
    """
    n, d = x.shape
    if n == 0 or d == 0:
        return acc
    if valid is not None:
        # zero the skipped rows rather than gather the valid ones: static shapes (torch.compile, CUDA graphs)
        x = torch.where(valid[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    mixed = x.dtype in (torch.bfloat16, torch.float16) and acc.dtype == torch.float32
    if mixed and x.device.type == "cuda" and _mm_out_dtype_supported(x.device.type):
        # bf16 tensor cores with a float32 result, as the Triton kernel does.
        def add_block(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
            out.add_(torch.mm(a, b, out_dtype=torch.float32))

        xa = x
    else:
        # Upcast once to the accumulator's dtype: bf16/fp16 products are then exact.
        def add_block(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
            out.addmm_(a, b)

        xa = x.to(acc.dtype)
    panel = _panel_size(d)
    if d <= 2 * panel:
        add_block(acc, xa.mT, xa)
        return acc
    for s in range(0, d, panel):
        e = min(s + panel, d)
        add_block(acc[s:e, :e], xa[:, s:e].mT, xa[:, :e])
    return acc


def symmetrize_(acc: torch.Tensor, panel: int = 1024) -> torch.Tensor:
    """Mirror the lower triangle of acc into its upper triangle, in place, panel by panel.

    acc: (d, d). Needs no d × d temporary (only panel × panel). Returns acc.
    """
    d = acc.shape[-1]
    for s in range(0, d, panel):
        e = min(s + panel, d)
        diag = acc[s:e, s:e]
        diag.copy_(torch.tril(diag) + torch.tril(diag, -1).mT)
        if e < d:
            acc[s:e, e:].copy_(acc[e:, s:e].mT)
    return acc


def second_moment_reference(
    x: torch.Tensor,
    valid: torch.Tensor | None = None,
    acc: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Pure-torch reference: ``acc + x[valid]ᵀ x[valid]`` as a new full (d, d) tensor in ``dtype``.

    x: (n, d); valid: optional (n,) bool; acc: optional (d, d) start value (only its lower triangle
    is read, as the contract says, and mirrored). dtype float64 gives the ground truth; float32
    gives what plain torch achieves in float32.
    """
    if valid is not None:
        x = x[valid]
    xd = x.to(dtype)
    out = xd.mT @ xd
    if acc is not None:
        lower = torch.tril(acc.to(dtype))
        out = out + lower + torch.tril(lower, -1).mT
    return out


__all__ = [
    "second_moment_reference",
    "symmetrize_",
    "syrk_accumulate_torch_",
    "syrk_accumulate_triton_",
]
