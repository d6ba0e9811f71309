"""EMMET's per-edit solve: the reference's dense inverses against fastedit's factor of C kept per layer.

- baseline (the reference's ``emmet_main.py``, every edit): C⁻¹ = ``torch.inverse(C)``,
  D = KᵀC⁻¹K (+ λ_E·I), D⁻¹ = ``torch.inverse(D)``, adj = (D⁻¹KᵀC⁻¹)ᵀ;
- fastedit (:class:`fastedit.methods.emmet.EmmetSolver` with :func:`emmet_keys_side`): the factor of C
  computed at the first edit and kept, then per edit C⁻¹K from it (``cholesky``: two triangular solves;
  ``lu``: one product with the kept C⁻¹) and the n × n D.

Both in the same process on the same matrices (C from random vectors, K (d, n)); reports seconds per
edit after the first and the ratio to the baseline, and checks that the results agree::

    python benchmarks/bench_emmet_solve.py --d 1536 4096 --n 1 10 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fastedit.methods.emmet import EmmetSolver, emmet_keys_side, invert_d


def reference_adj(c: torch.Tensor, k: torch.Tensor, emmet_lambda: float) -> torch.Tensor:
    c_inv = torch.inverse(c)
    d = k.T @ c_inv @ k
    if d.shape[0] > 1:
        d = d + emmet_lambda * torch.eye(d.shape[0], dtype=d.dtype)
    return (torch.inverse(d) @ k.T @ c_inv).T


def per_edit(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(d: int, n: int, reps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4 * d, d, generator=g)
    c0 = (x.T @ x / (4 * d)).float()  # E[kkᵀ] as stored, float32
    k = torch.randn(d, n, dtype=torch.float64, generator=g)
    c = c0.double()
    row = {"d": d, "n": n, "baseline_s": per_edit(lambda: reference_adj(c, k, 0.1), reps)}
    ref = reference_adj(c, k, 0.1)
    for kind in ("cholesky", "lu"):
        solver = EmmetSolver(lambda layer: c0, 1.0, 0.0, torch.float64, kind)
        t = time.perf_counter()
        solver.factor(0)
        row[f"{kind}_factor_s"] = time.perf_counter() - t
        adj = lambda: emmet_keys_side(lambda keys: solver(0, keys), lambda m: invert_d(m)[0], k, 0.1)  # noqa: E731
        row[f"{kind}_s"] = per_edit(adj, reps)
        row[f"{kind}_ratio"] = row["baseline_s"] / row[f"{kind}_s"]
        row[f"{kind}_rel_err"] = float((adj() - ref).norm() / ref.norm())
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d", type=int, nargs="+", default=[1536, 4096])
    p.add_argument("--n", type=int, nargs="+", default=[1, 10])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = [run(d, n, a.reps) for d in a.d for n in a.n]
    for r in rows:
        print(f"d {r['d']:6d} n {r['n']:3d}: reference {r['baseline_s'] * 1e3:9.1f} ms/edit; cholesky "
              f"{r['cholesky_s'] * 1e3:7.2f} ms ({r['cholesky_ratio']:.0f}x, factor once {r['cholesky_factor_s']:.2f} s, "
              f"rel err {r['cholesky_rel_err']:.1e}); lu {r['lu_s'] * 1e3:7.2f} ms ({r['lu_ratio']:.0f}x, "
              f"inverse once {r['lu_factor_s']:.2f} s)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"threads": a.threads, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
