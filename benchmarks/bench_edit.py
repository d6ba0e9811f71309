"""End-to-end edit throughput: fastedit against a reference-style implementation, in one process.

    python benchmarks/bench_edit.py --model smollm2-135m --method memit --mode exact --edits 10
    python benchmarks/bench_edit.py --model smollm2-135m --method memit --mode fast --edits 10
    python benchmarks/bench_edit.py --model gpt2-xl --method memit --mode exact --edits 20 --device cuda
    python benchmarks/bench_edit.py --model smollm2-135m --method memit --efficacy 100

``--method`` is any registered method (rome, r-rome, memit, alphaedit, emmet, encore). N sequential
edits (``--batch-size`` requests each) of CounterFact records are applied twice to the same starting
model: by that method's ``fastedit.methods.plain`` implementation (:data:`BASELINES`: the reference
code's structure and cost, whole model passes with hooks, full logits, torch.optim.Adam with a
host-side loss check, separate key passes, dense solves) and by an :class:`~fastedit.EditSession` in
the chosen mode, with the same context templates and statistics. Each edit's weight update is
compared (relative Frobenius error of ΔW per layer, the largest reported). ``--model`` is a fastedit
name, a local folder, or a random-weight architecture (``gpt2-xl``, ``gpt-j-6b``, ``llama-3-8b`` at
full size, their width-16 CPU proxies ``gpt2-xl-narrow`` and ``llama-3-8b-narrow`` with the full
model's preset, or ``random:gpt2``/``random:llama``/... tiny) with synthetic statistics.

``--memory N`` instead runs N sequential edits (no baseline) and reports ``peak_memory_ratio``, the peak
RSS after all edits over the peak after the first 10%, with both peaks; ``--save-every K`` adds a
session checkpoint into one folder every K edits and reports each save's seconds and bytes written.

``--efficacy N`` instead measures the fraction of N sequential edits that succeed right after they are
applied (P(new) > P(true) on the rewrite prompt) in exact and in fast mode.

The last line printed is one JSON object (edits_per_s, baseline_edits_per_s, speedup,
max_rel_update_error, the per-phase breakdown, the machine); ``--out`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from machine_info import machine  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FASTEDIT_DATA_DIR", REPO.parent / "shared" / "data"))


def load(args):
    from fastedit.hparams import load_hparams
    from fastedit.models import gpt2_tokenizer, load_model, random_model
    from fastedit.models.configs import FULL_SIZES

    dtype = getattr(torch, args.dtype)
    name = args.model
    synthetic = name in FULL_SIZES or name.startswith("random:")
    if synthetic:
        arch = name.split(":", 1)[1] if name.startswith("random:") else name
        with torch.device(args.device):
            model = random_model(arch, dtype=dtype, device=args.device)
        tok = gpt2_tokenizer()
    else:
        model, tok = load_model(name, dtype=dtype, device=args.device)
    # a narrow proxy edits with its full-size model's preset
    preset = args.hparams or (name.removesuffix("-narrow") if not name.startswith("random:") else None)
    hp = load_hparams(args.method, small_hparams(args.method) if preset is None else preset)
    return model, tok, hp, synthetic


def small_hparams(method: str) -> dict:
    """Hyperparameters for a tiny random model: one edited layer (the ROME family) or two (the MEMIT
    family), λ = 100 where the method weighs E[kkᵀ], and the method's own from :data:`BASELINES`."""
    from fastedit.methods.registry import get_method

    cls = get_method(method)
    small = {"layers": [1, 2] if cls.templates == "groups" else [1], "v_loss_layer": 3, "v_num_grad_steps": 20}
    if "mom2_update_weight" in {f.name for f in dataclasses.fields(cls.hparams_class)}:
        small["mom2_update_weight"] = 100.0
    return {**small, **BASELINES[cls.name].small}


def counterfact(n: int):
    from fastedit.requests import EditRequest

    recs = json.loads((DATA / "counterfact" / "counterfact-edit.json").read_text())
    return [EditRequest.from_dict(r, i) for i, r in enumerate(recs[:n])]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


