"""Kernel microbenchmarks: torch vs Triton vs CUDA (and the C++ CPU kernels), one CSV schema for all.

Two ways to run it:

* CPU paths, with pytest-benchmark::

      python -m pytest benchmarks/bench_kernels.py --benchmark-only

  Each test times one provider on one case; at the end of the session the rows are appended to
  ``benchmarks/results/kernels.csv``.

* GPU, as a script (what ``benchmarks/gpu_suite.sh`` runs)::

      python benchmarks/bench_kernels.py [--quick] [--kernels covariance,spd_solve,lowrank_update]
                                         [--csv PATH] [--json PATH] [--budget-s SECONDS]

  Times with CUDA events (median and 20th/80th percentiles of many samples, each sample averaging
  enough calls to last about a millisecond), reports the achieved TFLOP/s or GB/s and its fraction of
  the card's nominal peak, the ratio to the torch baseline measured in the same run, and whether the
  issue's goals are met.

Providers: ``torch_*`` are the plain-torch baselines named in the goals (``torch_addmm``: one full
``addmm_`` for the same update; ``torch_linalg``: ``torch.linalg.cholesky`` + ``torch.cholesky_solve``);
``torch``, ``triton``, ``cuda``, ``cpp`` are fastedit.ops forced to that backend.

Work counted per call: covariance, the flops each provider actually performs (2 n d² for the full
product, 2 n × (lower tiles × tile²) for the syrk kernels) and also the bytes of acc read and written;
SPD solve, n³/3 + 2 n² k flops per matrix; low-rank update, the bytes of W (and the compensation
buffer) read and written once.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CSV_PATH = RESULTS / "kernels.csv"
CSV_FIELDS = [
    "kernel",
    "provider",
    "dtype",
    "shape",
    "metric",
    "unit",
    "p50",
    "p20",
    "p80",
    "achieved",
    "achieved_unit",
    "frac_peak",
    "ratio_to_torch",
    "device",
    "timestamp",
    "version",
    "note",
]

# Nominal peaks (dense, no sparsity) by device name: bytes/s of HBM and FLOP/s per precision.
PEAKS = {
    "H200": {"bandwidth": 4.8e12, "bf16": 989e12, "fp16": 989e12, "fp32": 67e12, "fp64": 67e12},
    "H100 PCIe": {"bandwidth": 2.0e12, "bf16": 756e12, "fp16": 756e12, "fp32": 51e12, "fp64": 51e12},
    "H100": {"bandwidth": 3.35e12, "bf16": 989e12, "fp16": 989e12, "fp32": 67e12, "fp64": 67e12},
    "A100": {"bandwidth": 2.0e12, "bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12, "fp64": 19.5e12},
}

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def _short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _version() -> str:
    try:
        import fastedit

        version = fastedit.__version__
    except Exception:
        version = "?"
    sha = os.environ.get("FASTEDIT_GIT_SHA", "")
    if not sha:
        head = HERE.parent / ".git" / "HEAD"
        try:
            ref = head.read_text().strip()
            if ref.startswith("ref: "):
                ref_path = HERE.parent / ".git" / ref[5:]
                sha = ref_path.read_text().strip() if ref_path.exists() else ""
            else:
                sha = ref
        except OSError:
            sha = ""
    return f"{version}+{sha[:10]}" if sha else version


@dataclass
class Case:
    """One benchmark case: zero-argument calls per provider and the work each performs."""

    kernel: str
    dtype: str
    shape: str
    baseline: str
    calls: dict[str, Callable[[], object]] = field(default_factory=dict)
    work: dict[str, tuple[float, str]] = field(default_factory=dict)  # provider -> (amount, "flop" | "byte")
    peak_key: str = "fp32"  # which FLOP peak applies ("bandwidth" for byte work)
    skipped: dict[str, str] = field(default_factory=dict)  # provider -> why it did not run
    notes: dict[str, str] = field(default_factory=dict)


def _forced(backend: str, fn: Callable[[], object]) -> Callable[[], object]:
    from fastedit import ops

    def call():
        with ops.use_backend(backend):
            return fn()

    return call


def covariance_case(d: int, n: int, x_dtype: torch.dtype, acc_dtype: torch.dtype, device: str) -> Case:
    from fastedit import ops
    from fastedit.kernels import covariance as cov

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, d, generator=g, device=device).to(x_dtype)
    acc = torch.zeros(d, d, dtype=acc_dtype, device=device)
    case = Case("covariance", f"{_short(x_dtype)}->{_short(acc_dtype)}", f"n={n} d={d}", baseline="torch_addmm")
    case.peak_key = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(x_dtype, "fp32" if x_dtype == torch.float32 else "fp64")

    # the goal's baseline: one full addmm_ for the same update, as fast as torch allows for these dtypes
    baseline_note = "acc.addmm_(x.T, x) in acc's dtype"
    full = lambda: acc.addmm_(x.mT.to(acc_dtype), x.to(acc_dtype))  # noqa: E731
    if device == "cuda" and x_dtype in (torch.bfloat16, torch.float16) and acc_dtype == torch.float32:
        try:
            probe = torch.zeros(16, 16, device=device)
            xs = torch.ones(8, 16, dtype=x_dtype, device=device)
            torch.addmm(probe, xs.mT, xs, out_dtype=torch.float32, out=probe)
            if torch.allclose(probe, torch.full_like(probe, 8.0)):
                full = lambda: torch.addmm(acc, x.mT, x, out_dtype=torch.float32, out=acc)  # noqa: E731
                baseline_note = "torch.addmm(acc, x.T, x, out_dtype=float32, out=acc): 16-bit tensor cores, in place"
        except Exception:
            try:
                torch.mm(xs.mT, xs, out_dtype=torch.float32)
                full = lambda: acc.add_(torch.mm(x.mT, x, out_dtype=torch.float32))  # noqa: E731
                baseline_note = "acc.add_(torch.mm(x.T, x, out_dtype=float32)): 16-bit tensor cores plus a d x d temporary"
            except Exception:
                pass
    case.calls["torch_addmm"] = full
    case.notes["torch_addmm"] = baseline_note
    case.work["torch_addmm"] = (2.0 * n * d * d, "flop")

    for backend in ("torch", "triton", "cuda"):
        why = ops.available_backends("second_moment_accumulate_", acc, x)[backend]
        if why is not None:
            case.skipped[backend] = why
            continue
        case.calls[backend] = _forced(backend, lambda: ops.second_moment_accumulate_(acc, x))
        if backend == "torch":
            panel = cov._panel_size(d)
            if d <= 2 * panel:
                flops = 2.0 * n * d * d
            else:
                flops = sum(2.0 * n * (min(s + panel, d) - s) * min(s + panel, d) for s in range(0, d, panel))
        else:
            tile = 128 if (backend == "triton" and x_dtype != torch.float32) else 64
            nb = math.ceil(d / tile)
            flops = 2.0 * n * (nb * (nb + 1) // 2) * tile * tile
        case.work[backend] = (flops, "flop")
    if device == "cuda" and "triton" in case.calls:
        # the same kernel with its programs in plain row-major order over the triangle (no
        # super-blocks): what the L2-friendly ordering gains
        case.calls["triton_rowmajor"] = lambda: cov.syrk_accumulate_triton_(acc, x, group=1)
        case.work["triton_rowmajor"] = case.work["triton"]
        case.notes["triton_rowmajor"] = "the Triton launcher with group=1"
    return case


def spd_case(batch: int, n: int, k: int, dtype: torch.dtype, device: str) -> Case:
    from fastedit import ops

    g = torch.Generator(device="cpu").manual_seed(1)
    M = torch.randn(batch, n, n, generator=g, dtype=torch.float64)
    A = (M @ M.mT / n + torch.eye(n, dtype=torch.float64)).to(dtype).to(device)
    B = torch.randn(batch, n, k, generator=g, dtype=torch.float64).to(dtype).to(device)
    case = Case("spd_solve", _short(dtype), f"batch={batch} n={n} k={k}", baseline="torch_linalg")
    case.peak_key = "fp64" if dtype == torch.float64 else "fp32"
    flops = batch * (n**3 / 3.0 + 2.0 * n * n * k)
    case.calls["torch_linalg"] = lambda: torch.cholesky_solve(B, torch.linalg.cholesky(A))
    case.notes["torch_linalg"] = "torch.linalg.cholesky + torch.cholesky_solve"
    case.work["torch_linalg"] = (flops, "flop")
    for backend in ("torch", "triton", "cuda", "cpp"):
        why = ops.available_backends("spd_solve_ex", A, B)[backend]
        if why is not None:
            case.skipped[backend] = why
            continue
        # the checked solve: like torch.linalg.cholesky it reads the failure codes on the host
        case.calls[backend] = _forced(backend, lambda: ops.spd_solve(A, B))
        case.work[backend] = (flops, "flop")
    return case


def lowrank_case(m: int, n: int, r: int, dtype: torch.dtype, comp: bool, device: str, transpose: bool = False) -> Case:
    from fastedit import ops

    g = torch.Generator(device="cpu").manual_seed(2)
    shape = (n, m) if transpose else (m, n)
    W = torch.randn(shape, generator=g).to(dtype).to(device)
    U = (1e-3 * torch.randn(m, r, generator=g)).to(device)
    V = (1e-3 * torch.randn(n, r, generator=g)).to(device)
    C = ops.new_compensation(W) if comp else None
    tag = "comp=float32" if comp else "comp=none"
    case = Case(
        "lowrank_update",
        _short(dtype),
        f"d_out={m} d_in={n} r={r} {tag}" + (" transpose" if transpose else ""),
        baseline="torch_addmm",
    )
    case.peak_key = "bandwidth"
    elem = W.element_size()
    traffic = 2.0 * W.numel() * elem + (2.0 * W.numel() * 4 if comp else 0.0)
    Ud, Vd = U.to(dtype), V.to(dtype)
    if transpose:
        case.calls["torch_addmm"] = lambda: W.addmm_(Vd, Ud.mT)
    else:
        case.calls["torch_addmm"] = lambda: W.addmm_(Ud, Vd.mT)
    case.notes["torch_addmm"] = "W.addmm_(U, V.T) in W's dtype, no compensation"
    case.work["torch_addmm"] = (2.0 * W.numel() * elem, "byte")
    for backend in ("torch", "triton", "cuda", "cpp"):
        why = ops.available_backends("lowrank_update_", W, U, V)[backend]
        if why is not None:
            case.skipped[backend] = why
            continue
        case.calls[backend] = _forced(
            backend, lambda: ops.lowrank_update_(W, U, V, transpose=transpose, compensation=C)
        )
        case.work[backend] = (traffic, "byte")
    return case


# --------------------------------------------------------------------------------------------------
# GPU timing


def time_cuda(fn: Callable[[], object], *, min_samples: int = 15, max_samples: int = 100, budget_s: float = 1.0):
    """Per-call times in ms (one per sample) with CUDA events; each sample averages enough calls for ~1 ms."""
    for _ in range(3):  # warm-up: compilation, autotuning, allocator
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    single = max(start.elapsed_time(end), 1e-3)
    inner = max(1, min(100, int(1.0 / single)))
    samples = []
    began = time.perf_counter()
    while len(samples) < max_samples and (len(samples) < min_samples or time.perf_counter() - began < budget_s):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / inner)
    return samples


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def rows_for_case(case: Case, times_ms: dict[str, list[float]], device_name: str, peaks: dict | None) -> list[dict]:
    """CSV rows (one per provider that ran) with percentiles, throughput, fraction of peak and ratio."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    version = _version()
    medians = {p: statistics.median(t) for p, t in times_ms.items() if t}
    base = medians.get(case.baseline)
    rows = []
    for provider, samples in times_ms.items():
        if not samples:
            continue
        s = sorted(samples)
        p50 = medians[provider]
        amount, kind = case.work[provider]
        per_s = amount / (p50 * 1e-3)
        if kind == "byte":
            achieved, unit = per_s / 1e9, "GB/s"
            peak = peaks.get("bandwidth") if peaks else None
        else:
            achieved, unit = per_s / 1e12, "TFLOP/s"
            peak = peaks.get(case.peak_key) if peaks else None
        rows.append(
            {
                "kernel": case.kernel,
                "provider": provider,
                "dtype": case.dtype,
                "shape": case.shape,
                "metric": "time",
                "unit": "ms",
                "p50": f"{p50:.6g}",
                "p20": f"{_percentile(s, 0.2):.6g}",
                "p80": f"{_percentile(s, 0.8):.6g}",
                "achieved": f"{achieved:.4g}",
                "achieved_unit": unit,
                "frac_peak": f"{per_s / peak:.3f}" if peak else "",
                "ratio_to_torch": f"{base / p50:.3f}" if base else "",
                "device": device_name,
                "timestamp": stamp,
                "version": version,
                "note": case.notes.get(provider, ""),
            }
        )
    return rows


