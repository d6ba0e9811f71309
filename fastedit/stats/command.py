"""``fastedit stats``: compute and cache the second-moment statistics of the edited layers.

    fastedit stats --model smollm2-135m --hparams smollm2-135m \\
                   --stats-source wikipedia [--layers 4,5,6,7,8]      # or a local .jsonl/.txt file
    torchrun --nproc_per_node 8 -m fastedit.cli stats --model gpt-j-6b-folder --layers 3,4,5,6,7,8 ...

All edited layers in one pass that stops after the last of them, documents packed into full rows,
forward in the model's dtype (bfloat16 on a GPU unless ``--model-dtype`` says otherwise), sums in
``--dtype``. A checkpoint is written every ``--checkpoint-every`` tokens and a rerun of the same command
resumes from it. Under torchrun every rank takes its own share of the documents and rank 0 writes the
caches. ``--converge`` / ``--max-vectors-factor`` stop early; the convergence curve is printed and kept
in each cache's sidecar.

:func:`add_arguments` and :func:`run` are what ``fastedit.cli`` wires in; ``python -m
fastedit.stats.command`` runs the same command on its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

__all__ = ["add_arguments", "run", "load_for_stats", "main"]

from ..argtypes import int_at_least, layer_list, positive_float, tokens_or_auto
from ..errors import UsageError

log = logging.getLogger(__name__)

_PRESETS = ("smollm2-135m", "gpt2-xl", "gpt-j-6b", "llama-3-8b")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``fastedit stats``."""
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True,
                   help="fastedit name (smollm2-135m), local folder, hub id, or random:ARCH[:key=value,...] "
                   "(random weights: gpt2, gptj, gpt_neox, llama, ... or gpt-j-6b / gpt2-xl / llama-3-8b at full size)")
    g.add_argument("--model-dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype of the forward pass (default auto: bfloat16 on a GPU, float32 on a CPU; float32 "
                   "reproduces the references' statistics)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available; cuda:LOCAL_RANK under torchrun)")
    g.add_argument("--device-map", default=None,
                   help="spread a model too large for one GPU over several (e.g. auto); not with torchrun")
    g.add_argument("--threads", type=int_at_least(1), default=None, help="CPU threads for torch")

    from ..methods.registry import method_names

    g = p.add_argument_group("what to compute")
    g.add_argument("--method", default="memit", choices=method_names())
    g.add_argument("--hparams", default=None,
                   help="preset or hparams JSON giving layers, dataset, sample count and dtype (default: the model's preset)")
    g.add_argument("--layers", type=layer_list, default=None, help="comma-separated layers (overrides the hparams)")
    g.add_argument("--n-samples", type=int_at_least(1), default=None, help="documents of the sample (overrides mom2_n_samples)")
    g.add_argument("--dtype", default=None, choices=["float32", "float64"], help="accumulation dtype (overrides mom2_dtype)")
    g.add_argument("--stats-dir", default=None, help="statistics cache folder (default: $FASTEDIT_STATS_DIR or data/stats)")
    g.add_argument("--stats-source", default=None,
                   help="text to compute from: a .jsonl/.txt file or folder, or a dataset name (default: "
                   "$FASTEDIT_STATS_SOURCE)")
    g.add_argument("--stats-max-len", type=int_at_least(1), default=None,
                   help="truncate documents to this many tokens, also the row length (default: the model's context, "
                   "as the references do)")

    g = p.add_argument_group("the pass")
    g.add_argument("--rows", type=int_at_least(1), default=None, help="rows per forward pass (default: --batch-tokens / row length)")
    g.add_argument("--batch-tokens", type=int_at_least(1), default=None, help="tokens per forward pass (default 8192)")
    g.add_argument("--window-docs", type=int_at_least(1), default=None, help="documents packed together (default: sample/64, 8 to 1024)")
    g.add_argument("--checkpoint-every", type=tokens_or_auto, default="auto", metavar="TOKENS",
                   help="write the partial sums every TOKENS tokens (default auto: 2,000 tokens per MB of sums, at "
                   "least 1M; 0: never)")
    g.add_argument("--no-resume", action="store_true", help="ignore (and replace) a checkpoint of an earlier run")
    g.add_argument("--check-every", type=tokens_or_auto, default="auto", metavar="TOKENS",
                   help="record the relative change of C every TOKENS tokens (default auto: 16 × d_ff; 0: off)")
    g.add_argument("--converge", type=positive_float, default=None, metavar="TOL",
                   help="stop once every layer's relative change of C between checks is below TOL")
    g.add_argument("--max-vectors-factor", type=positive_float, default=None, metavar="F",
                   help="stop after F × d_ff key vectors (tokens)")
    g.add_argument("--max-tokens", type=int_at_least(1), default=None, help="stop after this many key vectors (tokens)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--summary", default=None, metavar="PATH", help="also write the summary as JSON to PATH")