def prepare(args, **hp_changes):
    """(model, tok, hp with ``hp_changes``, stats_dir, its statistics store with the edited layers'
    statistics loaded, the context templates) for a benchmark run."""
    from fastedit.methods.registry import get_method
    from fastedit.models import get_adapter
    from fastedit.stats.store import SecondMomentStore
    from fastedit.stats.synthetic import write_synthetic_second_moments

    model, tok, hp, synthetic = load(args)
    hp = hp.replace(**hp_changes) if hp_changes else hp
    stats_dir = Path(args.stats_dir)
    if synthetic:
        write_synthetic_second_moments(model, hp, stats_dir)
    store = SecondMomentStore(model, tok, get_adapter(model), hp, stats_dir=stats_dir, source=args.stats_source,
                              max_len=args.stats_max_len, progress=False)
    store.ensure(hp.layers)
    torch.manual_seed(args.seed)
    with torch.no_grad():
        templates = get_method(args.method).sample_templates(model, tok, hp, args.seed)
    return model, tok, hp, stats_dir, store, templates


def run_fastedit(args, model, tok, hp, templates, stats_dir, store, batches, names, base_deltas):
    """fastedit's edits of ``batches`` on ``model``: (session, wall seconds, CPU seconds, phase times, and the
    relative update error of each layer of the edits that have a baseline delta)."""
    from fastedit.engine import EditSession
    from fastedit.profiling import chrome_trace

    sess = EditSession(model, tok, args.method, hp, mode=args.mode, options=parse_options(args.option),
                       templates=templates, stats_dir=stats_dir, progress=False)
    sess.stats = store  # the statistics are already loaded: not part of the timing
    fe_times, fe_cpu, phases, errs = [], [], [], []
    with chrome_trace(args.profile):
        for i, batch in enumerate(batches):
            before = {n: model.get_parameter(n).detach().clone() for n in names}
            t0, c0 = time.perf_counter(), time.process_time()
            res = sess.apply(batch)
            _sync(args.device)
            fe_times.append(time.perf_counter() - t0)
            fe_cpu.append(time.process_time() - c0)
            phases.append(res.times)
            if i < len(base_deltas):
                for n in names:
                    errs.append(rel_err(model.get_parameter(n).detach() - before[n], base_deltas[i][n]))
    return sess, fe_times, fe_cpu, phases, errs


def run_throughput(args) -> dict:
    from fastedit.models import get_adapter

    model, tok, hp, stats_dir, store, templates = prepare(
        args, **({"mom2_n_samples": args.stats_samples} if args.stats_samples else {}))
    reqs = counterfact(args.edits * args.batch_size)
    batches = [reqs[i : i + args.batch_size] for i in range(0, len(reqs), args.batch_size)]
    hp_dict = {**hp.to_dict()}
    for key, default in (("rewrite_module_tmp", "rewrite_module_tmp"), ("layer_module_tmp", "layer_module_tmp"),
                         ("mlp_module_tmp", "mlp_module_tmp"), ("ln_f_module", "ln_f_module")):
        hp_dict[key] = hp_dict[key] or getattr(get_adapter(model), default)
    hp_dict["lm_head_module"] = hp_dict["lm_head_module"] or get_adapter(model).lm_head_name(model)

    results = {}
    # ---- reference-style baseline ------------------------------------------------------------
    names = [f"{hp_dict['rewrite_module_tmp'].format(l)}.weight" for l in hp.layers]
    base_deltas, base_times = [], []
    if not args.no_baseline:
        base_deltas, base_times = run_baseline(args, copy.deepcopy(model), tok, hp, hp_dict, templates, store,
                                               batches[: args.baseline_edits or len(batches)], names)
    # ---- fastedit -------------------------------------------------------------------------------
    sess, fe_times, fe_cpu, phases, errs = run_fastedit(args, model, tok, hp, templates, stats_dir, store, batches,
                                                        names, base_deltas)
    # the first edit carries one-off costs on both sides (template use, factorisations): report both
    edits = len(batches)
    fe_total, base_total = sum(fe_times), sum(base_times)
    # the speed ratio compares the same edits: the first len(base_times) of each side
    fe_matched = sum(fe_times[: len(base_times)])
    phase_mean = {k: statistics.fmean(p.get(k, 0.0) for p in phases) for k in sorted({k for p in phases for k in p})}
    results = {
        "benchmark": "bench_edit",
        "model": args.model,
        "method": args.method,
        "mode": args.mode,
        "options": dataclasses.asdict(sess.options),
        "edits": edits,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "device": args.device,
        "edits_per_s": edits / fe_total,
        "requests_per_s": edits * args.batch_size / fe_total,
        # CPU seconds of this process: on a shared machine they move far less with the load than the
        # wall time (with one thread they are the work done)
        "requests_per_cpu_s": edits * args.batch_size / sum(fe_cpu),
        "cpu_s_per_request": sum(fe_cpu) / (edits * args.batch_size),
        "baseline_edits_per_s": len(base_times) / base_total if base_total else None,
        "speedup": base_total / fe_matched if base_total else None,
        "baseline_edits": len(base_times),
        "median_s_per_edit": statistics.median(fe_times),
        "baseline_median_s_per_edit": statistics.median(base_times) if base_times else None,
        "max_rel_update_error": max(errs) if errs else None,
        "median_rel_update_error": statistics.median(errs) if errs else None,
        "phase_seconds_per_edit": phase_mean,
        # with compile_step, an edit whose step shape is new compiles it (target/compile, inside
        # target/forward): compile time apart from the steady state, the edits that compiled left out
        "first_edit_s": fe_times[0],
        "compile_s": sum(p.get("target/compile", 0.0) for p in phases),
        "edits_that_compiled": sum(1 for p in phases if "target/compile" in p),
        "step_programs_built": sess._programs.built,
        "steady_median_s_per_edit": statistics.median([t for t, p in zip(fe_times, phases) if "target/compile" not in p]
                                                      or [float("nan")]),
        # templates, tokenisation, prefix, keys, solve and weight update: what runs outside the
        # optimisation step, as a share of the edit's wall time
        "outside_step_share": sum(phase_mean.get(k, 0.0) for k in OUTSIDE_STEP) / phase_mean["total"]
        if phase_mean.get("total") else None,
        "hparams": hp.to_dict(),
        "machine": machine(),
        "command": " ".join(sys.argv),
    }
    return results


