"""AlphaEdit's per-layer solve: the reference's dense d_ff × d_ff system against fast mode's r × r one.

- baseline (exact mode, the reference's): ``solve(P(K_pK_pᵀ + KKᵀ) + L2·I, P K)`` in float32 with
  P = U_r U_rᵀ and K_pK_pᵀ kept (``fastedit.methods.alphaedit.alphaedit_solve``);
- fast mode: ``alphaedit_solve_reduced`` with a Cholesky factor of U_rᵀK_pK_pᵀU_r + L2·I_r, then
  the factor's rank-n update by the batch's keys (what the session does after the edit).

Both on the same matrices in one process; the null space keeps ``--keep`` of the d_ff directions (a
random orthonormal U_r; on SmolLM2-135M AlphaEdit's threshold keeps 0.59-0.77). Prints one line per
size and writes a JSON::

    python benchmarks/bench_alphaedit_solve.py --d 1536 4096 --n 1 10 --threads 1 \\
        --json benchmarks/results/bench_alphaedit_solve_cpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time

import torch

from fastedit.linalg import GrowingCholesky
from fastedit.methods.alphaedit import alphaedit_solve, alphaedit_solve_reduced

logger = logging.getLogger("bench_alphaedit_solve")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, reps: int, device: torch.device) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(d: int, n: int, keep: float, reps: int, device: torch.device, dtype: torch.dtype) -> dict:
    gen = torch.Generator().manual_seed(0)
    r = int(keep * d)
    u = torch.linalg.qr(torch.randn(d, r, generator=gen, dtype=torch.float64))[0].to(device, dtype)
    prev_keys = (torch.randn(d, 4 * n, generator=gen) * 0.3).to(device, dtype)
    k = (torch.randn(d, n, generator=gen) * 0.3).to(device, dtype)
    p, prev, l2 = u @ u.T, prev_keys @ prev_keys.T, 10.0
    core_matrix = u.T @ prev @ u
    core_matrix.diagonal().add_(l2)
    core = GrowingCholesky(core_matrix, check_every=0)
    exact = _time(lambda: alphaedit_solve(p, k, prev, l2), reps, device)
    reduced = _time(lambda: alphaedit_solve_reduced(u, k, core), reps, device)
    updates = []
    update = _time(lambda: updates.append(core.update(u.T @ k)), reps, device)  # grows the system by KKᵀ
    grown = prev + len(updates) * (k @ k.T)  # the same system, dense
    dense = alphaedit_solve(p, k, grown, l2)
    err = float((alphaedit_solve_reduced(u, k, core) - dense).norm() / dense.norm())
    row = {"d_ff": d, "r": r, "n": n, "dtype": str(dtype).split(".")[-1], "exact_s": exact, "reduced_s": reduced,
           "factor_update_s": update, "speedup": exact / (reduced + update), "rel_diff": err}
    logger.info("d_ff %5d r %5d n %3d: exact %.4f s, reduced %.5f s + update %.5f s: %.0fx (rel diff %.1e)",
                d, r, n, exact, reduced, update, row["speedup"], err)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, nargs="+", default=[1536, 4096])
    ap.add_argument("--n", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--keep", type=float, default=0.7)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rows = [run(d, n, args.keep, args.reps, device, dtype) for d in args.d for n in args.n]
    if args.json:
        meta = {"machine": platform.processor() or platform.machine(), "threads": args.threads, "device": args.device,
                "torch": torch.__version__, "keep": args.keep}
        with open(args.json, "w") as f:
            json.dump({"settings": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
