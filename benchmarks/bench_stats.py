"""Second-moment statistics throughput: fastedit's one packed pass against the reference procedure.

    python benchmarks/bench_stats.py --model smollm2-135m --layers 4,5,6,7,8 --tokens 100000
    python benchmarks/bench_stats.py --model PATH --layers 3,4,5,6,7,8 --tokens 50000 --device cuda --dtype bfloat16
    FASTEDIT_GPU_SUITE=1 FASTEDIT_RESULTS_DIR=benchmarks/results python benchmarks/bench_stats.py

The same documents (the references' shuffled sample of ``--source``, taken in order until ``--tokens``
tokens, each truncated to ``--seq-len``) go through

* **fastedit** (:func:`fastedit.stats.collect.collect`): every layer in one pass that stops after the
  last edited layer, documents packed into full rows, forward in ``--dtype``, sums in ``--accum-dtype``
  through the covariance kernel;
* **the reference procedure** (:func:`fastedit.stats.reference.reference_second_moments`): one float32
  pass per layer over padded, length-sorted batches of whole documents, ``mom2 += xᵀx`` in float32;
  ``--baseline full`` runs the whole model each time (as the issue describes the reference's cost),
  ``--baseline stop`` ends each pass after its layer (as kmeng01's ``Trace(stop=True)`` actually does).

Both run in this process, tokenisation included (or both on pre-tokenised ids with ``--pretokenize``).
Reported: tokens/s of each (statistics tokens for all layers per second), the speedup, the largest
relative Frobenius error of C = Σkkᵀ/n between them, the packing fill, the machine and load, and the
time projected for 100,000 articles (mean tokens per article of the local sample, capped at the
row length). The last line printed is one JSON object; ``--json PATH`` also writes it.

GPU suite mode (``FASTEDIT_GPU_SUITE=1``): GPT-J's architecture at full size with random weights,
layers 3-8, bfloat16 forward, float32 sums, within about 100 s: the baseline (float32, whole model) on a
few thousand tokens only, fastedit on many more; the error is measured on the baseline's documents with
fastedit's forward in float32 (like for like) and in bfloat16. Writes ``$FASTEDIT_RESULTS_DIR/bench_stats.json``.
``FASTEDIT_GPU_SUITE_ARGS`` appends options (``--model random:gptj --layers 1,2 --tokens 2000`` tries the
path on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from machine_info import machine  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FASTEDIT_DATA_DIR", REPO.parent / "shared" / "data"))
ARTICLES = 100_000

GPU_SUITE = ["--model", "random:gpt-j-6b", "--layers", "3,4,5,6,7,8", "--dtype", "bfloat16", "--tokens", "400000",
             "--split-long", "--baseline-tokens", "6144", "--rows", "8", "--pretokenize"]


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m",
                    help="fastedit name, local folder, or random:ARCH[:key=value,...] (random:gpt-j-6b: full size)")
    ap.add_argument("--layers", default="4,5,6,7,8", help="comma-separated edited layers")
    ap.add_argument("--tokens", type=int, default=100_000, help="statistics tokens (documents taken until reached)")
    ap.add_argument("--baseline-tokens", type=int, default=None,
                    help="run the baseline on only the first documents up to this many tokens (default: all)")
    ap.add_argument("--baseline", default="full", choices=["full", "stop"],
                    help="full: whole model per layer pass; stop: each pass ends after its layer")
    ap.add_argument("--source", default=str(DATA / "wikipedia" / "enwiki_sample.jsonl"), help="text corpus")
    ap.add_argument("--seq-len", type=int, default=None,
                    help="truncation and row length (default: min(model context, 1024) on a CPU, the model's context on a GPU)")
    ap.add_argument("--rows", type=int, default=None, help="fastedit rows per forward pass (default 8192 / seq-len)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="fastedit's forward dtype (default: bfloat16 on a GPU, float32 on a CPU); the baseline runs float32")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"],
                    help="attention implementation for both procedures (random-weight models are built eager)")
    ap.add_argument("--accum-dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    ap.add_argument("--split-long", action="store_true",
                    help="when the sample is short of --tokens, cut articles into seq-len pieces (each a document)")
    ap.add_argument("--pretokenize", action="store_true",
                    help="tokenise once up front and give both procedures token ids (tokeniser time reported apart)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the result JSON here")
    return ap.parse_args(argv)


def load(args, device, dtype):
    from fastedit.stats.command import load_for_stats

    return load_for_stats(args.model, dtype, device)


def choose_documents(tok, source, seq_len: int, tokens: int, split_long: bool):
    """(texts or id lists, their token count, mean tokens per article capped at seq_len). Documents come
    in the references' sample order until ``tokens`` are reached."""
    order = source.sample_indices(None)
    ids = tok([source.docs[i] for i in order], add_special_tokens=True)["input_ids"]
    capped = [min(len(x), seq_len) for x in ids]
    mean_article = sum(capped) / max(1, len(capped))
    docs, total = [], 0
    for i, x in zip(order, ids):
        if total >= tokens:
            break
        pieces = [x[s : s + seq_len] for s in range(0, len(x), seq_len)] if split_long else [x[:seq_len]]
        for p in pieces:
            if total >= tokens:
                break
            docs.append((source.docs[i], p))
            total += len(p)
    if split_long:
        return [p for _, p in docs], total, mean_article, True
    return [t for t, _ in docs], total, mean_article, False