def append_csv(rows: list[dict], path: Path = CSV_PATH) -> None:
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _peaks_for(name: str) -> dict | None:
    for key, values in PEAKS.items():  # "H100 PCIe" is listed before "H100"
        if key in name:
            return values
    return None


def _measured_copy_bandwidth() -> float:
    """Bytes/s of a device-to-device copy (read + write), for context beside the nominal figure."""
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    times = time_cuda(lambda: dst.copy_(src), min_samples=10, max_samples=20, budget_s=0.5)
    return 2.0 * src.numel() * 4 / (statistics.median(times) * 1e-3)


def gpu_cases(kernels: list[str], quick: bool) -> list[tuple[str, Callable[[], Case]]]:
    """(label, factory) for each GPU case; the factories allocate only when called."""
    cases: list[tuple[str, Callable[[], Case]]] = []
    if "covariance" in kernels:
        shapes = [(16384, 4096, torch.bfloat16, torch.float32)]
        if not quick:
            shapes += [
                (4096, 4096, torch.bfloat16, torch.float32),
                (16384, 1024, torch.bfloat16, torch.float32),
                (8192, 2048, torch.float16, torch.float64),
                (4096, 2048, torch.float32, torch.float32),
            ]
        cases += [
            (f"covariance d={d} n={n} {_short(x)}->{_short(a)}", lambda d=d, n=n, x=x, a=a: covariance_case(d, n, x, a, "cuda"))
            for d, n, x, a in shapes
        ]
    if "spd_solve" in kernels:
        grid = [(256, 64, 16), (1024, 32, 16), (4096, 16, 8)]
        if not quick:
            grid += [(256, 8, 8), (256, 32, 32), (1024, 64, 1), (4096, 64, 16), (256, 128, 16), (64, 256, 64)]
        cases += [
            (f"spd_solve batch={b} n={n} k={k} {_short(dt)}", lambda b=b, n=n, k=k, dt=dt: spd_case(b, n, k, dt, "cuda"))
            for b, n, k in grid
            for dt in (torch.float32, torch.float64)
        ]
    if "lowrank_update" in kernels:
        grid = [(4096, 14336, 1, torch.bfloat16, False, False), (4096, 14336, 1, torch.bfloat16, True, False)]
        if not quick:
            grid += [
                (4096, 14336, 16, torch.bfloat16, True, False),
                (4096, 14336, 256, torch.bfloat16, False, False),
                (1600, 6400, 1, torch.float32, False, True),
                (14336, 4096, 1, torch.float16, True, True),
            ]
        cases += [
            (
                f"lowrank_update {m}x{n} r={r} {_short(dt)} comp={comp} transpose={tr}",
                lambda m=m, n=n, r=r, dt=dt, comp=comp, tr=tr: lowrank_case(m, n, r, dt, comp, "cuda", transpose=tr),
            )
            for m, n, r, dt, comp, tr in grid
        ]
    return cases


