"""Rank-k Cholesky factor updates through fastedit.ops on every backend, and GrowingCholesky."""

from __future__ import annotations

import pytest
import torch
from gating import backend_params, requires_ext
from kernel_testing import assert_within_rule, rel_frobenius, spd_batch

from fastedit import ops
from fastedit.kernels.chol_update import cholesky_update_reference
from fastedit.linalg import GrowingCholesky

BACKENDS = backend_params({"cpu": ("torch", "triton", "cpp"), "cuda": ("torch", "triton", "cuda")})
SIZES = [1, 5, 97, 200, 1025]
RANKS = [1, 3, 17]


def _factor_and_keys(d: int, k: int, dtype: torch.dtype, generator: torch.Generator):
    """A factor L of a well-conditioned SPD matrix and keys K (d, k), both in ``dtype``."""
    L = torch.linalg.cholesky(spd_batch(1, d, torch.float64, generator)[0]).to(dtype)
    K = torch.randn(d, k, generator=generator, dtype=torch.float64).to(dtype)
    return L, K


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", RANKS)
@pytest.mark.parametrize("d", SIZES)
def test_update_matches_float64(device, backend, dtype, d, k, generator):
    L, K = _factor_and_keys(d, k, dtype, generator)
    Ld = L.to(device, copy=True)
    with ops.use_backend(backend):
        out = ops.cholesky_update_(Ld, K.to(device))
    assert out is Ld and ops.last_backend("cholesky_update_") == backend
    expected = cholesky_update_reference(L, K)
    baseline = cholesky_update_reference(L, K, dtype)  # what refactorising in this precision gives
    assert_within_rule(Ld, expected, baseline, dtype, f"{backend} cholesky_update_ {dtype} d={d} k={k}")


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_only_the_lower_triangle_is_read_and_written(device, backend, generator):
    """The strict upper triangle keeps whatever it held and is never read; K is not modified."""
    L, K = _factor_and_keys(70, 4, torch.float64, generator)
    expected = cholesky_update_reference(L, K)
    marker = torch.full((70, 70), 7.0, dtype=torch.float64).triu(1)
    Lm = (L + marker).to(device)
    Kd = K.to(device, copy=True)
    with ops.use_backend(backend):
        ops.cholesky_update_(Lm, Kd)
    assert torch.equal(Lm.cpu().triu(1), marker), "the strict upper triangle changed"
    assert torch.equal(Kd.cpu(), K), "K was modified"
    assert rel_frobenius(Lm.cpu().tril(), expected) < 1e-13


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_vector_keys_strided_factor_and_other_key_dtypes(device, backend, generator):
    L, K = _factor_and_keys(45, 1, torch.float64, generator)
    expected = cholesky_update_reference(L, K)
    big = torch.zeros(45, 90, dtype=torch.float64)
    big[:, ::2] = L  # a factor with column stride 2
    Ls = big[:, ::2].to(device) if device == "cpu" else big.to(device)[:, ::2]
    with ops.use_backend(backend):
        ops.cholesky_update_(Ls, K[:, 0].to(device))  # (d,) keys
    assert rel_frobenius(Ls.cpu(), expected) < 1e-13
    L32, K2 = _factor_and_keys(33, 2, torch.float32, generator)
    with ops.use_backend(backend):
        ops.cholesky_update_(L32.to(device), K2.double().to(device))  # keys in another dtype: used in L's
    assert L32.dtype == torch.float32


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_many_keys_are_taken_in_chunks(device, backend, generator):
    """k = 40 passes the Triton (32) and CUDA (16) key chunks: successive updates by column blocks."""
    L, K = _factor_and_keys(50, 40, torch.float64, generator)
    Ld = L.to(device, copy=True)
    with ops.use_backend(backend):
        ops.cholesky_update_(Ld, K.to(device))
    assert rel_frobenius(Ld, cholesky_update_reference(L, K)) < 1e-13


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_thousand_rank_one_updates_stay_within_1e8(device, backend, generator):
    """1,000 sequential rank-1 updates in float64 against a fresh factorisation of the sum (100 of
    d = 24 in Triton's interpreter, which takes about a second per update there)."""
    interpreted = backend == "triton" and device == "cpu"
    d, n = (24, 100) if interpreted else (97, 1000)
    L, _ = _factor_and_keys(d, 1, torch.float64, generator)
    A = L @ L.mT
    keys = torch.randn(n, d, generator=generator, dtype=torch.float64) / d**0.5
    Ld = L.to(device, copy=True)
    with ops.use_backend(backend):
        for key in keys.to(device):
            ops.cholesky_update_(Ld, key)
    fresh = torch.linalg.cholesky(A + keys.mT @ keys)
    err = rel_frobenius(Ld, fresh)
    assert err <= 1e-8, f"{backend}: relative error {err:.3e} after {n} rank-1 updates"


def test_argument_errors_name_the_problem():
    L = torch.eye(4)
    with pytest.raises(ValueError, match=r"square \(d, d\)"):
        ops.cholesky_update_(torch.zeros(3, 4), torch.zeros(3, 1))
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.cholesky_update_(L.half(), torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"K must be \(d, k\) or \(d,\) with d = 4"):
        ops.cholesky_update_(L, torch.zeros(5, 1))
    with pytest.raises(TypeError, match="floating-point"):
        ops.cholesky_update_(L, torch.zeros(4, 1, dtype=torch.int64))


