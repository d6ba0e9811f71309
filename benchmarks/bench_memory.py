"""Peak memory of an editing session, per method and model: what fits before running it.

Each configuration runs in fresh subprocesses with one torch thread, so one peak cannot hide
another's:

1. ``statistics``: load the model, compute the second-moment statistics of the edited layers from
   the shipped Wikipedia sample into a temporary cache (one full forward batch: 8,192 tokens);
2. ``edit``: load the model again, read those statistics from the cache and apply two sequential
   edits (the demo's first two requests).

Each reports its peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) after loading
and after its work, and on a GPU ``torch.cuda.max_memory_allocated``. The number of optimisation
steps is cut to 2 (``--steps``): memory does not depend on it, time does.

    python benchmarks/bench_memory.py --configs smollm2-135m:memit smollm2-135m:rome \\
        --out benchmarks/results/memory_cpu.json
    python benchmarks/bench_memory.py --configs random:gpt2-xl:memit --device cpu

A configuration is ``MODEL:METHOD[:MODE]``: ``MODEL`` a fastedit name or folder (its preset by name)
or ``random:ARCH`` (random weights of a full-size architecture from ``fastedit.models.configs``,
GPT-2's tokenizer), ``MODE`` exact (default) or fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("bench_memory")

HERE = Path(__file__).resolve().parent


def _peaks(torch) -> dict:
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    with open("/proc/self/statm") as f:
        out["rss_mib"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _load(model: str, dtype, device: str):
    from fastedit.models.configs import random_model
    from fastedit.models.loading import gpt2_tokenizer, load_model

    if model.startswith("random:"):
        arch = model.split(":", 1)[1]
        m = random_model(arch, dtype=dtype, device=device)
        m.config._name_or_path = arch
        return m, gpt2_tokenizer(), arch
    m, tok = load_model(model, dtype=dtype, device=device)
    return m, tok, Path(model).name.lower()


def child(args) -> dict:
    """One phase of one configuration, in this process (see the module docstring)."""
    import torch

    torch.set_num_threads(1)
    from fastedit.bundled import WIKIPEDIA_SAMPLE
    from fastedit.engine import EditSession
    from fastedit.experiments.demo import demo_requests
    from fastedit.hparams import load_hparams
    from fastedit.models.adapters import get_adapter

    report = {"phase": args.phase, "start": _peaks(torch)}
    t0 = time.perf_counter()
    model, tok, preset = _load(args.model, getattr(torch, args.dtype), args.device)
    report["load"] = _peaks(torch)
    report["parameters"] = sum(p.numel() for p in model.parameters())
    max_len = min(args.max_len, get_adapter(model).max_positions(model))
    docs = -(-8192 // max_len)  # one full forward batch of the statistics pass
    hp = load_hparams(args.method, args.hparams or preset).replace(mom2_n_samples=docs, v_num_grad_steps=args.steps)
    session = EditSession(model, tok, args.method, hp, mode=args.mode, stats_dir=args.stats_dir,
                          stats_source=str(WIKIPEDIA_SAMPLE), stats_max_len=max_len, progress=False)
    if args.phase == "statistics":
        session.stats.ensure(hp.layers)
    else:
        for request in demo_requests()[:2]:
            session.apply([request])
    report["work"] = _peaks(torch)
    report["seconds"] = time.perf_counter() - t0
    report["layers"] = list(hp.layers)
    return report


def run_config(spec: str, args) -> dict:
    parts = spec.split(":")
    if parts[0] == "random":
        model, parts = f"random:{parts[1]}", parts[2:]
    else:
        model, parts = parts[0], parts[1:]
    method, mode = parts[0], (parts[1] if len(parts) > 1 else "exact")
    row = {"model": model, "method": method, "mode": mode, "dtype": args.dtype, "device": args.device}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as stats_dir:
        for phase in ("statistics", "edit"):
            cmd = [sys.executable, __file__, "--child", "--phase", phase, "--model", model, "--method", method,
                   "--mode", mode, "--dtype", args.dtype, "--device", args.device, "--steps", str(args.steps),
                   "--max-len", str(args.max_len), "--stats-dir", stats_dir]
            if args.hparams:
                cmd += ["--hparams", args.hparams]
            log.info("%s: %s", spec, phase)
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                row[phase] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
                log.error("%s %s failed: %s", spec, phase, done.stderr[-2000:])
                break
            row[phase] = json.loads(done.stdout.strip().splitlines()[-1])
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["smollm2-135m:memit", "smollm2-135m:rome"])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=2, help="target optimisation steps (memory does not depend on it)")
    ap.add_argument("--max-len", type=int, default=1024, help="statistics row length (capped by the model's context)")
    ap.add_argument("--hparams", default=None, help="preset or hparams file (default: the model's preset)")
    ap.add_argument("--out", default=None, help="JSON file to append the results to")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--phase", default="edit", help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--method", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="exact", help=argparse.SUPPRESS)
    ap.add_argument("--stats-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    rows = []
    for spec in args.configs:
        row = run_config(spec, args)
        rows.append(row)
        s, e = row.get("statistics", {}), row.get("edit", {})
        log.info("%s: after load %.0f MiB, statistics peak %s MiB, edit peak %s MiB", spec,
                 s.get("load", {}).get("peak_rss_mib", float("nan")), s.get("work", {}).get("peak_rss_mib"),
                 e.get("work", {}).get("peak_rss_mib"))
    result = {"machine": platform.node(), "cpu_count": os.cpu_count(), "torch_threads": 1, "rows": rows,
              "command": " ".join([Path(sys.executable).name] + sys.argv)}
    if args.out:
        path = Path(args.out)
        old = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(old + [result], indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