def _shape_field(shape: str, name: str) -> int:
    """The integer after ``name=`` in a shape string like ``batch=256 n=64 k=16``."""
    for part in shape.split():
        key, _, value = part.partition("=")
        if key == name:
            return int(value)
    raise KeyError(f"{name} not in shape {shape!r}")


def evaluate_goals(rows: list[dict]) -> list[dict]:
    """The issue's three GPU goals, judged from this run's rows."""

    def best(filter_fn, providers=("triton", "cuda")):
        cands = [r for r in rows if filter_fn(r) and r["provider"] in providers and r["ratio_to_torch"]]
        return max(cands, key=lambda r: float(r["ratio_to_torch"])) if cands else None

    goals = []
    cov = best(lambda r: r["kernel"] == "covariance" and r["shape"].endswith("d=16384") and r["dtype"].startswith("bfloat16"))
    goals.append(
        {
            "goal": "covariance >= 1.7x faster than a full addmm_ at d_ff 16384, bf16 inputs (ideal 2x)",
            "value": float(cov["ratio_to_torch"]) if cov else None,
            "provider": cov["provider"] if cov else None,
            "met": bool(cov and float(cov["ratio_to_torch"]) >= 1.7),
        }
    )
    spd_rows = [
        r
        for r in rows
        if r["kernel"] == "spd_solve"
        and _shape_field(r["shape"], "n") <= 64
        and _shape_field(r["shape"], "batch") >= 256
    ]
    worst = None
    for key in {(r["dtype"], r["shape"]) for r in spd_rows}:
        ours = [
            float(r["ratio_to_torch"])
            for r in spd_rows
            if (r["dtype"], r["shape"]) == key and r["provider"] in ("triton", "cuda") and r["ratio_to_torch"]
        ]
        if ours and (worst is None or max(ours) < worst[0]):
            worst = (max(ours), key)
    goals.append(
        {
            "goal": "batched SPD solve >= 3x faster than torch.linalg.cholesky + cholesky_solve, n <= 64, batch >= 256",
            "value": worst[0] if worst else None,
            "worst_case": f"{worst[1][0]} {worst[1][1]}" if worst else None,
            "met": bool(worst and worst[0] >= 3.0),
        }
    )
    lr = [r for r in rows if r["kernel"] == "lowrank_update" and r["provider"] in ("triton", "cuda") and r["frac_peak"]]
    top = max(lr, key=lambda r: float(r["frac_peak"])) if lr else None
    goals.append(
        {
            "goal": "fused low-rank update >= 80% of the card's memory bandwidth",
            "value": float(top["frac_peak"]) if top else None,
            "provider": top["provider"] if top else None,
            "shape": top["shape"] if top else None,
            "met": bool(top and float(top["frac_peak"]) >= 0.8),
        }
    )
    return goals


