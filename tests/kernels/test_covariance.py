"""Covariance accumulation (syrk) through fastedit.ops on every backend, against float64."""

from __future__ import annotations

import pytest
import torch
from gating import backend_params, gpu_test, requires_ext_cuda, requires_triton_gpu
from kernel_testing import assert_within_rule, rel_frobenius

from fastedit import ops
from fastedit.kernels.covariance import second_moment_reference, symmetrize_, syrk_accumulate_triton_

BACKENDS = backend_params({"cpu": ("torch", "triton"), "cuda": ("torch", "triton", "cuda")})
# awkward sizes: one token / one feature, primes, sizes just past a block edge
SHAPES = [(1, 1), (7, 97), (130, 33), (64, 130)]


def _sym(a: torch.Tensor) -> torch.Tensor:
    return torch.tril(a) + torch.tril(a, -1).mT


def _inputs(n, d, x_dtype, acc_dtype, masked, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(x_dtype)
    valid = (torch.rand(n, generator=g) > 0.3) if masked else None
    acc0 = torch.randn(d, d, generator=g, dtype=torch.float64).to(acc_dtype)
    move = (lambda t: t.to(device)) if device != "cpu" else (lambda t: t)
    return move(x), (move(valid) if valid is not None else None), move(acc0)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("acc_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
def test_accumulate_matches_float64(device, backend, x_dtype, acc_dtype, n, d, masked):
    x, valid, acc0 = _inputs(n, d, x_dtype, acc_dtype, masked, device)
    acc = acc0.clone()
    with ops.use_backend(backend):
        ops.second_moment_accumulate_(acc, x, valid)
    assert ops.last_backend("second_moment_accumulate_") == backend
    ops.symmetrize_(acc)

    expected = second_moment_reference(x, valid, acc0, dtype=torch.float64)
    # plain torch in the kernels' precision: the batch's product in float32, added to acc's dtype
    part = second_moment_reference(x, valid, None, dtype=torch.float32)
    baseline = (_sym(acc0) + part.to(acc_dtype)).to(torch.float64)
    assert_within_rule(acc, expected, baseline, torch.float32, f"{backend} x={x_dtype} acc={acc_dtype} ({n}, {d})")


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_several_batches_then_symmetrize(device, backend):
    """The statistics loop: many accumulate calls, one mirror at the end, with 3-D inputs and a mask."""
    g = torch.Generator().manual_seed(1)
    d = 45
    acc = torch.zeros(d, d, dtype=torch.float32, device=device)
    expected = torch.zeros(d, d, dtype=torch.float64)
    with ops.use_backend(backend):
        for step in range(3):
            x = torch.randn(2, 11, d, generator=g).to(torch.bfloat16)
            mask = torch.rand(2, 11, generator=g) > 0.25
            ops.second_moment_accumulate_(acc, x.to(device), mask.to(device))
            expected += second_moment_reference(x.reshape(-1, d), mask.reshape(-1), dtype=torch.float64)
    ops.symmetrize_(acc)
    assert torch.equal(acc, acc.mT), "symmetrize_ must leave an exactly symmetric matrix"
    baseline = expected.to(torch.float32).to(torch.float64)
    assert_within_rule(acc, expected, baseline, torch.float32, f"{backend} 3 batches")


@pytest.mark.parametrize("d,panel", [(1, 4), (130, 32), (97, 1024)])
def test_symmetrize_mirrors_lower_triangle(d, panel):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(d, d, generator=g)
    expected = _sym(a)
    symmetrize_(a, panel=panel)
    assert torch.equal(a, expected)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_only_lower_triangle_is_written(device, backend):
    """Blocks strictly above the diagonal may be skipped; the lower triangle must be exact."""
    g = torch.Generator().manual_seed(3)
    d = 100
    x = torch.randn(9, d, generator=g).to(device)
    acc = torch.full((d, d), 7.0, device=device)
    with ops.use_backend(backend):
        ops.second_moment_accumulate_(acc, x)
    lower = torch.tril(acc.cpu().double())
    expected = torch.tril(7.0 + second_moment_reference(x.cpu(), dtype=torch.float64))
    assert_within_rule(lower, expected, expected.float(), torch.float32, f"{backend} lower triangle")
    # the upper triangle is either untouched or holds the same product
    upper = torch.triu(acc.cpu().double(), 1)
    full_upper = torch.triu(expected.mT, 1)
    untouched = torch.isclose(upper, torch.triu(torch.full_like(upper, 7.0), 1))
    updated = torch.isclose(upper, full_upper, rtol=1e-5, atol=1e-4)
    assert bool((untouched | updated).all())


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_strided_inputs(device, backend):
    """x as a column-strided view and the mask as a strided view: kernels must honour the strides."""
    g = torch.Generator().manual_seed(7)
    wide = torch.randn(13, 2 * 37, generator=g).to(torch.bfloat16).to(device)
    x = wide[:, ::2]  # (13, 37) with column stride 2
    mask_wide = (torch.rand(26, generator=g) > 0.4).to(device)
    valid = mask_wide[::2]  # (13,) with stride 2
    acc = torch.zeros(37, 37, dtype=torch.float64, device=device)
    with ops.use_backend(backend):
        ops.second_moment_accumulate_(acc, x, valid)
    ops.symmetrize_(acc)
    expected = second_moment_reference(x.cpu(), valid.cpu(), dtype=torch.float64)
    baseline = second_moment_reference(x.cpu(), valid.cpu(), dtype=torch.float32)
    assert_within_rule(acc, expected, baseline, torch.float32, f"{backend} strided")


def test_empty_and_all_masked_batches_leave_acc_unchanged():
    acc = torch.randn(5, 5)
    before = acc.clone()
    ops.second_moment_accumulate_(acc, torch.zeros(0, 5))
    ops.second_moment_accumulate_(acc, torch.randn(4, 5), torch.zeros(4, dtype=torch.bool))
    assert torch.equal(acc, before)


def test_argument_errors_name_the_problem():
    acc = torch.zeros(4, 4)
    with pytest.raises(ValueError, match="d = 4"):
        ops.second_moment_accumulate_(acc, torch.zeros(3, 5))
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.second_moment_accumulate_(acc.half(), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="leading shape"):
        ops.second_moment_accumulate_(acc, torch.zeros(3, 4), torch.ones(2, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        ops.second_moment_accumulate_(acc, torch.zeros(3, 4), torch.ones(3))
    with pytest.raises(ValueError, match="square"):
        ops.second_moment_accumulate_(torch.zeros(3, 4), torch.zeros(3, 4))


@gpu_test
@pytest.mark.parametrize(
    "backend", [pytest.param("triton", marks=requires_triton_gpu), pytest.param("cuda", marks=requires_ext_cuda)]
)
@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32])
def test_large_gpu_shapes(backend, x_dtype):
    """Full-size tiles (128 wide on Triton) and many row chunks."""
    x, valid, acc0 = _inputs(2049, 777, x_dtype, torch.float32, True, "cuda", seed=4)
    acc = acc0.clone()
    with ops.use_backend(backend):
        ops.second_moment_accumulate_(acc, x, valid)
    ops.symmetrize_(acc)
    expected = second_moment_reference(x.cpu(), valid.cpu(), acc0.cpu(), dtype=torch.float64)
    part = second_moment_reference(x, valid, None, dtype=torch.float32)
    baseline = _sym(acc0) + part
    if x_dtype == torch.float32:
        assert_within_rule(acc, expected, baseline, torch.float32, f"{backend} large")
    else:
        # bf16 inputs go through tensor cores, whose float32 accumulation is not correctly rounded
        # (plain torch's baseline upcasts and uses fp32 FMA): allow the error of a sequential float32
        # sum over the 2049 rows, 4·sqrt(rows)·2⁻²⁴, on top of the rule
        err = rel_frobenius(acc, expected)
        bound = 2 * rel_frobenius(baseline, expected) + 4 * 2049**0.5 * 2.0**-24
        assert err <= bound, f"{backend} large bf16: relative error {err:.3e} > {bound:.3e}"


@pytest.mark.parametrize("device,backend", [p for p in BACKENDS if "triton" in str(p.values)])
@pytest.mark.parametrize("group", [2, 3])
def test_super_block_ordering_covers_the_lower_triangle(device, backend, group):
    """The GPU's super-block program order (the launcher's ``group``), with a block count that is not
    a multiple of the group: every lower block is computed once, nothing above the diagonal is touched."""
    x, _, _ = _inputs(40, 150, torch.float32, torch.float32, False, device, seed=7)
    acc = torch.full((150, 150), 5.0, dtype=torch.float32, device=x.device)
    syrk_accumulate_triton_(acc, x, group=group)
    expected = 5.0 + second_moment_reference(x, None, None, dtype=torch.float64)
    lower = torch.tril(torch.ones(150, 150, dtype=torch.bool, device=x.device))
    block = 32 if x.device.type == "cpu" else 64  # the launcher's block width for d = 150, float32
    upper_blocks = torch.ones_like(lower)
    for i in range(0, 150, block):
        upper_blocks[i : i + block, : i + block] = False
    assert torch.allclose(acc[lower].double(), expected[lower], rtol=1e-5, atol=1e-4)
    assert torch.all(acc[upper_blocks] == 5.0)