def _parse_random(spec: str) -> tuple[str, dict]:
    """``random:ARCH[:key=value,...]`` → (ARCH, config overrides)."""
    parts = spec.split(":", 2)
    arch = parts[1]
    overrides = {}
    if len(parts) > 2 and parts[2]:
        for item in parts[2].split(","):
            key, _, value = item.partition("=")
            try:
                overrides[key] = int(value)
            except ValueError:
                try:
                    overrides[key] = float(value)
                except ValueError:
                    overrides[key] = value
    return arch, overrides


def load_for_stats(model: str, dtype, device=None, device_map=None):
    """(model, tokenizer) by fastedit name, path, hub id or ``random:ARCH[:key=value,...]``."""
    from ..models import gpt2_tokenizer, load_model, random_model

    if model.startswith("random:"):
        if device_map is not None:
            raise UsageError("--device-map needs a stored model, not random:")
        arch, overrides = _parse_random(model)
        return random_model(arch, dtype=dtype, device=device or "cpu", **overrides), gpt2_tokenizer()
    return load_model(model, dtype=dtype, device=device, device_map=device_map)


def _hparams(args, model):
    from ..hparams import hparams_class, load_hparams

    layers = args.layers
    spec = args.hparams
    if spec is None:
        name = Path(str(args.model).split(":")[1] if args.model.startswith("random:") else args.model).name.lower()
        spec = next((p for p in _PRESETS if p in name), None)
    if spec is None:
        if layers is None:
            raise UsageError(f"no preset matches model {args.model!r}: pass --hparams or --layers")
        hp = hparams_class(args.method).from_dict({"layers": layers})
    else:
        hp = load_hparams(args.method, spec)
    changes = {}
    if layers:
        changes["layers"] = layers
    if args.n_samples:
        changes["mom2_n_samples"] = args.n_samples
    if args.dtype:
        changes["mom2_dtype"] = args.dtype
    return hp.replace(**changes) if changes else hp


def _fmt_curve(report, names: list[str], short: list[str]) -> list[str]:
    if not report.curve:
        return []
    lines = ["convergence (relative Frobenius change of C since the previous check):",
             "  " + f"{'tokens':>12}" + "".join(f"{s:>12}" for s in short)]
    for point in report.curve:
        cells = []
        for n in names:
            v = point["rel_change"].get(n)
            cells.append(f"{'-':>12}" if v is None else f"{v:>12.3e}")
        lines.append("  " + f"{point['tokens']:>12,}" + "".join(cells))
    return lines


def _device(device: str | None, world: int) -> str:
    """This process's device: ``--device``, or the GPU (this rank's under torchrun) when there is one."""
    import torch

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        return f"cuda:{local_rank}" if (torch.cuda.is_available() and world > 1) else ("cuda" if torch.cuda.is_available() else "cpu")
    if world > 1 and device == "cuda":
        return f"cuda:{local_rank}"
    return device


