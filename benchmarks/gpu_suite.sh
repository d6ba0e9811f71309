#!/usr/bin/env bash
# The GPU suite: one command for a CUDA machine with no network (H100/H200, CUDA 13, python 3.12,
# torch 2.11, triton 3.6). Within 8 minutes it
#   1. builds the extension with its CUDA kernels (pip install --no-build-isolation --no-deps -e .),
#   2. runs every GPU test (pytest -m gpu: tests/kernels first, then the rest of tests/),
#   3. runs the kernel microbenchmarks (benchmarks/bench_kernels.py: torch vs Triton vs CUDA) and the
#      growing-system solve at d = 14,336 (benchmarks/bench_chol_update.py: factor update vs refactorising),
#   4. runs the end-to-end benchmarks if present (hooks below: bench_stats.py, bench_edit.py),
#   5. writes benchmarks/results/gpu_suite.json and a short table benchmarks/results/gpu_suite.md.
# Each step has a time budget (capped by what is left of the total); a failed or timed-out step is
# recorded in the JSON and the suite goes on. Logs: benchmarks/results/gpu_suite_logs/<step>.log.
#
# Usage: bash benchmarks/gpu_suite.sh [--dry-run] [--quick] [--budget SECONDS] [--skip-build] [--out DIR]
#   --dry-run     print the plan and exit (no build, no tests, nothing written)
#   --quick       benchmark only the goal shapes
#   --budget S    total wall-clock budget in seconds (default 470)
#   --skip-build  use the extension already built in place
#   --skip-hooks  leave out the end-to-end benchmarks (the report keeps their last JSON, if any)
#   --out DIR     also copy the result files (JSON, table, CSV, logs as one .tar.gz) into DIR
# Environment: PYTHON (default python3), MAX_JOBS (default: number of CPUs), FASTEDIT_CUDA_ARCHS.
set -u

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1

PY="${PYTHON:-python3}"
results="$root/benchmarks/results"
logs="$results/gpu_suite_logs"
total_budget=470
reserve=15  # kept back for the report
dry_run=0
quick=0
skip_build=0
skip_hooks=0
out_dir=""

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --quick) quick=1 ;;
    --skip-build) skip_build=1 ;;
    --skip-hooks) skip_hooks=1 ;;
    --budget) shift; total_budget="${1:?--budget needs a number of seconds}" ;;
    --out) shift; out_dir="${1:?--out needs a directory}" ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_suite: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

started=$(date +%s)
steps_tsv="$(mktemp -t gpu_suite_steps.XXXXXX)"
trap 'rm -f "$steps_tsv"' EXIT

elapsed() { echo $(( $(date +%s) - started )); }

# step NAME BUDGET_S COMMAND...: run with a time budget, record name/status/rc/seconds/log.
step() {
  local name="$1" budget="$2"
  shift 2
  local left=$(( total_budget - reserve - $(elapsed) ))
  [ "$budget" -gt "$left" ] && budget="$left"
  if [ "$dry_run" = 1 ]; then
    printf 'gpu_suite [dry-run] %-16s budget %4ss: %s\n' "$name" "$budget" "$*"
    printf '%s\tdry-run\t0\t0\t\n' "$name" >> "$steps_tsv"
    return 0
  fi
  if [ "$budget" -lt 10 ]; then
    echo "gpu_suite: $name skipped, the time budget is spent" >&2
    printf '%s\tskipped (no time left)\t-1\t0\t\n' "$name" >> "$steps_tsv"
    return 1
  fi
  local log="$logs/$name.log" t0 rc status
  t0=$(date +%s)
  echo "gpu_suite: $name (budget ${budget}s) ..." >&2
  timeout --kill-after=10 "$budget" "$@" > "$log" 2>&1
  rc=$?
  case "$rc" in
    0) status="ok" ;;
    124|137) status="timeout after ${budget}s" ;;
    *) status="failed" ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(( $(date +%s) - t0 ))" "$log" >> "$steps_tsv"
  echo "gpu_suite: $name: $status ($(( $(date +%s) - t0 ))s, log $log)" >&2
  return "$rc"
}

# --- is there a GPU? ---------------------------------------------------------------------------------
gpu_line="$("$PY" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "")' 2>/dev/null)"
if [ -z "$gpu_line" ]; then
  if [ "$dry_run" = 1 ]; then
    echo "gpu_suite: no CUDA device visible to $PY (torch missing or torch.cuda.is_available() is False); the plan:"
  else
    echo "gpu_suite: no CUDA device visible to $PY (torch missing or torch.cuda.is_available() is False): nothing to run"
    exit 0
  fi