def run_gpu(args) -> int:
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA device; the GPU mode has nothing to time", file=sys.stderr)
        return 0
    device_name = torch.cuda.get_device_name()
    peaks = _peaks_for(device_name)
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    began = time.perf_counter()
    copy_bw = _measured_copy_bandwidth()
    all_rows: list[dict] = []
    skipped: list[dict] = []
    errors: list[dict] = []
    for label, make in gpu_cases(kernels, args.quick):
        if time.perf_counter() - began > args.budget_s:
            errors.append({"case": label, "error": f"time budget of {args.budget_s:.0f} s spent; this and later cases not run"})
            break
        try:
            case = make()
        except Exception as exc:  # e.g. out of memory on a smaller card
            errors.append({"case": label, "error": f"{type(exc).__name__}: {exc}"})
            torch.cuda.empty_cache()
            continue
        times: dict[str, list[float]] = {}
        for provider, fn in case.calls.items():
            try:
                times[provider] = time_cuda(fn, budget_s=args.per_provider_s)
            except Exception as exc:
                errors.append(
                    {"kernel": case.kernel, "shape": case.shape, "provider": provider, "error": f"{type(exc).__name__}: {exc}"}
                )
        for provider, why in case.skipped.items():
            skipped.append(
                {"kernel": case.kernel, "shape": case.shape, "dtype": case.dtype, "provider": provider, "why": why}
            )
        rows = rows_for_case(case, times, device_name, peaks)
        all_rows += rows
        for r in rows:
            print(
                f"{r['kernel']:<15s} {r['dtype']:<17s} {r['shape']:<40s} {r['provider']:<12s} "
                f"{float(r['p50']):10.4f} ms  {r['achieved']:>9s} {r['achieved_unit']:<7s} "
                f"peak {r['frac_peak'] or '-':>6s}  x{r['ratio_to_torch'] or '-'}",
                flush=True,
            )
        del case
        torch.cuda.empty_cache()
        # saved after every case, so a run cut short keeps what it measured
        if not args.no_csv:
            append_csv(rows, Path(args.csv))
        if args.json:
            _write_summary(args, device_name, peaks, copy_bw, began, all_rows, skipped, errors, final=False)
    summary = _write_summary(args, device_name, peaks, copy_bw, began, all_rows, skipped, errors, final=True)
    for goal in summary["goals"]:
        print(f"goal: {goal['goal']}: value {goal['value']}, met {goal['met']}")
    return 0


