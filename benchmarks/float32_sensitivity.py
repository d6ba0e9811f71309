"""How far MEMIT's update moves under float32 rounding alone: the plain reference-style
implementation and fastedit's exact mode, each in float32 and in float64, on the same edits.

    python benchmarks/float32_sensitivity.py --model gpt2-xl-narrow --edits 3 --threads 1

Prints (and ``--out`` writes) the largest relative Frobenius difference of ΔW per layer between each
pair: plain32 vs fastedit32 is the benchmark's "update error"; plain32 vs plain64 is how much the
reference-style code itself moves when only its rounding changes; plain64 vs fastedit64 shows
whether the two implementations compute the same thing. The edits are sequential (each on the model
the previous ones left), both sides starting from the same random weights and synthetic statistics.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

import bench_edit  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from machine_info import machine  # noqa: E402


def deltas(model, tok, hp, hp_dict, templates, store, batches, names, plain: bool, mode="exact"):
    """ΔW per edit and weight name, applied in sequence by plain.memit or an EditSession."""
    from fastedit.engine import EditSession
    from fastedit.methods import plain as plain_impl

    out, sess = [], None
    if not plain:
        sess = EditSession(model, tok, "memit", hp, mode=mode, templates=templates, progress=False)
        sess.stats = store
    for batch in batches:
        before = {n: model.get_parameter(n).detach().clone() for n in names}
        if plain:
            refs = [dict(r.to_reference_dict(), target_new=r.target_new) for r in batch]
            plain_impl.memit(model, tok, refs, hp_dict, templates, lambda layer: store.second_moment(layer))
        else:
            sess.apply(batch)
        out.append({n: (model.get_parameter(n).detach() - before[n]).double() for n in names})
    return out


def max_rel(a, b) -> float:
    return max(float((x[n] - y[n]).norm() / y[n].norm()) for x, y in zip(a, b) for n in x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2-xl-narrow")
    ap.add_argument("--edits", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stats-dir", default="/tmp/fastedit-sensitivity-stats")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from fastedit.methods.templates import memit_templates
    from fastedit.models import get_adapter
    from fastedit.stats.store import SecondMomentStore
    from fastedit.stats.synthetic import write_synthetic_second_moments

    ns = bench_edit.parse(["--model", args.model, "--method", "memit", "--stats-dir", args.stats_dir])
    model32, tok, hp, synthetic = bench_edit.load(ns)
    if synthetic:
        write_synthetic_second_moments(model32, hp, Path(args.stats_dir))
    ad = get_adapter(model32)
    store = SecondMomentStore(model32, tok, ad, hp, stats_dir=Path(args.stats_dir), source=ns.stats_source,
                              max_len=ns.stats_max_len, progress=False)
    store.ensure(hp.layers)
    with torch.no_grad():
        templates = memit_templates(model32, tok, seed=0)
    reqs = bench_edit.counterfact(args.edits)
    batches = [[r] for r in reqs]
    hp_dict = dict(hp.to_dict(), rewrite_module_tmp=hp.rewrite_module_tmp or ad.rewrite_module_tmp,
                   layer_module_tmp=hp.layer_module_tmp or ad.layer_module_tmp,
                   mlp_module_tmp=hp.mlp_module_tmp or ad.mlp_module_tmp, ln_f_module=hp.ln_f_module or ad.ln_f_module,
                   lm_head_module=hp.lm_head_module or ad.lm_head_name(model32))
    names = [f"{hp_dict['rewrite_module_tmp'].format(l)}.weight" for l in hp.layers]
    runs = {}
    for dtype in (torch.float32, torch.float64):
        for plain in (True, False):
            model = copy.deepcopy(model32).to(dtype)
            key = f"{'plain' if plain else 'fastedit'}{'32' if dtype == torch.float32 else '64'}"
            runs[key] = deltas(model, tok, hp, hp_dict, templates, store, batches, names, plain)
            del model
    pairs = [("plain32", "fastedit32"), ("plain32", "plain64"), ("fastedit32", "fastedit64"), ("plain64", "fastedit64")]
    res = {
        "benchmark": "float32_sensitivity", "model": args.model, "edits": args.edits,
        "max_rel_update_difference": {f"{a}_vs_{b}": max_rel(runs[a], runs[b]) for a, b in pairs},
        "machine": machine(), "command": " ".join(sys.argv),
    }
    for k, v in res["max_rel_update_difference"].items():
        print(f"{k:<26} {v:.2e}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