def rel_error(a, b) -> float:
    ca = a.mom2.double() / a.count
    cb = b.mom2.double() / b.count
    return float((ca - cb).norm() / cb.norm())


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    suite = os.environ.get("FASTEDIT_GPU_SUITE") == "1"
    argv = list(sys.argv[1:] if argv is None else argv)
    if suite:
        argv = GPU_SUITE + shlex.split(os.environ.get("FASTEDIT_GPU_SUITE_ARGS", "")) + argv
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from fastedit.models import get_adapter
    from fastedit.stats.sources import open_source

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    info = machine()
    t = time.perf_counter()
    model, tok = load(args, device, torch.float32)  # the baseline's float32 model; cast for fastedit below
    load_s = time.perf_counter() - t
    if getattr(model.config, "_attn_implementation", None) != args.attn:
        model.set_attn_implementation(args.attn)
    adapter = get_adapter(model)
    names = [adapter.rewrite_module_tmp.format(int(x)) for x in args.layers.split(",")]
    limit = adapter.max_positions(model)
    seq_len = min(args.seq_len or (limit if device.startswith("cuda") else min(limit, 1024)), limit)
    source = open_source(args.source)
    t = time.perf_counter()
    sources = documents(args, tok, source, seq_len)
    select_s = time.perf_counter() - t
    result = measure(args, model, tok, adapter, names, sources, seq_len, device)
    result.update({
        "tokenized_up_front": bool(args.pretokenize or sources["split"]),
        "split_long_articles": sources["split"],
        "document_selection_seconds": select_s,
        "model_load_seconds": load_s,
        "machine": info,
        "command": "python benchmarks/bench_stats.py " + " ".join(shlex.quote(a) for a in argv),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    result["projection"]["assumption"] = (f"mean tokens per article of the local sample ({len(source)} articles), each "
                                          f"capped at {seq_len} tokens; the projected time is that many tokens at "
                                          "the measured tokens/s")
    try:
        result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    report(args, result, suite)
    return result


def documents(args, tok, source, seq_len: int) -> dict:
    """The benchmark's documents as sources: ``bench`` (up to ``--tokens``), ``base`` (the baseline's
    first ``--baseline-tokens`` of them, or the same), ``warm`` (two documents), with ``mean_article``
    and whether long articles were ``split``."""
    from fastedit.stats.sources import TextSource

    docs, total, mean_article, split = choose_documents(tok, source, seq_len, args.tokens, args.split_long)
    if args.pretokenize and not split:
        docs = [tok.encode(d, truncation=True, max_length=seq_len) for d in docs]
    bench_src = TextSource(f"{source.name} (first {len(docs)} of the sample)", docs)
    base_docs = docs
    if args.baseline_tokens is not None and args.baseline_tokens < total:
        base_docs, base_total = [], 0
        for d in docs:
            if base_total >= args.baseline_tokens:
                break
            n = len(d) if not isinstance(d, str) else len(tok.encode(d, truncation=True, max_length=seq_len))
            base_docs.append(d)
            base_total += n
    base_src = bench_src if base_docs is docs else TextSource(f"{bench_src.name}, baseline part", base_docs)
    return {"bench": bench_src, "base": base_src, "warm": TextSource("warm-up", docs[:2]), "mean_article": mean_article,
            "split": split}


def measure(args, model, tok, adapter, names, sources: dict, seq_len: int, device) -> dict:
    """The baseline (float32, as the reference runs it) and fastedit's pass on the same documents:
    times, tokens/s, the error of C, and the projection to 100,000 articles."""
    from fastedit.stats.collect import collect
    from fastedit.stats.reference import reference_second_moments

    fast_dtype = getattr(torch, args.dtype or ("bfloat16" if str(device).startswith("cuda") else "float32"))
    bench_src, base_src, warm_src = sources["bench"], sources["base"], sources["warm"]

    def run_fast(src):
        sync(device)
        t0 = time.perf_counter()
        out = collect(model, tok, adapter, names, src, None, dtype=getattr(torch, args.accum_dtype), max_len=seq_len,
                      rows=args.rows, check_every=None, progress=False)
        sync(device)
        return out, time.perf_counter() - t0

    reference_second_moments(model, tok, names[:1], warm_src, None, max_len=seq_len, stop=True)  # warm-up
    sync(device)
    t = time.perf_counter()
    ref = reference_second_moments(model, tok, names, base_src, None, dtype=torch.float32, max_len=seq_len,
                                   stop=args.baseline == "stop")
    sync(device)
    base_s = time.perf_counter() - t
    result: dict = {}
    if fast_dtype != torch.float32 or base_src is not bench_src:
        # like for like first: fastedit with a float32 forward on the baseline's documents
        run_fast(warm_src)
        same, _ = run_fast(base_src)
        result["max_rel_error_fp32_forward"] = max(rel_error(same.stats[n], ref[n]) for n in names)
    if fast_dtype != torch.float32:
        model.to(fast_dtype)
    run_fast(warm_src)  # warm-up: kernel compilation, allocator
    fast, fast_s = run_fast(bench_src)
    checked = fast if base_src is bench_src else run_fast(base_src)[0]
    errs = {n: rel_error(checked.stats[n], ref[n]) for n in names}
    result.update(summary(args, device, model, fast.report, fast_s, ref[names[0]].count, base_s, errs, fast_dtype,
                          seq_len, sources["mean_article"]))
    return result


def summary(args, device, model, rep, fast_s, base_tokens, base_s, errs, fast_dtype, seq_len, mean_article) -> dict:
    """The result fields of one measurement."""
    result_dtype = str(fast_dtype).replace("torch.", "")
    tps, base_tps = rep.tokens / fast_s, base_tokens / base_s
    projected_tokens = ARTICLES * mean_article
    return {
        "benchmark": "bench_stats",
        "model": args.model,
        "layers": [int(x) for x in args.layers.split(",")],
        "device": device,
        "model_dtype": result_dtype,
        "accum_dtype": args.accum_dtype,
        "attention": model.config._attn_implementation,
        "seq_len": seq_len,
        "rows": rep.rows_per_batch,
        "tokens": rep.tokens,
        "documents": rep.documents,
        "fill": round(rep.fill, 4),
        "seconds": fast_s,
        "tokens_per_s": tps,
        "baseline": f"reference procedure, float32, one pass per layer ({'whole model' if args.baseline == 'full' else 'stopping after the layer'}), padded length-sorted batches of 3 x seq_len tokens",
        "baseline_tokens": base_tokens,
        "baseline_seconds": base_s,
        "baseline_tokens_per_s": base_tps,
        "speedup": tps / base_tps,
        "max_rel_error": max(errs.values()),
        "rel_error_per_layer": errs,
        "error_note": ("C = sum k k^T / n, relative Frobenius error against the baseline on the same documents"
                       + ("" if fast_dtype == torch.float32 else f"; fastedit's forward in {result_dtype} against float32")),
        "projection": {
            "articles": ARTICLES,
            "mean_tokens_per_article": round(mean_article, 1),
            "assumption": "",
            "tokens": int(projected_tokens),
            "seconds": projected_tokens / tps,
            "minutes": projected_tokens / tps / 60,
            "baseline_minutes": projected_tokens / base_tps / 60,
        },
    }


def report(args, result: dict, suite: bool) -> None:
    """Print the result and write its JSON (``--json``; the GPU suite's results folder by default there)."""
    print(f"fastedit   {result['tokens']:>9,} tokens in {result['seconds']:8.1f} s: {result['tokens_per_s']:10,.0f} tokens/s "
          f"({result['documents']} documents, rows of {result['seq_len']}, {100 * result['fill']:.1f}% real tokens)")
    print(f"reference  {result['baseline_tokens']:>9,} tokens in {result['baseline_seconds']:8.1f} s: "
          f"{result['baseline_tokens_per_s']:10,.0f} tokens/s ({args.baseline})")
    print(f"speedup {result['speedup']:.2f}x, largest relative error of C {result['max_rel_error']:.2e}; "
          f"100,000 articles of {result['projection']['mean_tokens_per_article']:.0f} tokens: "
          f"{result['projection']['minutes']:.1f} min")
    out = args.json
    if suite and out is None:
        out = str(Path(os.environ.get("FASTEDIT_RESULTS_DIR", REPO / "benchmarks" / "results")) / "bench_stats.json")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
