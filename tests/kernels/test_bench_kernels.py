"""The benchmark plumbing that otherwise only runs on a GPU machine: rows, CSV schema, goals, suite script."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", REPO / "benchmarks" / "bench_kernels.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_kernels"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _synthetic_rows(bench):
    h100 = bench._peaks_for("NVIDIA H100 80GB HBM3")
    rows = []
    case = bench.Case("covariance", "bfloat16->float32", "n=4096 d=16384", baseline="torch_addmm", peak_key="bf16")
    case.work = {"torch_addmm": (2 * 4096 * 16384**2, "flop"), "triton": (4096 * 16384**2, "flop")}
    rows += bench.rows_for_case(case, {"torch_addmm": [3.0, 3.2, 2.8], "triton": [1.7, 1.6, 1.8]}, "H100", h100)
    case = bench.Case("spd_solve", "float64", "batch=256 n=64 k=16", baseline="torch_linalg", peak_key="fp64")
    case.work = {"torch_linalg": (1e9, "flop"), "cuda": (1e9, "flop")}
    rows += bench.rows_for_case(case, {"torch_linalg": [0.4], "cuda": [0.2]}, "H100", h100)
    case = bench.Case("lowrank_update", "bfloat16", "d_out=4096 d_in=14336 r=1 comp=none", baseline="torch_addmm")
    case.peak_key = "bandwidth"
    case.work = {"torch_addmm": (2.9e8, "byte"), "triton": (2.9e8, "byte")}
    rows += bench.rows_for_case(case, {"torch_addmm": [0.12], "triton": [0.1]}, "H100", h100)
    return rows


def test_rows_follow_the_csv_schema(bench, tmp_path):
    rows = _synthetic_rows(bench)
    path = tmp_path / "kernels.csv"
    bench.append_csv(rows, path)
    bench.append_csv(rows[:1], path)  # appending keeps one header
    with path.open() as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == bench.CSV_FIELDS
    assert len(read) == len(rows) + 1
    triton_cov = next(r for r in read if r["kernel"] == "covariance" and r["provider"] == "triton")
    assert float(triton_cov["ratio_to_torch"]) == pytest.approx(3.0 / 1.7, rel=1e-3)
    assert triton_cov["achieved_unit"] == "TFLOP/s" and float(triton_cov["frac_peak"]) > 0


def test_goals_are_judged_from_the_rows(bench):
    goals = bench.evaluate_goals(_synthetic_rows(bench))
    by_name = {g["goal"].split()[0]: g for g in goals}
    assert by_name["covariance"]["met"] is True  # 3.0 / 1.7 = 1.76 >= 1.7
    assert by_name["batched"]["met"] is False and by_name["batched"]["value"] == pytest.approx(2.0)
    assert by_name["fused"]["value"] == pytest.approx(2.9e8 / 0.1e-3 / 3.35e12, rel=1e-3)


def test_cpu_cases_build(bench):
    case = bench.spd_case(4, 8, 2, bench.DTYPES["float64"], "cpu")
    assert {"torch_linalg", "torch"} <= set(case.calls)
    for call in case.calls.values():
        call()
    case = bench.lowrank_case(8, 12, 1, bench.DTYPES["bfloat16"], True, "cpu", transpose=True)
    for call in case.calls.values():
        call()


def test_gpu_suite_script_parses_and_dry_runs():
    script = REPO / "benchmarks" / "gpu_suite.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    done = subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "build" in done.stdout and "kernel_tests" in done.stdout and "bench_kernels" in done.stdout