def _write_summary(args, device_name, peaks, copy_bw, began, all_rows, skipped, errors, final: bool) -> dict:
    summary = {
        "device": device_name,
        "nominal_peaks": peaks,
        "measured_copy_bandwidth_GBps": copy_bw / 1e9,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "version": _version(),
        "seconds": time.perf_counter() - began,
        "goals": evaluate_goals(all_rows),
        "complete": final,
        "rows": all_rows,
        "skipped": skipped,
        "errors": errors,
    }
    try:
        import triton

        summary["triton"] = triton.__version__
    except Exception:
        summary["triton"] = None
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", default="covariance,spd_solve,lowrank_update")
    parser.add_argument("--quick", action="store_true", help="the goal shapes only")
    parser.add_argument("--csv", default=str(CSV_PATH))
    parser.add_argument("--no-csv", action="store_true")
    parser.add_argument("--json", default=str(RESULTS / "kernels_gpu.json"))
    parser.add_argument("--budget-s", type=float, default=150.0, help="stop starting new cases after this long")
    parser.add_argument("--per-provider-s", type=float, default=0.5, help="sampling time per provider and case")
    args = parser.parse_args(argv)
    return run_gpu(args)


# --------------------------------------------------------------------------------------------------
# pytest-benchmark: the CPU paths (collected only when this file is named on the command line)

