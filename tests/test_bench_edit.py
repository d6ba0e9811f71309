"""benchmarks/bench_edit.py: every registered method runs against its plain implementation."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from fastedit.methods.registry import method_names

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))  # bench_edit imports machine_info beside it
    try:
        spec = importlib.util.spec_from_file_location("bench_edit", REPO / "benchmarks" / "bench_edit.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_edit"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


def test_every_method_has_a_baseline(bench):
    assert set(bench.BASELINES) == set(method_names())
    for name in method_names():
        assert bench.parse(["--method", name]).method == name
    with pytest.raises(SystemExit):
        bench.parse(["--method", "no-such-method"])


@pytest.mark.parametrize("method", ["alphaedit", "emmet", "encore"])
def test_successor_runs_against_its_plain_implementation(method, bench, shared_data, tmp_path, monkeypatch):
    """One edit on the tiny random GPT-2: the baseline ran, and its update is the session's to the
    float32 target optimisation's rounding (another method's update would be off by its whole size)."""
    monkeypatch.setattr(bench, "DATA", shared_data)
    args = bench.parse(["--model", "random:gpt2", "--method", method, "--edits", "1", "--stats-dir", str(tmp_path)])
    res = bench.run_throughput(args)
    assert res["method"] == method and res["baseline_edits"] == 1 and res["speedup"] > 0
    assert math.isfinite(res["max_rel_update_error"]) and res["max_rel_update_error"] < 0.2