else
  echo "gpu_suite: $gpu_line, python $("$PY" -c 'import sys; print(sys.version.split()[0])'), total budget ${total_budget}s" >&2
fi

[ "$dry_run" = 1 ] || mkdir -p "$logs"
unset TRITON_INTERPRET  # the Triton kernels must compile for the GPU, not run in the interpreter
export PYTHONUNBUFFERED=1
export MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 8)}"
export FASTEDIT_GIT_SHA="${FASTEDIT_GIT_SHA:-$(git rev-parse HEAD 2>/dev/null || true)}"

# shellcheck disable=SC2016  # $1 is expanded by the inner shell
step environment 30 bash -c '
  nvidia-smi || true
  "$1" -c "import sys, torch; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda)"
  "$1" -c "import triton; print(\"triton\", triton.__version__)" || true
  command -v nvcc && nvcc --version | tail -2
' _ "$PY"

# --- 1. build ---------------------------------------------------------------------------------------
if [ "$skip_build" = 0 ]; then
  step build 240 env FASTEDIT_FORCE_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e .
fi
step extension 30 "$PY" -c 'import torch; from fastedit import _ext; m = _ext.load(); assert m is not None, _ext.unavailable_reason(); assert _ext.has_cuda(), "fastedit._C has no CUDA kernels"; print("fastedit._C with CUDA kernels:", m.__file__)'

# --- 2. GPU tests -------------------------------------------------------------------------------------
xdist=()
if "$PY" -c 'import xdist' 2>/dev/null; then xdist=(-n 8); fi  # parallel Triton compiles
step kernel_tests 120 env FASTEDIT_RESULTS_DIR="$results" "$PY" -m pytest tests/kernels -m gpu -q -rfEs ${xdist[@]+"${xdist[@]}"} -p no:cacheprovider \
  --junitxml="$results/gpu_suite_kernel_tests.xml"
# importing fastedit must not initialise CUDA: only meaningful where CUDA exists
step import_tests 90 "$PY" -m pytest tests/test_import.py -q -rfEs -p no:cacheprovider \
  --junitxml="$results/gpu_suite_import_tests.xml"
step other_gpu_tests 90 "$PY" -m pytest tests -m gpu --ignore=tests/kernels --ignore=tests/test_import.py -q -rfEs \
  -p no:cacheprovider --junitxml="$results/gpu_suite_other_tests.xml"

# --- 3. kernel microbenchmarks -----------------------------------------------------------------------
left=$(( total_budget - reserve - $(elapsed) ))
bench_budget=$(( left < 110 ? left : 110 ))
# the script stops starting new cases 30 s before its step's budget ends (and saves after each case)
bench_args=(--json "$results/kernels_gpu.json" --budget-s $(( bench_budget > 40 ? bench_budget - 30 : 10 )))
[ "$quick" = 1 ] && bench_args+=(--quick)
step bench_kernels "$bench_budget" "$PY" benchmarks/bench_kernels.py "${bench_args[@]}"

# --- 3b. growing-system solve: the Cholesky factor update against refactorising, at Llama-3-8B's d_ff ---
step bench_chol_update 90 "$PY" benchmarks/bench_chol_update.py --device cuda --d 14336 --k 1 10 \
  --dtype float32 float64 --reps 5 --base-reps 2 --json "$results/bench_chol_update_gpu.json"

# --- 4. HOOKS: end-to-end benchmarks (owned by the engine; run only if the files exist) -------------
# Each is called with FASTEDIT_GPU_SUITE=1 and FASTEDIT_RESULTS_DIR=benchmarks/results and should
# write its own JSON there (bench_stats.json, bench_edit.json), which the report below picks up.
for hook in bench_stats bench_edit; do
  [ "$skip_hooks" = 1 ] && break
  case "$hook" in bench_edit) hook_budget=240 ;; *) hook_budget=100 ;; esac
  if [ -f "benchmarks/$hook.py" ]; then
    step "$hook" "$hook_budget" env FASTEDIT_GPU_SUITE=1 FASTEDIT_RESULTS_DIR="$results" "$PY" "benchmarks/$hook.py"
  else
    echo "gpu_suite: hook $hook: benchmarks/$hook.py not present, skipped" >&2
    printf '%s\tnot present\t-1\t0\t\n' "$hook" >> "$steps_tsv"
  fi
done

# --- 5. report ---------------------------------------------------------------------------------------
if [ "$dry_run" = 1 ]; then
  echo "gpu_suite [dry-run] report: would write $results/gpu_suite.json and $results/gpu_suite.md"
  exit 0