OUTSIDE_STEP = ("templates", "target/prepare", "target/prefix", "keys", "solve", "apply")


def run_baseline(args, base_model, tok, hp, hp_dict, templates, store, batches, names) -> tuple[list, list]:
    """The reference-style edits (``fastedit.methods.plain``, the method's entry in :data:`BASELINES`)
    of ``batches`` on ``base_model``: per batch, ΔW of each weight in ``names`` and the seconds it took."""
    edit = BASELINES[args.method].make(base_model, tok, hp, hp_dict, templates, store.second_moment)
    base_deltas, base_times = [], []
    for batch in batches:
        before = {n: base_model.get_parameter(n).detach().clone() for n in names}
        t0 = time.perf_counter()
        edit([dict(r.to_reference_dict(), target_new=r.target_new) for r in batch])
        _sync(args.device)
        base_times.append(time.perf_counter() - t0)
        base_deltas.append({n: base_model.get_parameter(n).detach() - before[n] for n in names})
    return base_deltas, base_times


# Each builder returns edit(reference-layout requests of one batch), which applies them to ``model``
# with the plain implementation and keeps what the method carries from batch to batch.
def _plain_rome(model, tok, hp, hp_dict, templates, second_moment):
    from fastedit.methods import plain

    u_avg = hp.original_implementation or hp.enable_random_prefix_keys

    def edit(refs):
        for r in refs:  # the ROME family edits one request at a time
            plain.rome(model, tok, r, hp_dict, templates, second_moment, variant=hp.key_variant, u_from_average=u_avg)
    return edit


def _plain_memit(model, tok, hp, hp_dict, groups, second_moment):
    from fastedit.methods import plain

    return lambda refs: plain.memit(model, tok, refs, hp_dict, groups, second_moment)


def _plain_emmet(model, tok, hp, hp_dict, groups, second_moment):
    from fastedit.methods import plain

    return lambda refs: plain.emmet(model, tok, refs, hp_dict, groups, second_moment)


def _plain_encore(model, tok, hp, hp_dict, groups, second_moment):
    from fastedit.methods import plain

    seq_cache = {}  # the reference's SEQ_CACHE: Σ KKᵀ of the earlier batches per layer
    return lambda refs: plain.encore(model, tok, refs, hp_dict, groups, second_moment, seq_cache)