def _report_lines(store, layers, converge: float | None, t_load: float, secs: float) -> list[str]:
    """The printed summary: what was computed (tokens, speed, why it stopped, convergence), each cache."""
    rep = store.report
    lines = []
    if rep is None:
        lines.append(f"all {len(layers)} layer(s) were cached already")
    else:
        computed = rep.layers
        lines.append(
            f"statistics for {len(computed)} layer(s) of {store.model_name}: {rep.tokens:,} tokens from "
            f"{rep.documents:,} documents in {rep.seconds:.1f} s ({rep.tokens_per_s:,.0f} tokens/s"
            + (f" over {rep.world_size} processes" if rep.world_size > 1 else "")
            + f"; forward in {rep.model_dtype}, sums in {rep.dtype}; rows of {rep.max_len} tokens, "
            f"{100 * rep.fill:.1f}% of them real tokens)"
        )
        why = {"corpus": "the end of the sample", "converged": f"convergence (every change < {converge:g})"
               if converge else "convergence", "max_tokens": "the key-vector limit"}[rep.stop_reason]
        lines.append(f"stopped at {why}")
        if rep.resumed_from:
            lines.append(f"resumed from a checkpoint at {rep.resumed_from['tokens']:,} tokens "
                         f"({rep.resumed_from['seconds']:.1f} s of earlier work)")
        short = [next((f"L{part}" for part in n.split(".") if part.isdigit()), n) for n in computed]
        lines += _fmt_curve(rep, computed, short)
    lines.append("caches:")
    for layer in layers:
        lines.append(f"  layer {layer} ({store.layer_name(layer)}): {store.loaded_from[layer]}")
    lines.append(f"model loaded in {t_load:.1f} s; statistics ready in {secs:.1f} s")
    return lines


def _write_summary(path: str, store, layers, secs: float) -> None:
    rep = store.report
    summary = {
        "model": store.model_name,
        "layers": list(layers),
        "caches": {str(layer): str(store.loaded_from[layer]) for layer in layers},
        "seconds": secs,
        "report": rep.to_dict() if rep is not None else None,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(summary, indent=2) + "\n")


def run(args) -> int:
    """Run ``fastedit stats`` with parsed ``args``; prints the summary (rank 0). Returns the exit code."""
    import torch

    from ..models.adapters import get_adapter
    from .distributed import env_world_size, init_from_env
    from .store import SecondMomentStore

    if args.threads:
        torch.set_num_threads(args.threads)
    world = env_world_size()
    if world > 1 and args.device_map:
        raise UsageError("--device-map spreads one model over several GPUs; with torchrun each rank holds its own model")
    device = _device(args.device, world)
    dist = init_from_env(device) if world > 1 else None
    main = dist is None or dist.is_main
    if not main:
        logging.getLogger("fastedit").setLevel(logging.WARNING)

    model_dtype = args.model_dtype
    if model_dtype == "auto":
        on_gpu = str(device).startswith("cuda") or args.device_map is not None
        model_dtype = "bfloat16" if on_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    t_load = time.perf_counter()
    model, tok = load_for_stats(args.model, getattr(torch, model_dtype), None if args.device_map else device, args.device_map)
    t_load = time.perf_counter() - t_load
    hp = _hparams(args, model)
    adapter = get_adapter(model)
    every = args.checkpoint_every if args.checkpoint_every != 0 else None
    store = SecondMomentStore(
        model, tok, adapter, hp, stats_dir=args.stats_dir, source=args.stats_source, max_len=args.stats_max_len,
        progress=not args.no_progress, rows=args.rows, batch_tokens=args.batch_tokens, checkpoint_every=every,
        resume=not args.no_resume, check_every=args.check_every or None, converge=args.converge,
        max_vectors_factor=args.max_vectors_factor, max_tokens=args.max_tokens, window_docs=args.window_docs,
        dist=dist,
    )
    t0 = time.perf_counter()
    store.ensure(hp.layers)
    secs = time.perf_counter() - t0
    if main:
        print("\n".join(_report_lines(store, hp.layers, args.converge, t_load, secs)), flush=True)
        if args.summary:
            _write_summary(args.summary, store, hp.layers, secs)
    if dist is not None:
        import torch.distributed as tdist

        tdist.barrier()
        tdist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fastedit stats", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    add_arguments(p)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from ..cli import run_reporting_errors

    return run_reporting_errors("fastedit stats", run, args)


if __name__ == "__main__":
    sys.exit(main())