fi
"$PY" - "$steps_tsv" "$results" "$total_budget" "$(elapsed)" "$gpu_line" <<'PYEOF'
import json, sys, time, xml.etree.ElementTree as ET
from pathlib import Path

steps_tsv, results, budget, elapsed, gpu = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
steps = []
for line in Path(steps_tsv).read_text().splitlines():
    name, status, rc, seconds, log = (line.split("\t") + [""] * 5)[:5]
    entry = {"name": name, "status": status, "rc": int(rc), "seconds": int(seconds)}
    if log:
        entry["log"] = str(Path(log).relative_to(results.parent.parent)) if log.startswith(str(results.parent.parent)) else log
        if status != "ok":
            try:
                entry["log_tail"] = Path(log).read_text(errors="replace").splitlines()[-25:]
            except OSError:
                pass
    steps.append(entry)

def junit(name):
    path = results / name
    if not path.exists():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return {"error": str(exc)}
    suites = [root] if root.tag == "testsuite" else list(root)
    out = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    out["failed"] = [
        f"{case.get('classname')}::{case.get('name')}"
        for s in suites for case in s.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ][:50]
    return out

bench = None
bench_path = results / "kernels_gpu.json"
if bench_path.exists():
    try:
        bench = json.loads(bench_path.read_text())
    except ValueError as exc:
        bench = {"error": f"unreadable: {exc}"}
end_to_end = {}
for name in ("bench_stats", "bench_edit", "bench_chol_update_gpu"):
    path = results / f"{name}.json"
    if path.exists():
        try:
            end_to_end[name] = json.loads(path.read_text())
        except ValueError as exc:
            end_to_end[name] = {"error": f"unreadable: {exc}"}

summary = {
    "gpu": gpu,
    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "budget_s": budget,
    "elapsed_s": elapsed,
    "ok": all(s["status"] in ("ok", "not present") for s in steps),
    "steps": steps,
    "tests": {
        "kernels": junit("gpu_suite_kernel_tests.xml"),
        "import": junit("gpu_suite_import_tests.xml"),
        "other": junit("gpu_suite_other_tests.xml"),
    },
    "goals": (bench or {}).get("goals"),
    "kernel_benchmarks": bench,
    "end_to_end": end_to_end,
}
(results / "gpu_suite.json").write_text(json.dumps(summary, indent=2) + "\n")

md = [f"# GPU suite: {gpu}", "", f"{summary['timestamp']}, {elapsed} s of {budget} s.", "", "| step | status | s |", "|---|---|---|"]
md += [f"| {s['name']} | {s['status']} | {s['seconds']} |" for s in steps]
for key, t in summary["tests"].items():
    if t and "tests" in t:
        md.append(f"\nTests ({key}): {t['tests']} run, {t['failures']} failed, {t['errors']} errors, {t['skipped']} skipped.")
        md += [f"- failed: {f}" for f in t["failed"][:10]]
if summary["goals"]:
    md += ["", "| goal | value | met |", "|---|---|---|"]
    md += [f"| {g['goal']} | {g['value'] if g['value'] is None else round(g['value'], 3)} | {'yes' if g['met'] else 'NO'} |" for g in summary["goals"]]
if bench and bench.get("rows"):
    md += ["", f"Measured device-to-device copy: {bench.get('measured_copy_bandwidth_GBps', 0):.0f} GB/s.", "",
           "| kernel | dtype | shape | provider | p50 ms | achieved | of peak | vs torch |", "|---|---|---|---|---|---|---|---|"]
    for r in bench["rows"]:
        md.append(f"| {r['kernel']} | {r['dtype']} | {r['shape']} | {r['provider']} | {float(r['p50']):.4f} | "
                  f"{r['achieved']} {r['achieved_unit']} | {r['frac_peak'] or '-'} | {r['ratio_to_torch'] or '-'} |")
(results / "gpu_suite.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
PYEOF
if [ -n "$out_dir" ]; then
  mkdir -p "$out_dir"
  for f in gpu_suite.json gpu_suite.md kernels_gpu.json kernels.csv bench_stats.json bench_edit.json \
           bench_chol_update_gpu.json; do
    [ -f "$results/$f" ] && cp "$results/$f" "$out_dir/"
  done
  tar -czf "$out_dir/gpu_suite_logs.tar.gz" -C "$results" gpu_suite_logs \
    $(cd "$results" && ls gpu_suite_*.xml compensated_update.json 2>/dev/null)
fi
echo "gpu_suite: done in $(elapsed)s; results in $results/gpu_suite.json and gpu_suite.md" >&2