@requires_ext
def test_cpu_default_is_the_cpp_kernel_and_ops_pass_opcheck(generator):
    L, K = _factor_and_keys(10, 2, torch.float64, generator)
    with ops.use_backend(None):
        ops.cholesky_update_(L.clone(), K)
    assert ops.last_backend("cholesky_update_") == "cpp"
    torch.library.opcheck(torch.ops.fastedit.cholesky_update_.default, (L.clone(), K))


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_update_traces_under_torch_compile(device, backend, generator):
    """One graph (fullgraph=True) through the update, the dispatch decided at trace time."""
    L, K = _factor_and_keys(12, 2, torch.float64, generator)
    eager, compiled = L.to(device, copy=True), L.to(device, copy=True)

    def step(L, K):
        ops.cholesky_update_(L, K)
        return L.diagonal().sum()

    with ops.use_backend(backend):
        step(eager, K.to(device))
        torch._dynamo.reset()
        torch.compile(step, backend="aot_eager", fullgraph=True)(compiled, K.to(device))
    assert ops.last_backend("cholesky_update_") == backend
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


def test_triton_op_passes_opcheck(generator):
    pytest.importorskip("triton")
    from gating import TRITON_INTERPRET

    if not TRITON_INTERPRET:
        pytest.skip("CPU tensors need triton's interpreter")
    L, K = _factor_and_keys(10, 2, torch.float64, generator)
    torch.library.opcheck(torch.ops.fastedit_triton.cholesky_update_.default, (L.clone(), K))


# --------------------------------------------------------------------------------------------------
# GrowingCholesky


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_growing_cholesky_solves_the_grown_system(dtype, generator):
    d = 150
    A0 = spd_batch(1, d, torch.float64, generator)[0]
    gc = GrowingCholesky(A0.to(dtype), check_every=7, fold_columns=20)
    A = A0.clone()
    for step in range(40):
        K = torch.randn(d, 1 + step % 3, generator=generator, dtype=torch.float64) / d**0.5
        gc.update(K.to(dtype))
        A += K @ K.mT
    B = torch.randn(d, 3, generator=generator, dtype=torch.float64)
    X = gc.solve(B.to(dtype))
    assert X.dtype == dtype and X.shape == (d, 3)
    expected = torch.linalg.solve(A, B)
    baseline = torch.linalg.solve(A.to(dtype), B.to(dtype))  # refactorising in this precision
    assert_within_rule(X, expected, baseline, dtype, f"GrowingCholesky {dtype}")
    assert rel_frobenius(gc.matrix(), A) < 10 * torch.finfo(dtype).eps
    assert gc.updates == 40 and gc.refactorizations == 0, "no drift to correct in 40 updates"
    assert gc.last_residual <= gc.threshold


def test_growing_cholesky_refactorises_when_the_factor_drifts(generator, caplog):
    d = 60
    A0 = spd_batch(1, d, torch.float64, generator)[0]
    gc = GrowingCholesky(A0, check_every=5)
    for _ in range(3):
        gc.update(torch.randn(d, generator=generator, dtype=torch.float64))
    assert not gc.check() and gc.refactorizations == 0
    gc.L += 1e-6 * torch.randn(d, d, generator=generator, dtype=torch.float64).tril()  # injected drift
    drifted = gc.residual()
    assert drifted > gc.threshold
    with caplog.at_level("INFO", logger="fastedit.linalg"):
        for step in range(5):  # the fifth update since the last check runs it
            assert gc.refactorizations == 0, f"refactorised after {step} updates, before the check was due"
            gc.update(torch.randn(d, generator=generator, dtype=torch.float64))
    assert gc.refactorizations == 1 and "refactorising" in caplog.text
    assert gc.last_residual < 1e-14 < drifted
    assert rel_frobenius(gc.L, torch.linalg.cholesky(gc.matrix())) < 1e-13
    gc.L[3, 3] = float("nan")  # a non-finite factor is refactorised too
    assert gc.check() and gc.refactorizations == 2 and torch.isfinite(gc.L).all()


def test_growing_cholesky_explicit_tolerance_and_errors(generator):
    A0 = spd_batch(1, 8, torch.float32, generator)[0]
    gc = GrowingCholesky(A0, dtype=torch.float64, tol=1e-300, check_every=0)
    assert gc.dtype == torch.float64 and gc.threshold == 1e-300
    gc.update(torch.ones(8))
    assert gc.refactorizations == 0, "check_every=0 never checks on its own"
    assert gc.check() and gc.refactorizations == 1  # any rounding exceeds 1e-300
    with pytest.raises(ValueError, match=r"K must be \(d, k\) or \(d,\) with d = 8"):
        gc.update(torch.ones(9))
    with pytest.raises(TypeError, match="float32 or float64"):
        GrowingCholesky(A0.half())
    with pytest.raises(ops.NotPositiveDefiniteError):
        GrowingCholesky(-torch.eye(3))
