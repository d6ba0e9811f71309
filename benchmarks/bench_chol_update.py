"""Per-edit solve with a growing system: factor update + solve against refactorising + solve.

What a sequential editing method pays per edit to solve with ``A_t = A_{t-1} + K Kᵀ`` (K: d × k):

- baseline (refactorise): ``A += K Kᵀ``, ``L = torch.linalg.cholesky(A)``, ``ops.cholesky_solve(L, B)``;
- fastedit: ``GrowingCholesky.update(K)`` (the rank-k factor update, ``fastedit.ops.cholesky_update_``,
  default backend) and ``GrowingCholesky.solve(B)``,

both in the same process on the same matrices, B (d, k). Also times the update alone per backend
and one drift check (run every ``check_every`` updates, 100 by default). Writes a JSON with the
machine, the settings and every time::

    python benchmarks/bench_chol_update.py --d 1536 8192 --k 1 10 --dtype float64 --threads 1 \\
        --json benchmarks/results/bench_chol_update_cpu.json
    python benchmarks/bench_chol_update.py --device cuda --d 14336 --k 1 10 --dtype float32 float64 \\
        --json benchmarks/results/bench_chol_update_gpu.json        # what benchmarks/gpu_suite.sh runs

A d = 8192 float64 factor is 512 MB and its refactorisation d³/3 ≈ 1.8e11 flops: repetitions are few.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
logger = logging.getLogger("bench_chol_update")

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, reps: int, device: torch.device, warmup: int = 1) -> list[float]:
    """Seconds per call, one entry per repetition."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def spd_matrix(d: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.Tensor:
    """A well-conditioned SPD (d, d) matrix like a key covariance: I + X Xᵀ / 256, X (d, 256)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(d, 256, generator=g, dtype=dtype).to(device)
    A = torch.eye(d, dtype=dtype, device=device)
    return A.addmm_(X, X.mT, alpha=1.0 / 256)


def run_case(d: int, k: int, dtype: torch.dtype, device: torch.device, reps: int, base_reps: int, backends) -> dict:
    from fastedit import ops
    from fastedit.linalg import GrowingCholesky

    g = torch.Generator().manual_seed(1)
    keys = [(torch.randn(d, k, generator=g, dtype=dtype) / d**0.5).to(device) for _ in range(reps + base_reps + 4)]
    B = torch.randn(d, k, generator=g, dtype=dtype).to(device)
    out: dict = {"d": d, "k": k, "dtype": str(dtype).removeprefix("torch."), "device": str(device)}

    # baseline: refactorise after adding the keys
    A = spd_matrix(d, dtype, device)
    it = iter(keys)

    def refactorise():
        K = next(it)
        A.addmm_(K, K.mT)
        L = torch.linalg.cholesky(A)
        return ops.cholesky_solve(L, B)

    out["refactorise_s"] = _time(refactorise, base_reps, device)
    del A

    # fastedit: the growing factor
    gc = GrowingCholesky(spd_matrix(d, dtype, device), copy=False)
    it = iter(keys)

    def update_and_solve():
        gc.update(next(it))
        return gc.solve(B)

    out["update_solve_s"] = _time(update_and_solve, reps, device)
    out["update_backend"] = ops.last_backend("cholesky_update_")
    out["solve_only_s"] = _time(lambda: gc.solve(B), reps, device)
    out["drift_check_s"] = _time(gc.check, 1, device, warmup=0)
    out["residual_after"] = gc.last_residual
    out["refactorizations"] = gc.refactorizations
    per_backend = {}
    for backend in backends:
        why = ops.available_backends("cholesky_update_", gc.L, keys[0])[backend]
        if why is not None:
            per_backend[backend] = {"skipped": why}
            continue
        L = gc.L.clone()

        def update(backend=backend, L=L):
            with ops.use_backend(backend):
                ops.cholesky_update_(L, keys[0])

        per_backend[backend] = {"update_s": _time(update, max(1, min(reps, 3)), device)}
        del L
    out["update_only_by_backend"] = per_backend
    del gc
    base = statistics.median(out["refactorise_s"])
    ours = statistics.median(out["update_solve_s"])
    out["ratio"] = base / ours
    logger.info(
        "d=%d k=%d %s %s: refactorise+solve %.4f s, update+solve %.4f s (%s): %.1fx; drift check %.4f s",
        d, k, out["dtype"], device, base, ours, out["update_backend"], out["ratio"], out["drift_check_s"][0],
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=int, nargs="+", default=[1536, 8192])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--dtype", nargs="+", default=["float64"], choices=sorted(DTYPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--reps", type=int, default=5, help="timed updates per case")
    parser.add_argument("--base-reps", type=int, default=2, help="timed refactorisations per case")
    parser.add_argument("--backends", default="", help="comma-separated backends to time the update alone on")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        logger.info("bench_chol_update: no CUDA device; nothing to time")
        return 0
    torch.set_num_threads(args.threads)
    backends = [b for b in args.backends.split(",") if b] or (
        ["cuda", "triton", "torch"] if device.type == "cuda" else ["cpp", "torch"]
    )
    from machine_info import machine  # benchmarks/machine_info.py

    results = {
        "what": "per-edit solve with a growing SPD system: GrowingCholesky update + solve vs refactorise + solve",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": machine(),
        "platform": platform.platform(),
        "cases": [],
    }
    for dtype in args.dtype:
        for d in args.d:
            for k in args.k:
                results["cases"].append(run_case(d, k, DTYPES[dtype], device, args.reps, args.base_reps, backends))
                if args.json:  # saved after every case, so a run cut short keeps what it measured
                    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