def _plain_alphaedit(model, tok, hp, hp_dict, groups, second_moment):
    from fastedit.methods import plain

    projections, cache_c = {}, {}

    def edit(refs):
        if not projections:  # P per layer, on the first edit as fastedit's session computes it
            dtype = next(model.parameters()).dtype
            for layer in hp.layers:
                c = second_moment(layer).to(dtype)
                projections[layer] = plain.null_space_projection(c, hp.nullspace_threshold)
                cache_c[layer] = torch.zeros_like(c)
        plain.alphaedit(model, tok, refs, hp_dict, groups, projections, cache_c)
    return edit


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A method's reference-style baseline: ``make(model, tok, hp, hp_dict, templates, second_moment)``
    → edit(requests); ``small``: its own hyperparameters for a tiny random model."""

    make: Callable
    small: dict = dataclasses.field(default_factory=dict)


# Every registered method's baseline (tests check that none is missing). AlphaEdit's threshold sits
# inside the synthetic statistics' spectrum: their E[kkᵀ] has no eigenvalue below its default 2e-2, about a
# quarter of them below 0.1.
BASELINES = {
    "rome": Baseline(_plain_rome),
    "r-rome": Baseline(_plain_rome),
    "memit": Baseline(_plain_memit),
    "alphaedit": Baseline(_plain_alphaedit, {"nullspace_threshold": 0.1, "L2": 1.0}),
    "emmet": Baseline(_plain_emmet),
    "encore": Baseline(_plain_encore),
}


def run_efficacy(args) -> dict:
    """Fraction of N sequential edits that hold right after they are applied, exact vs fast."""
    from fastedit.engine import EditSession
    from fastedit.eval.metrics import compare_targets
    from fastedit.methods.registry import get_method

    model, tok, hp, synthetic = load(args)
    if synthetic:
        raise SystemExit("--efficacy needs a real model")
    reqs = counterfact(args.efficacy)
    with torch.no_grad():
        templates = get_method(args.method).sample_templates(model, tok, hp, args.seed)
    out = {}
    base = copy.deepcopy(model)
    for mode in ("exact", "fast"):
        m = copy.deepcopy(base)
        sess = EditSession(m, tok, args.method, hp, mode=mode, templates=templates, stats_dir=args.stats_dir,
                           stats_source=args.stats_source, stats_max_len=args.stats_max_len, progress=False)
        ok, t = 0, 0.0
        for r in reqs:
            res = sess.apply(r)
            t += res.times["total"]
            ok += bool(compare_targets(m, tok, [r.text], [r.target_new], [r.target_true])["success"][0])
        out[mode] = {"efficacy": ok / len(reqs), "seconds": t}
        print(f"{mode}: {ok}/{len(reqs)} edits hold right after they are applied, {t:.0f} s", flush=True)
    return {
        "benchmark": "bench_edit --efficacy",
        "model": args.model,
        "method": args.method,
        "edits": len(reqs),
        "efficacy_exact": out["exact"]["efficacy"],
        "efficacy_fast": out["fast"]["efficacy"],
        "efficacy_gap_points": 100 * (out["exact"]["efficacy"] - out["fast"]["efficacy"]),
        "seconds_exact": out["exact"]["seconds"],
        "seconds_fast": out["fast"]["seconds"],
        "speedup_fast_over_exact": out["exact"]["seconds"] / out["fast"]["seconds"],
        "machine": machine(),
        "command": " ".join(sys.argv),
    }


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _files(folder: Path) -> dict:
    return {p.name: (p.stat().st_ino, p.stat().st_size) for p in folder.iterdir() if p.is_file()} if folder.exists() else {}


def _timed_save(sess, folder: Path) -> dict:
    """One checkpoint: seconds, and bytes of the files it created or replaced."""
    before = _files(folder)
    t0, c0 = time.perf_counter(), time.process_time()
    sess.save(folder)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    after = _files(folder)
    written = sum(size for name, (ino, size) in after.items() if before.get(name) != (ino, size))
    return {"edits": len(sess.journal), "seconds": seconds, "cpu_seconds": cpu, "bytes": written,
            "folder_bytes": sum(v[1] for v in after.values())}


def run_memory(args) -> dict:
    """Peak RSS over ``args.memory`` sequential edits (CounterFact records, cycled when there are fewer),
    with a checkpoint save every ``args.save_every`` edits when asked."""
    import tempfile

    from fastedit.engine import EditSession

    model, tok, hp, stats_dir, store, templates = prepare(
        args, **({"v_num_grad_steps": args.steps} if args.steps else {}))
    pool = counterfact(min(args.memory * args.batch_size, 10_000))
    sess = EditSession(model, tok, args.method, hp, mode=args.mode, options=parse_options(args.option),
                       templates=templates, stats_dir=stats_dir, progress=False)
    sess.stats = store
    save_dir = Path(args.save_dir or tempfile.mkdtemp(prefix="fastedit-bench-save-")) / "session"
    first_tenth = max(1, args.memory // 10)
    saves, peak_tenth, t0 = [], None, time.perf_counter()
    for i in range(args.memory):
        batch = [pool[(i * args.batch_size + j) % len(pool)] for j in range(args.batch_size)]
        sess.apply(batch)
        if args.save_every and (i + 1) % args.save_every == 0:
            saves.append(_timed_save(sess, save_dir))
        if i + 1 == first_tenth:
            peak_tenth = _peak_rss_mb()
        if (i + 1) % max(1, args.memory // 20) == 0:
            print(f"{i + 1} edits, {time.perf_counter() - t0:.0f} s, peak RSS {_peak_rss_mb():.1f} MB", flush=True)
    peak = _peak_rss_mb()
    res = {
        "benchmark": "bench_edit --memory",
        "model": args.model,
        "method": args.method,
        "mode": args.mode,
        "edits": args.memory,
        "batch_size": args.batch_size,
        "v_num_grad_steps": hp.v_num_grad_steps,
        "seconds": time.perf_counter() - t0,
        "peak_rss_mb_first_10pct": peak_tenth,
        "peak_rss_mb": peak,
        "peak_memory_ratio": peak / peak_tenth,
        "machine": machine(),
        "command": " ".join(sys.argv),
    }
    if saves:
        res["saves"] = saves
        res.update(_save_ratios(saves, first_tenth, args.memory))
    return res


def _save_ratios(saves: list[dict], first_tenth: int, edits: int) -> dict:
    """The saves of the last 10% of the edits against those of the first 10%: medians of wall
    seconds, CPU seconds and bytes written (medians, as single saves on a shared machine are noisy)."""
    early = [s for s in saves if s["edits"] <= first_tenth]
    late = [s for s in saves if s["edits"] > edits - first_tenth]
    if not early or not late:
        return {}
    out = {"saves_first_10pct": len(early), "saves_last_10pct": len(late)}
    for key in ("seconds", "cpu_seconds", "bytes"):
        a, b = statistics.median(s[key] for s in early), statistics.median(s[key] for s in late)
        out[f"save_{key}_first_10pct"], out[f"save_{key}_last_10pct"], out[f"save_{key}_ratio"] = a, b, b / a
    return out


# What benchmarks/gpu_suite.sh runs (FASTEDIT_GPU_SUITE=1): the GPU goals, each with its
# reference-style baseline measured in the same process on fewer edits.
GPU_SUITE = [
    ["--model", "gpt2-xl", "--method", "memit", "--mode", "exact", "--edits", "10", "--baseline-edits", "3"],
    ["--model", "gpt2-xl", "--method", "memit", "--mode", "exact", "--option", "cuda_graph=true", "--edits", "10",
     "--no-baseline"],
    ["--model", "llama-3-8b", "--method", "memit", "--mode", "fast", "--dtype", "bfloat16", "--edits", "5",
     "--baseline-edits", "2"],
    ["--model", "llama-3-8b", "--method", "memit", "--mode", "fast", "--dtype", "bfloat16", "--option",
     "cuda_graph=false", "--edits", "5", "--no-baseline"],
]


def run_gpu_suite(argv_extra) -> int:
    """Run :data:`GPU_SUITE` (``FASTEDIT_GPU_SUITE_ARGS`` can replace the model names for a dry run
    on a CPU, e.g. ``--model random:gpt2``) and write ``$FASTEDIT_RESULTS_DIR/bench_edit.json``."""
    out_dir = Path(os.environ.get("FASTEDIT_RESULTS_DIR", REPO / "benchmarks" / "results"))
    runs = []
    for config in GPU_SUITE:
        args = list(config) + list(argv_extra) + os.environ.get("FASTEDIT_GPU_SUITE_ARGS", "").split()
        try:
            runs.append(run_throughput(parse(args)))
        except Exception as exc:  # one failing configuration must not hide the others
            runs.append({"config": " ".join(config), "error": f"{type(exc).__name__}: {exc}"})
        print(json.dumps(runs[-1]), flush=True)
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    (out_dir / "bench_edit.json").write_text(json.dumps({"runs": runs, "machine": machine()}, indent=2) + "\n")
    return 0


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def parse_options(items) -> dict:
    """``["cuda_graph=true", "early_stop_patience=3"]`` → FastOptions overrides."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--option {item!r}: expected NAME=VALUE")
        value = value.strip()
        if value.lower() in ("true", "yes", "on", "false", "no", "off"):
            out[name.strip()] = value.lower() in ("true", "yes", "on")
        else:
            out[name.strip()] = int(value) if value.isdigit() else value
    return out


