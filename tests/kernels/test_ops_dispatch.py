"""fastedit.ops: backend choice, forcing, reporting, torch.library declarations, torch.compile."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from gating import CUDA, backend_params, requires_ext, requires_triton_interpreter

from fastedit import ops

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _small_inputs(device="cpu"):
    g = torch.Generator().manual_seed(0)
    acc = torch.zeros(6, 6, device=device)
    x = torch.randn(5, 6, generator=g).to(device)
    A = torch.eye(4, dtype=torch.float64, device=device).expand(3, 4, 4) * 2.0
    B = torch.ones(3, 4, 2, dtype=torch.float64, device=device)
    W = torch.randn(4, 6, generator=g).to(torch.bfloat16).to(device)
    U = torch.randn(4, 1, generator=g).to(device)
    V = torch.randn(6, 1, generator=g).to(device)
    return acc, x, A, B, W, U, V


@pytest.mark.skipif(CUDA, reason="checks the CPU default")
def test_cpu_default_is_torch_for_every_op():
    acc, x, A, B, W, U, V = _small_inputs()
    assert ops.forced_backend() is None or os.environ.get("FASTEDIT_BACKEND")
    with ops.use_backend(None):
        ops.second_moment_accumulate_(acc, x)
        L = ops.cholesky(A)
        ops.cholesky_solve(L, B)
        ops.spd_solve(A, B)
        ops.lowrank_update_(W, U, V)
    for op in ("second_moment_accumulate_", "cholesky", "cholesky_solve", "spd_solve", "lowrank_update_"):
        assert ops.last_backend(op) == "torch", op


def test_use_backend_forces_and_restores():
    acc, x, *_ = _small_inputs()
    before = ops.forced_backend()
    with ops.use_backend("torch"):
        assert ops.forced_backend() == "torch"
        ops.second_moment_accumulate_(acc, x)
        assert ops.last_backend("second_moment_accumulate_") == "torch"
        with ops.use_backend(None):
            assert ops.forced_backend() is None
        assert ops.forced_backend() == "torch"
    assert ops.forced_backend() == before
    ops.set_backend("torch")
    try:
        assert ops.forced_backend() == "torch"
    finally:
        ops.set_backend(before)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown backend 'cublas'"):
        with ops.use_backend("cublas"):
            pass


def test_forced_backend_that_cannot_run_says_why():
    acc, x, A, B, W, U, V = _small_inputs()
    if not CUDA:
        with ops.use_backend("cuda"), pytest.raises(ops.BackendUnavailableError, match="runs CUDA tensors, got cpu"):
            ops.spd_solve(A, B)
    with ops.use_backend("cpp"), pytest.raises(ops.BackendUnavailableError, match="no C\\+\\+ kernel for covariance"):
        ops.second_moment_accumulate_(acc, x)
    with ops.use_backend("triton"), pytest.raises(ops.BackendUnavailableError, match="float16/bfloat16/float32 x"):
        ops.second_moment_accumulate_(acc.double(), x.double())


def test_available_backends_reports_reasons():
    acc, x, A, B, W, U, V = _small_inputs()
    table = ops.available_backends("spd_solve_ex", A, B)
    assert set(table) == set(ops.BACKENDS)
    assert table["torch"] is None
    assert isinstance(table["cuda"], str) or CUDA
    assert ops.available_backends("second_moment_accumulate_", acc, x)["cpp"].startswith("no C++ kernel")
    with pytest.raises(ValueError, match="unknown op"):
        ops.available_backends("matmul", A)


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env, cwd=REPO, timeout=120
    )


def test_environment_variable_forces_backend():
    done = _run(
        """
        import torch
        from fastedit import ops
        assert ops.forced_backend() == "torch", ops.forced_backend()
        ops.spd_solve(torch.eye(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
        print(ops.last_backend("spd_solve"))
        """,
        FASTEDIT_BACKEND="torch",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "torch"


def test_everything_works_without_the_extension():
    done = _run(
        """
        import torch
        from fastedit import ops, _ext
        A = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
        ops.spd_solve(A, torch.ones(2, 3, dtype=torch.float64))
        W = torch.zeros(3, 4, dtype=torch.bfloat16)
        ops.lowrank_update_(W, torch.ones(3), torch.ones(4), compensation=ops.new_compensation(W))
        assert not _ext.available() and "FASTEDIT_NO_EXT" in _ext.unavailable_reason()
        try:
            with ops.use_backend("cpp"):
                ops.spd_solve(A, torch.ones(2, 3, dtype=torch.float64))
        except ops.BackendUnavailableError as exc:
            print("refused:", exc)
        """,
        FASTEDIT_NO_EXT="1",
    )
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "not loaded" in done.stdout


# --------------------------------------------------------------------------------------------------
# torch.library declarations


@requires_ext
def test_extension_ops_pass_opcheck():
    g = torch.Generator().manual_seed(1)
    M = torch.randn(3, 5, 5, generator=g, dtype=torch.float64)
    A = M @ M.mT + 5 * torch.eye(5, dtype=torch.float64)
    B = torch.randn(3, 5, 2, generator=g, dtype=torch.float64)
    L, _ = torch.ops.fastedit.cholesky_ex(A)
    W = torch.randn(4, 6, generator=g).to(torch.bfloat16)
    C = torch.zeros(4, 6)
    U, V = torch.randn(4, 2, generator=g), torch.randn(6, 2, generator=g)
    torch.library.opcheck(torch.ops.fastedit.cholesky_ex.default, (A,))
    torch.library.opcheck(torch.ops.fastedit.spd_solve_ex.default, (A, B))
    torch.library.opcheck(torch.ops.fastedit.cholesky_solve.default, (L, B))
    torch.library.opcheck(torch.ops.fastedit.lowrank_update_.default, (W, U, V, False, C))
    torch.library.opcheck(torch.ops.fastedit.lowrank_update_.default, (W.mT.contiguous(), U, V, True, None))


@requires_triton_interpreter
def test_triton_ops_pass_opcheck():
    g = torch.Generator().manual_seed(2)
    A = 4 * torch.eye(5).expand(2, 5, 5).contiguous()
    B = torch.randn(2, 5, 3, generator=g)
    acc = torch.zeros(7, 7)
    x = torch.randn(9, 7, generator=g).to(torch.bfloat16)
    valid = torch.rand(9, generator=g) > 0.5
    W = torch.randn(4, 6, generator=g).to(torch.bfloat16)
    U, V = torch.randn(4, 2, generator=g), torch.randn(6, 2, generator=g)
    torch.library.opcheck(torch.ops.fastedit_triton.syrk_accumulate_.default, (acc, x, valid))
    torch.library.opcheck(torch.ops.fastedit_triton.cholesky_ex.default, (A,))
    torch.library.opcheck(torch.ops.fastedit_triton.spd_solve_ex.default, (A, B))
    torch.library.opcheck(torch.ops.fastedit_triton.cholesky_solve.default, (A, B))
    torch.library.opcheck(torch.ops.fastedit_triton.lowrank_update_.default, (W, U, V, False, torch.zeros(4, 6)))


def _edit_step(acc, x, valid, A, B, W, U, V, C):
    ops.second_moment_accumulate_(acc, x, valid)
    X, info = ops.spd_solve_ex(A, B)
    ops.lowrank_update_(W, U, V, compensation=C)
    return X, info


@pytest.mark.parametrize(
    "device,backend",
    [
        p
        for p in backend_params({"cpu": ("torch", "triton", "cpp"), "cuda": ("torch", "triton", "cuda")})
        if p.values[1] != "cpp"  # covariance has no C++ kernel; the cpp ops are covered by opcheck above
    ],
)
def test_ops_trace_under_torch_compile(device, backend):
    """One graph (fullgraph=True) through the sync-free ops, with the dispatch decided at trace time."""
    g = torch.Generator().manual_seed(3)
    acc = torch.zeros(6, 6, device=device)
    x = torch.randn(5, 6, generator=g).to(device)
    valid = (torch.rand(5, generator=g) > 0.3).to(device)
    A = (3 * torch.eye(4, dtype=torch.float64)).expand(2, 4, 4).contiguous().to(device)
    B = torch.randn(2, 4, 3, generator=g, dtype=torch.float64).to(device)
    W = torch.randn(4, 6, generator=g).to(torch.bfloat16).to(device)
    C = torch.zeros(4, 6, device=device)
    U, V = torch.randn(4, 2, generator=g).to(device), torch.randn(6, 2, generator=g).to(device)

    eager = [t.clone() for t in (acc, W, C)]
    with ops.use_backend(backend):
        X_eager, _ = _edit_step(eager[0], x, valid, A, B, eager[1], U, V, eager[2])
        torch._dynamo.reset()
        compiled = torch.compile(_edit_step, backend="aot_eager", fullgraph=True)
        X, info = compiled(acc, x, valid, A, B, W, U, V, C)
    assert ops.last_backend("lowrank_update_") == backend
    assert info.tolist() == [0, 0]
    torch.testing.assert_close(X, X_eager)
    torch.testing.assert_close(torch.tril(acc), torch.tril(eager[0]))
    torch.testing.assert_close(W, eager[1], rtol=0, atol=0)
    torch.testing.assert_close(C, eager[2], rtol=0, atol=0)
