"""Batched Cholesky and SPD solves through fastedit.ops on every backend, against float64."""

from __future__ import annotations

import pytest
import torch
from gating import backend_params, gpu_test, requires_ext_cuda, requires_triton_gpu
from kernel_testing import assert_within_rule, spd_batch

from fastedit import ops
from fastedit.kernels.spd_solve import TRITON_MAX_N, cholesky_reference, spd_solve_reference

BACKENDS = backend_params({"cpu": ("torch", "triton", "cpp"), "cuda": ("torch", "triton", "cuda")})
# (batch, n, k): a 1 × 1 system, primes, the Triton limit n = 64 with 64 right-hand sides, and n past it
CASES = [(1, 1, 1), (3, 7, 5), (2, 33, 1), (2, 64, 64), (2, 130, 3)]


def _case_ok(backend: str, n: int) -> None:
    if backend == "triton" and n > TRITON_MAX_N:
        pytest.skip(f"the Triton kernel takes n <= {TRITON_MAX_N}")


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,n,k", CASES)
def test_spd_solve_matches_float64(device, backend, dtype, batch, n, k, generator):
    _case_ok(backend, n)
    A = spd_batch(batch, n, dtype, generator)
    B = torch.randn(batch, n, k, generator=generator, dtype=torch.float64).to(dtype)
    with ops.use_backend(backend):
        X = ops.spd_solve(A.to(device), B.to(device))
    assert ops.last_backend("spd_solve") == backend
    expected = spd_solve_reference(A, B, dtype=torch.float64)
    baseline = spd_solve_reference(A, B, dtype=dtype)
    assert_within_rule(X, expected, baseline, dtype, f"{backend} spd_solve {dtype} {(batch, n, k)}")


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,n,k", CASES)
def test_cholesky_and_cholesky_solve(device, backend, dtype, batch, n, k, generator):
    _case_ok(backend, n)
    A = spd_batch(batch, n, dtype, generator)
    B = torch.randn(batch, n, k, generator=generator, dtype=torch.float64).to(dtype)
    with ops.use_backend(backend):
        L = ops.cholesky(A.to(device))
        X = ops.cholesky_solve(L, B.to(device))
    assert torch.count_nonzero(torch.triu(L, 1)) == 0, "the upper triangle of L must be zero"
    assert_within_rule(L, cholesky_reference(A), cholesky_reference(A, dtype), dtype, f"{backend} cholesky")
    expected = spd_solve_reference(A, B)
    assert_within_rule(X, expected, spd_solve_reference(A, B, dtype), dtype, f"{backend} cholesky_solve")


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_shapes_unbatched_vectors_and_nested_batches(device, backend, generator):
    A = spd_batch(6, 5, torch.float64, generator).to(device)
    b = torch.randn(6, 5, generator=generator, dtype=torch.float64).to(device)
    with ops.use_backend(backend):
        x_vec = ops.spd_solve(A, b)  # batch of vectors (6, 5)
        x_one = ops.spd_solve(A[2], b[2])  # unbatched (5, 5) with (5,)
        x_nested = ops.spd_solve(A.reshape(2, 3, 5, 5), b.reshape(2, 3, 5, 1))
    assert x_vec.shape == (6, 5) and x_one.shape == (5,) and x_nested.shape == (2, 3, 5, 1)
    expected = spd_solve_reference(A.cpu(), b.cpu().unsqueeze(-1)).squeeze(-1)
    for got, want in [(x_vec, expected), (x_one, expected[2]), (x_nested.reshape(6, 5), expected)]:
        assert_within_rule(got, want, want, torch.float64, f"{backend} shapes")


def _indefinite_batch(device, dtype=torch.float64):
    """Five 6 × 6 matrices: 1 has a negative pivot at order 3, 3 has NaN on the diagonal, 4 an inf."""
    g = torch.Generator().manual_seed(5)
    A = spd_batch(5, 6, torch.float64, g)
    A[1, 2, 2] = -10.0  # leading minors of order 1, 2 are fine; order 3 is not
    A[3, 0, 0] = float("nan")
    A[4, 4, 4] = float("inf")
    return A.to(dtype).to(device)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the NaN input, in numpy
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_not_positive_definite_names_the_matrix(device, backend, dtype):
    A = _indefinite_batch(device, dtype)
    B = torch.ones(5, 6, 2, dtype=dtype, device=device)
    with ops.use_backend(backend):
        with pytest.raises(ops.NotPositiveDefiniteError) as caught:
            ops.spd_solve(A, B)
        err = caught.value
        assert err.index == (1,) and err.order == 3
        assert "matrix 1 of the batch of 5" in str(err) and "order 3" in str(err)
        assert [idx for idx, _ in err.failures] == [(1,), (3,), (4,)]
        assert dict(err.failures)[(3,)] == 1 and dict(err.failures)[(4,)] == 5
        assert isinstance(err, ValueError)

        with pytest.raises(ops.NotPositiveDefiniteError, match="matrix 1"):
            ops.cholesky(A)
        # the sync-free form reports per matrix and raises nothing
        _, info = ops.cholesky_ex(A)
        assert info.tolist() == [0, 3, 0, 1, 5]
        X, info = ops.spd_solve_ex(A, B)
        assert info.tolist() == [0, 3, 0, 1, 5]
        good = info == 0
        assert torch.isfinite(X[good]).all(), "matrices that factored must get finite solutions"


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_unbatched_failure_message(device, backend):
    A = -torch.eye(3, dtype=torch.float64, device=device)
    with ops.use_backend(backend), pytest.raises(ops.NotPositiveDefiniteError, match="the matrix .* order 1") as caught:
        ops.cholesky(A)
    assert caught.value.index == ()


def test_argument_errors_name_the_problem():
    A = torch.eye(3).expand(2, 3, 3)
    with pytest.raises(ValueError, match=r"\(\.\.\., n, n\)"):
        ops.spd_solve(torch.zeros(2, 3, 4), torch.zeros(2, 3, 1))
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.cholesky(A.half())
    with pytest.raises(TypeError, match="dtype"):
        ops.spd_solve(A, torch.zeros(2, 3, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch shape"):
        ops.spd_solve(A, torch.zeros(3, 3, 1))


def test_forced_triton_refuses_large_n():
    A = torch.eye(TRITON_MAX_N + 1).unsqueeze(0)
    with ops.use_backend("triton"), pytest.raises(ops.BackendUnavailableError, match="n <= 64"):
        ops.cholesky(A)


@gpu_test
@pytest.mark.parametrize(
    "backend", [pytest.param("triton", marks=requires_triton_gpu), pytest.param("cuda", marks=requires_ext_cuda)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,n,k", [(1000, 16, 16), (300, 64, 1), (40, 200, 8), (8, 256, 256)])
def test_large_gpu_batches(backend, dtype, batch, n, k):
    """Thousands of small systems in one launch, and (CUDA) the shared-memory limit and global path."""
    _case_ok(backend, n)
    if backend == "triton" and k > 64:
        pytest.skip("the Triton kernel takes k <= 64")
    g = torch.Generator().manual_seed(6)
    A = spd_batch(batch, n, dtype, g)
    B = torch.randn(batch, n, k, generator=g, dtype=torch.float64).to(dtype)
    with ops.use_backend(backend):
        X = ops.spd_solve(A.cuda(), B.cuda())
    expected = spd_solve_reference(A, B)
    baseline = spd_solve_reference(A, B, dtype)
    assert_within_rule(X, expected, baseline, dtype, f"{backend} {dtype} {(batch, n, k)}")