def parse(argv=None):
    from fastedit.methods.registry import method_names

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="memit", choices=method_names())
    ap.add_argument("--mode", default="exact", choices=["exact", "fast"])
    ap.add_argument("--edits", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--hparams", default=None, help="preset or hparams JSON (default: the model's preset)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--stats-dir", default=str(Path(os.environ.get("FASTEDIT_CACHE", Path.home() / ".cache" / "fastedit")) / "stats"))
    ap.add_argument("--stats-source", default=str(DATA / "wikipedia" / "enwiki_sample.jsonl"))
    ap.add_argument("--stats-max-len", type=int, default=512)
    ap.add_argument("--stats-samples", type=int, default=None, help="replace mom2_n_samples")
    ap.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                    help="a fast-mode option for fastedit's session (repeatable), e.g. cuda_graph=true")
    ap.add_argument("--no-baseline", action="store_true", help="time fastedit only")
    ap.add_argument("--memory", type=int, default=0, metavar="N", help="peak memory over N sequential edits")
    ap.add_argument("--save-every", type=int, default=0, metavar="K", help="with --memory: save the session every K edits")
    ap.add_argument("--steps", type=int, default=None,
                    help="with --memory: replace v_num_grad_steps (fewer optimisation steps make long runs affordable)")
    ap.add_argument("--save-dir", default=None, help="with --save-every: the folder to save into (default: a temporary one)")
    ap.add_argument("--efficacy", type=int, default=0, metavar="N", help="efficacy of N sequential edits, exact vs fast")
    ap.add_argument("--profile", default=None, metavar="PATH", help="Chrome trace of fastedit's edits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON result here")
    ap.add_argument("--baseline-edits", type=int, default=None, help="baseline on the first K edits only (default: all)")
    ap.add_argument("--reference-dir", default=None, metavar="PATH",
                    help="also time a checkout of kmeng01/rome or kmeng01/memit on the same requests "
                    "(through benchmarks/compare_reference.py; never committed)")
    return ap.parse_args(argv)


def run_reference_code(args) -> dict:
    """The same first requests through the public reference code and through fastedit, one after the
    other in this process (compare_reference.py), with its update errors and times."""
    import compare_reference

    if args.model.startswith("random:") or args.method not in ("rome", "memit"):
        raise SystemExit("--reference-dir needs a stored model and the rome or memit method")
    out = Path(os.environ.get("FASTEDIT_RESULTS_DIR", REPO / "benchmarks" / "results")) / f"bench_edit_reference_{args.method}.json"
    n = args.baseline_edits or args.edits
    argv = ["--reference-dir", args.reference_dir, "--method", args.method, "--model", args.model,
            "--requests", str(n), "--out", str(out)]
    if args.hparams:
        argv += ["--hparams", args.hparams]
    compare_reference.main(argv)
    summary = json.loads(out.read_text())
    r = summary["results"][0]
    return {
        "requests": n,
        "reference_edits_per_s": n / r["reference_seconds"],
        "fastedit_edits_per_s": n / r["fastedit_seconds"],
        "speedup": r["speedup"],
        "max_rel_update_error": summary["max_rel_update_error"],
        "reference_commit": summary["reference_commit"],
        "details": str(out),
    }


def main(argv=None) -> int:
    if os.environ.get("FASTEDIT_GPU_SUITE") == "1":
        return run_gpu_suite(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory:
        res = run_memory(args)
    else:
        res = run_efficacy(args) if args.efficacy else run_throughput(args)
    if args.reference_dir and not args.efficacy and not args.memory:
        res["reference_code"] = run_reference_code(args)
    if not args.efficacy and not args.memory:
        phases = res["phase_seconds_per_edit"]
        total = phases.get("total") or 1.0
        print(f"{'phase':<22} {'s/edit':>8} {'share':>6}")
        for k, v in phases.items():
            print(f"{k:<22} {v:8.3f} {100 * v / total:5.1f}%")
        if res["outside_step_share"] is not None:
            print(f"outside the step: {100 * res['outside_step_share']:.1f}% ({', '.join(OUTSIDE_STEP)})")
        if res["speedup"]:
            print(f"fastedit {res['edits_per_s']:.3f} edits/s, reference-style {res['baseline_edits_per_s']:.3f} edits/s: "
                  f"{res['speedup']:.2f}x, max relative update error {res['max_rel_update_error']:.2e}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