try:
    import pytest
except ImportError:  # script mode needs no pytest
    pytest = None

if pytest is not None:
    _CPU_ROWS: list[dict] = []

    CPU_CASES = {
        "covariance-bf16-n512-d1024": lambda: covariance_case(1024, 512, torch.bfloat16, torch.float32, "cpu"),
        "covariance-fp32-n256-d2048": lambda: covariance_case(2048, 256, torch.float32, torch.float64, "cpu"),
        "spd-fp64-b256-n16-k8": lambda: spd_case(256, 16, 8, torch.float64, "cpu"),
        "spd-fp32-b64-n64-k16": lambda: spd_case(64, 64, 16, torch.float32, "cpu"),
        "lowrank-bf16-1024x4096-r1-comp": lambda: lowrank_case(1024, 4096, 1, torch.bfloat16, True, "cpu"),
        "lowrank-fp32-1024x4096-r8": lambda: lowrank_case(1024, 4096, 8, torch.float32, False, "cpu"),
    }
    CPU_PROVIDERS = ["torch_addmm", "torch_linalg", "torch", "cpp"]
    _BUILT: dict[str, Case] = {}

    def _case(name: str) -> Case:
        if name not in _BUILT:
            _BUILT[name] = CPU_CASES[name]()
        return _BUILT[name]

    @pytest.fixture(scope="module", autouse=True)
    def _write_rows():
        yield
        by_case: dict[tuple[str, str, str], Case] = {}
        times: dict[tuple[str, str, str], dict[str, list[float]]] = {}
        for row in _CPU_ROWS:
            key = (row["case"].kernel, row["case"].dtype, row["case"].shape)
            by_case[key] = row["case"]
            times.setdefault(key, {})[row["provider"]] = row["times_ms"]
        rows = []
        for key, case in by_case.items():
            rows += rows_for_case(case, times[key], f"cpu ({os.cpu_count()} cores; {torch.get_num_threads()} torch threads)", None)
        append_csv(rows)

    @pytest.mark.parametrize("provider", CPU_PROVIDERS)
    @pytest.mark.parametrize("name", list(CPU_CASES))
    def test_cpu_kernel(benchmark, name, provider):
        case = _case(name)
        if provider not in case.calls:
            pytest.skip(case.skipped.get(provider, f"{provider} is not a provider of {case.kernel}"))
        benchmark.group = name
        benchmark(case.calls[provider])
        _CPU_ROWS.append({"case": case, "provider": provider, "times_ms": [t * 1e3 for t in benchmark.stats.stats.data]})


if __name__ == "__main__":
    sys.exit(main())
