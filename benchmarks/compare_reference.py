"""Side by side: the same edits through the public reference code and through fastedit.

    python benchmarks/compare_reference.py --reference-dir CHECKOUT [--method rome|memit|both]
        [--model smollm2-135m | random:gpt2 | random:llama | ...] [--requests 3] [--hparams FILE]
        [--stats-source FILE] [--stats-samples 20] [--stats-max-len 512] [--out FILE.json]
    python benchmarks/compare_reference.py --reference-dir CHECKOUT --method alphaedit|emmet|encore|memit
        [--edits 5] [--batch-size 1] [--reference-only] [--save-deltas FILE.pt] [same options]

``--reference-dir`` is a checkout of the method's public code, kept beside the project (never inside
it) and never committed. Plain folders, for example:

    git clone https://github.com/kmeng01/memit ../ref/memit          # rome, memit (also has rome/)
    git clone https://github.com/jianghoucheng/AlphaEdit ../ref/alphaedit
    git clone https://github.com/scalable-model-editing/unified-model-editing ../ref/emmet
    git clone https://github.com/scalable-model-editing/knowledge-editing-regularization ../ref/encore

(or, from a bare mirror, ``git --git-dir=MIRROR archive HEAD | tar -x -C ../ref/NAME`` and
``git --git-dir=MIRROR rev-parse HEAD > ../ref/NAME/.commit``, so that the results name the commit).
Each is run as it is: AlphaEdit through ``AlphaEdit.AlphaEdit_main.apply_AlphaEdit_to_model(..., cache_c=, P=)``,
EMMET through ``emmet.emmet_main.apply_emmet_to_model``, ENCORE through
``encore.encore_main.apply_encore_to_model`` (its sequential memory ``SEQ_CACHE`` switched on with
``hparams.sequential = True``, as its experiment script does), MEMIT through kmeng01's
``apply_memit_to_model``; see ``benchmarks/reference_methods.py``.

Batch mode (rome, memit; the default). For each method the script

1. computes the second-moment statistics once with fastedit, in the reference's cache layout and file
   name, under a scratch folder that also holds a copy of the checkout's ``globals.yml`` (the reference
   reads both relative to its working directory), so both sides read the same file;
2. samples the context templates once with fastedit (seeded) and gives them to both sides (the
   reference's ``CONTEXT_TEMPLATES_CACHE``, fastedit's ``templates=``);
3. edits a fresh deep copy of the float32 model with the reference (``apply_rome_to_model``: the requests
   one after another; ``apply_memit_to_model``: one batch) and another with fastedit's
   ``EditSession`` (ROME: ``apply([request])`` per request in order; MEMIT: ``apply(all requests)``),
   both with the same hyperparameters (``mom2_n_samples`` replaced by ``--stats-samples``);
4. reports, for every edited weight, the relative Frobenius error ‖ΔW_fastedit − ΔW_ref‖ / ‖ΔW_ref‖
   (ΔW = W_after − W_before, in float64), both wall times and their ratio (the speedup), and both
   process CPU times (steadier than wall time where other jobs share the machine). ``--repeat N``
   runs each side N times, alternating which goes first, and reports the fastest run of each.

Sequential mode (``--edits N``; always for alphaedit, emmet, encore, default N = 5): ``N`` edits of
``--batch-size`` requests (default 1) one after another on each side, as the successors' papers run
them (see ``benchmarks/reference_sequence.py``):

* hyperparameters: one file in the reference's own JSON layout, written to the scratch folder from the
  checkout's file for the model family (``hparams/AlphaEdit/gpt2-xl.json``, ``Llama3-8B.json``, ...)
  with the settings shared with MEMIT (layers, optimisation, module names, statistics) taken from
  fastedit's MEMIT preset for the model (small settings for random models) and the method's own keys
  (``nullspace_threshold``, ``L2``, ``emmet_lambda``, ``update_norm_lambda``, ``prob_cutoff``, ...) as
  the repository has them; or ``--hparams FILE`` in that layout, used as it is. The reference reads
  it with its ``from_json``, fastedit with ``fastedit.hparams.load_hparams(method, file)``;
* statistics, templates: as in batch mode (MEMIT's template groups; AlphaEdit's code reads the model's
  statistics folder under its own naming, the last path component, linked where it differs);
* the fastedit side is ``EditSession(model, tok, method, hp, templates=...)`` and one
  ``apply(batch)`` per edit; it needs the method registered in fastedit (a clear error otherwise;
  ``--reference-only`` runs the reference alone);
* AlphaEdit: ``P`` is built before the first edit from the reference's own ``get_cov`` (its statistics
  loader) with the null-space threshold of the file, and ``cache_c`` starts at zero and is threaded
  from call to call, as its ``experiments/evaluate.py`` does; fastedit builds its own from the same
  statistics file and threshold. The results give P's rank and how close a singular value is to the
  threshold, and (where the session keeps an edit history) the relative difference of
  ``session.edit_history.gram(layer)`` from the final ``cache_c`` (ENCORE: from ``SEQ_CACHE``);
* ENCORE stops its target optimisation early (``prob_cutoff``); both sides read the same value, and
  the reference's ‖δ‖ per request is recorded per edit;
* the report gives, per edit and per edited weight, ‖ΔW_e,fastedit − ΔW_e,ref‖ / ‖ΔW_e,ref‖ where ΔW_e
  is that edit's change, both sides' time per edit and their setup times. The reference's per-edit ΔW
  are saved (``--save-deltas``, default in the scratch folder) and fingerprinted (norm, largest entry,
  SHA-256) in the JSON.

``--model random:gpt2`` (or gptj, gpt_neox, llama, mistral, qwen2) uses a small seeded random-weight
model of that family with GPT-2's tokenizer and small hyperparameters (see :func:`small_hparams`);
statistics are truncated to the model's context length.

The reference runs unmodified; what it needs to run here (no CUDA, transformers 5, tied embeddings) is
patched at run time by ``benchmarks/reference_shims.py`` and listed in the results. Its own output goes
to a log file in the scratch folder.

The results go to ``--out`` (JSON; sequential mode: ``benchmarks/results/compare_reference_<method>_
<model>.json``, with ``--reference-only`` the scratch folder) and a ``.txt`` beside it with the printed
table; the last line printed is one JSON object with the summary. The exit status is 1 when an error
exceeds ``--tolerance`` (default 1e-4).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # reference_shims, when run as a script

import reference_shims  # noqa: E402

DEFAULT_REQUESTS = REPO.parent / "shared" / "data" / "counterfact" / "counterfact-edit.json"
DEFAULT_STATS_SOURCE = REPO.parent / "shared" / "data" / "wikipedia" / "enwiki_sample.jsonl"
DEFAULT_OUT = HERE / "results" / "compare_reference.json"

log = logging.getLogger("compare_reference")


# ---------------------------------------------------------------------------- inputs
# Random-weight models are built with this initializer_range instead of the configs' 0.02. At 0.02
# the residual stream of a small random model has a norm of about 0.1, so the target optimisation's
# weight decay 0.5·‖δ‖/‖v_init‖² outweighs the NLL by orders of magnitude and Adam (lr 0.5) bounces δ
# between the clamp ball's surface and the origin, where the decay's gradient δ/‖δ‖ is the direction
# of a vector made of rounding noise: float32 rounding then changes z by up to 1e-2 relative (both
# codes agree to 1e-12 in float64 there). At 0.2 the optimisation behaves as on a trained model.
RANDOM_INIT_RANGE = 0.2


def load_model(spec: str):
    """(model, tokenizer, label): a fastedit model name or path, or ``random:ARCH[,key=value...]``
    (seeded random weights of a small config of that family, config overrides after commas; GPT-2's
    tokenizer)."""
    import fastedit
    from fastedit.models import gpt2_tokenizer, random_model

    if spec.startswith("random:"):
        arch, *pairs = spec.split(":", 1)[1].split(",")
        overrides = {"initializer_range": RANDOM_INIT_RANGE}
        for pair in pairs:
            key, _, value = pair.partition("=")
            try:
                overrides[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                overrides[key.strip()] = value
        model = random_model(arch.strip(), dtype=torch.float32, **overrides)
        label = "random:" + ",".join([arch.strip()] + [f"{k}={v}" for k, v in overrides.items()])
        return model, gpt2_tokenizer(), label
    model, tok = fastedit.load_model(spec, dtype=torch.float32)
    return model, tok, spec


def load_requests(path: Path, n: int):
    from fastedit.requests import EditRequest

    records = json.loads(Path(path).read_text())
    if len(records) < n:
        raise SystemExit(f"{path} holds {len(records)} records, fewer than --requests {n}")
    return [EditRequest.from_dict(rec, index=i) for i, rec in enumerate(records[:n])]


def small_hparams(method: str, model, adapter) -> dict:
    """Hyperparameters for a random-weight model: the reference's optimisation settings, edits from a
    quarter of the way up (layer 1 of the small configs' 4; MEMIT also the next one), the loss read at
    the last layer, λ = Llama-3-8B's 15000 scaled by d_ff as the README derives SmolLM2's."""
    n = adapter.num_layers(model)
    first = max(1, n // 4)
    hp = dict(
        fact_token="subject_last",
        v_num_grad_steps=20,
        v_lr=0.5,
        v_loss_layer=n - 1,
        v_weight_decay=0.5,
        kl_factor=0.0625,
        mom2_adjustment=True,
        rewrite_module_tmp=adapter.rewrite_module_tmp,
        layer_module_tmp=adapter.layer_module_tmp,
        mlp_module_tmp=adapter.mlp_module_tmp,
        attn_module_tmp=adapter.attn_module_tmp,
        ln_f_module=adapter.ln_f_module,
        lm_head_module=adapter.lm_head_name(model),
        mom2_dataset="wikipedia",
        mom2_n_samples=100000,
        mom2_dtype="float32",
    )
    if method == "rome":
        hp.update(layers=[first], clamp_norm_factor=4.0, context_template_length_params=[[5, 10], [10, 10]])
    else:
        d_ff = adapter.key_size(model, first)
        hp.update(
            layers=[first, first + 1], clamp_norm_factor=0.75, layer_selection="all",
            mom2_update_weight=round(15000 * d_ff / 14336),
        )
    return hp


def resolve_hparams(method: str, spec: str | None, model, adapter, n_samples: int):
    """fastedit hyperparameters for ``method``, with ``mom2_n_samples`` = ``n_samples`` and every
    module name written out (so both sides read the same values)."""
    from fastedit.hparams import hparams_class, load_hparams

    if spec is not None:
        hp = load_hparams(method, spec)
    elif str(model.config._name_or_path).startswith("random-"):
        hp = hparams_class(method).from_dict(small_hparams(method, model, adapter))
    else:
        hp = hparams_class(method).preset(str(model.config._name_or_path))
    filled = {
        attr: getattr(hp, attr) or getattr(adapter, attr)
        for attr in ("rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp", "ln_f_module")
    }
    filled["lm_head_module"] = hp.lm_head_module or adapter.lm_head_name(model)
    hp = hp.replace(mom2_n_samples=n_samples or hp.mom2_n_samples, **filled)  # 0: the preset's own
    # fastedit's own switches must stay at the reference behaviour, which is all the reference has.
    differs = [
        f"{k}={getattr(hp, k)!r}"
        for k, default in (("subject_index_rule", "additive"), ("strip_target_bos", False), ("target_skip_tokens", None),
                           ("solve_dtype", None))
        if getattr(hp, k) != default
    ]
    if method == "rome" and hp.key_variant != "rome":
        differs.append(f"key variant {hp.key_variant!r} (r-ROME)")
    if differs:
        raise SystemExit(
            f"{method}: these hyperparameters have no counterpart in the reference code: {', '.join(differs)}"
        )
    if hp.fact_token == "last":
        log.warning(
            "fact_token='last': the reference takes index -1, which lands on padding in a padded batch; "
            "fastedit takes the last real token (a documented difference), so the updates will differ"
        )
    return hp


def reference_hparams(ref, method: str, hp, path: Path):
    """The reference's own hyperparameters object, read with its ``from_json`` from a file holding
    exactly its keys."""
    cls = ref.ROMEHyperParams if method == "rome" else ref.MEMITHyperParams
    ours = hp.to_dict()
    data = {f.name: ours[f.name] for f in dataclasses.fields(cls)}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return cls.from_json(str(path)), data


# ---------------------------------------------------------------------------- machine
def machine_description() -> dict:
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "device": "cpu",
    }
    if torch.cuda.is_available():
        out["device"] = torch.cuda.get_device_name(0)
    try:
        out["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return out


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def reference_commit(reference_dir: Path) -> str | None:
    """The checkout's commit: ``git rev-parse HEAD`` where it is a git checkout; for a folder unpacked
    with ``git archive`` (no git metadata), the last word of a ``.commit`` file beside its code, when
    one was written there (``git rev-parse HEAD > .commit``)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(reference_dir), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True, text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        out = None
    if out is not None and out.returncode == 0:
        top, _, head = out.stdout.strip().partition("\n")
        if Path(top).resolve() == Path(reference_dir).resolve() and head:
            return head.strip()
    marker = Path(reference_dir) / ".commit"
    words = marker.read_text().split() if marker.is_file() else []
    return words[-1] if words and re.fullmatch(r"[0-9a-f]{40}", words[-1]) else None


# ---------------------------------------------------------------------------- one comparison
def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.double(), ref.double()
    return float((ours - ref).norm() / ref.norm())


def weight_names(hp) -> list[str]:
    return [f"{hp.rewrite_module_tmp.format(layer)}.weight" for layer in hp.layers]


def unchanged_elsewhere(base, edited, names) -> bool:
    """Whether ``edited`` equals ``base`` in every parameter but ``names``."""
    params = dict(edited.named_parameters())
    return all(torch.equal(p, params[n]) for n, p in base.named_parameters() if n not in names)


class _Timed:
    """Wall and process CPU seconds of a block, and the 1-minute load average before and after."""

    def __enter__(self):
        self.load = [_load_average()]
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
        self.load.append(_load_average())


def run_reference(method, ref, base, tok, adapter, requests, hp, ref_hp, templates, workdir, log_path):
    """The reference's edit of a fresh copy of ``base``: (edited model, _Timed)."""
    model = copy.deepcopy(base)
    blocks = [model.get_submodule(hp.layer_module_tmp.format(i)) for i in range(adapter.num_layers(model))]
    ref_requests = [r.to_reference_dict() for r in requests]
    # Module-level state of the reference: the templates it would sample at its first edit, and the
    # statistics caches it fills on first use (emptied so that it loads them inside the timed call, as
    # fastedit's fresh session does).
    ref.rome_main.CONTEXT_TEMPLATES_CACHE = None
    ref.compute_u.inv_mom2_cache.clear()
    if ref.memit_main is not None:
        ref.memit_main.CONTEXT_TEMPLATES_CACHE = None
        ref.memit_main.COV_CACHE.clear()
    if method == "rome":
        ref.rome_main.CONTEXT_TEMPLATES_CACHE = list(templates)
    else:
        ref.memit_main.CONTEXT_TEMPLATES_CACHE = [list(g) for g in templates]
    with open(log_path, "a") as f:
        f.write(f"\n===== reference {method}: {len(requests)} request(s) =====\n")
    with reference_shims.reference_shims(ref, model, blocks, workdir, log_path), _Timed() as timed:
        if method == "rome":
            ref.apply_rome_to_model(model, tok, ref_requests, ref_hp)
        else:
            ref.apply_memit_to_model(model, tok, ref_requests, ref_hp)
    return model, timed


def run_fastedit(method, base, tok, requests, hp, templates, stats_dir, args):
    """fastedit's edit of a fresh copy of ``base`` in a fresh session: (edited model, _Timed, session)."""
    from fastedit.engine import EditSession

    model = copy.deepcopy(base)
    with _Timed() as timed:
        session = EditSession(
            model, tok, method, hp, templates=templates, stats_dir=stats_dir, stats_source=args.stats_source,
            stats_max_len=args.stats_max_len, progress=False,
        )
        if method == "rome":
            for r in requests:
                session.apply([r])
        else:
            session.apply(requests)
    return model, timed, session


def run_method(method, ref, base, tok, adapter, requests, hp, templates, workdir, stats_dir, args, log_path):
    """Both sides ``args.repeat`` times, alternating which goes first; errors from the first run of
    each (later runs must reproduce it exactly), times the minimum over the runs."""
    names = weight_names(hp)
    before = {n: base.get_parameter(n).detach().clone() for n in names}
    ref_hp_file = workdir / f"hparams_{method}.json"
    deltas: dict[str, dict[str, torch.Tensor]] = {}
    clean: dict[str, bool] = {}
    timings: dict[str, list[_Timed]] = {"reference": [], "fastedit": []}
    repeatable = True
    stats_files = {}

    def record(side, model, timed):
        nonlocal repeatable
        delta = {n: model.get_parameter(n).detach() - before[n] for n in names}
        if side in deltas:
            repeatable &= all(torch.equal(delta[n], deltas[side][n]) for n in names)
        else:
            deltas[side] = delta
            clean[side] = unchanged_elsewhere(base, model, names)
        timings[side].append(timed)

    for rep in range(args.repeat):
        for side in ("reference", "fastedit") if rep % 2 == 0 else ("fastedit", "reference"):
            if side == "reference":
                # a fresh hparams object each time: the reference sorts hparams.layers in place
                ref_hp, ref_hp_dict = reference_hparams(ref, method, hp, ref_hp_file)
                model, timed = run_reference(method, ref, base, tok, adapter, requests, hp, ref_hp, templates, workdir, log_path)
            else:
                model, timed, session = run_fastedit(method, base, tok, requests, hp, templates, stats_dir, args)
                stats_files = {str(l): str(p) for l, p in session.stats.loaded_from.items()}
                del session
            record(side, model, timed)
            del model

    layers = {}
    ref_d, fe_d = deltas["reference"], deltas["fastedit"]
    for layer, n in zip(hp.layers, names):
        layers[n] = {
            "layer": layer,
            "rel_error": rel_error(fe_d[n], ref_d[n]),
            "ref_update_norm": float(ref_d[n].double().norm()),
            "fastedit_update_norm": float(fe_d[n].double().norm()),
            "max_abs_diff": float((fe_d[n].double() - ref_d[n].double()).abs().max()),
        }
    worst = max(v["rel_error"] for v in layers.values())
    ref_wall = min(t.wall for t in timings["reference"])
    fe_wall = min(t.wall for t in timings["fastedit"])
    ref_cpu = min(t.cpu for t in timings["reference"])
    fe_cpu = min(t.cpu for t in timings["fastedit"])
    return {
        "method": method,
        "layers": layers,
        "max_rel_update_error": worst,
        "passed": worst <= args.tolerance and all(clean.values()) and repeatable,
        "other_parameters_unchanged": clean,
        "repeat": args.repeat,
        "repeat_results_identical": repeatable,
        "reference_seconds": ref_wall,
        "fastedit_seconds": fe_wall,
        "speedup": ref_wall / fe_wall,
        # CPU time of this process (all threads): less disturbed than wall time when other jobs share
        # the machine, so its ratio is the steadier figure there.
        "reference_cpu_seconds": ref_cpu,
        "fastedit_cpu_seconds": fe_cpu,
        "cpu_time_ratio": ref_cpu / fe_cpu,
        "runs": {
            side: [{"wall_s": t.wall, "cpu_s": t.cpu, "load_average_before_after": t.load} for t in ts]
            for side, ts in timings.items()
        },
        "hparams": ref_hp_dict,
        "templates": templates,
        "stats_files": stats_files,
    }


# ---------------------------------------------------------------------------- sequential runs
SUCCESSORS = ("alphaedit", "emmet", "encore")


def model_short_name(spec: str) -> str:
    """``smollm2-135m`` → ``smollm2``, ``random:gpt2,...`` → ``gpt2``: the results files' model part."""
    name = spec.split(":", 1)[-1].split(",")[0]
    return name.split("-")[0] if name.startswith("smollm2") else Path(name).name


def link_reference_stats(stats_dir: Path, name_or_path: str) -> None:
    """fastedit writes kmeng01's model folder; AlphaEdit's code reads the folder named by the last path
    component (its layer_stats, unchanged): that name is linked to the same folder where it differs."""
    from fastedit.stats.cache import reference_model_names

    kmeng, alpha = reference_model_names(name_or_path)
    if alpha != kmeng and not (stats_dir / alpha).exists():
        (stats_dir / alpha).symlink_to(stats_dir / kmeng, target_is_directory=True)


def run_sequential(args, reference_dir: Path, workdir: Path, stats_dir: Path, machine: dict) -> dict:
    """``--edits N`` edits of ``--batch-size`` requests each through the reference code of
    ``args.method`` and (unless ``--reference-only``) through fastedit; see :mod:`reference_sequence`."""
    import reference_sequence as rs
    from fastedit.models import get_adapter
    from fastedit.stats.store import SecondMomentStore

    method = args.method
    torch.manual_seed(0)
    base, tok, label = load_model(args.model)
    adapter = get_adapter(base)
    args.stats_max_len = min(args.stats_max_len, adapter.max_positions(base))
    requests = load_requests(args.requests_file, args.edits * args.batch_size)
    own = method if method in ("memit", "rome") else "memit"  # the successors share MEMIT's settings
    shared = resolve_hparams(own, args.hparams if method == own else None, base, adapter, args.stats_samples)
    s = rs.prepare(method, reference_dir, base, tok, adapter, requests, args, workdir, shared)
    d = s.hp_data
    stats_hp = shared.replace(layers=tuple(d["layers"]), rewrite_module_tmp=d["rewrite_module_tmp"],
                              mom2_dataset=d["mom2_dataset"], mom2_dtype=d["mom2_dtype"])
    SecondMomentStore(base, tok, adapter, stats_hp, stats_dir=stats_dir, source=args.stats_source,
                      max_len=args.stats_max_len, progress=False).ensure(stats_hp.layers)
    link_reference_stats(stats_dir, str(base.config._name_or_path))
    names = [f"{d['rewrite_module_tmp'].format(layer)}.weight" for layer in d["layers"]]
    print(f"[{method}] {len(s.batches)} sequential edit(s) of {args.batch_size} through the reference ...", flush=True)
    ref = rs.run_reference(s, base, tok, adapter, names, _Timed)
    ours = None
    if not args.reference_only:
        print(f"[{method}] ... and through fastedit", flush=True)
        ours = rs.run_fastedit(s, base, tok, names, stats_dir, args, _Timed)
    edits = rs.edit_records(ref, ours, names, d["layers"])
    clean = {"reference": unchanged_elsewhere(base, ref["model"], names)}
    if ours:
        clean["fastedit"] = unchanged_elsewhere(base, ours["model"], names)
    worst = max(e["max_rel_error"] for e in edits) if ours else None
    deltas_path = Path(args.save_deltas or workdir / f"reference_deltas_{method}.pt").resolve()
    rs.save_deltas(deltas_path, ref, names, {"method": method, "model": label, "hparams": d, "templates": s.templates,
                                            "requests": [r.to_reference_dict() for r in requests]})
    return {
        "mode": "sequential", "method": method, "model": label, "dtype": "float32",
        "n_edits": len(s.batches), "batch_size": args.batch_size, "reference_only": bool(args.reference_only),
        "requests": [r.to_reference_dict() for r in requests],
        "reference_dir": str(reference_dir), "reference_commit": reference_commit(reference_dir),
        "hparams_file": str(s.hp_path), "hparams": d, "hparams_source": s.hp_source,
        "fastedit_hparams": ours["hparams"] if ours else None, "templates": s.templates,
        "template_seed": args.seed,
        "stats": {"source": str(args.stats_source), "samples": args.stats_samples, "max_len": args.stats_max_len,
                  "dir": str(stats_dir), "fastedit_files": ours["stats_files"] if ours else None},
        "reference_setup_s": ref["setup"].wall, "reference_setup_info": ref["begin"],
        "fastedit_setup_s": ours["setup"].wall if ours else None,
        "reference_total_s": sum(e["reference_s"] for e in edits),
        "fastedit_total_s": sum(e["fastedit_s"] for e in edits) if ours else None,
        "fastedit_mode": args.mode,
        "reference_median_s": statistics.median(e["reference_s"] for e in edits),
        "fastedit_median_s": statistics.median(e["fastedit_s"] for e in edits) if ours else None,
        "median_speedup": (statistics.median(e["reference_s"] for e in edits)
                           / statistics.median(e["fastedit_s"] for e in edits)) if ours else None,
        "edits": edits, "history_rel_error": rs.history_errors(ref, ours),
        "max_rel_update_error": worst, "tolerance": args.tolerance, "other_parameters_unchanged": clean,
        "passed": None if ours is None or args.mode == "fast" else bool(worst <= args.tolerance and all(clean.values())),
        "reference_deltas_file": str(deltas_path), "reference_log": str(s.log_path),
        "machine": machine, "shims": reference_shims.SHIMS,
    }


def sequential_table(r: dict) -> str:
    """The printed report of a sequential run: one line per edit and weight, then the totals."""
    both = not r["reference_only"]
    lines = [
        f"compare_reference (sequential): {r['method']} on {r['model']} (float32), {r['n_edits']} edit(s) of "
        f"{r['batch_size']} CounterFact request(s), reference {r['reference_dir']}",
        f"machine: {r['machine']['cpu']}, {r['machine']['torch_threads']} torch threads, device "
        f"{r['machine']['device']}, torch {r['machine']['torch']}, transformers {r['machine']['transformers']}",
        "",
        f"{'edit':>4} {'edited weight':<42} {'|dW| reference':>15} {'|dW| fastedit':>15} {'rel. error':>11} "
        f"{'ref s':>8} {'fastedit s':>10}",
        "-" * 111,
    ]
    for e in r["edits"]:
        for i, (name, w) in enumerate(e["weights"].items()):
            fe = f"{w['fastedit_update_norm']:>15.6e} {w['rel_error']:>11.2e}" if both else f"{'-':>15} {'-':>11}"
            fe_s = f"{e['fastedit_s']:>10.2f}" if both else f"{'-':>10}"
            t = f"{e['reference_s']:>8.2f} {fe_s}" if i == 0 else ""
            lines.append(f"{e['edit']:>4} {name:<42} {w['ref_update_norm']:>15.6e} {fe} {t}")
    lines.append("")
    lines.append(f"setup (statistics, AlphaEdit's P; fastedit's session): reference {r['reference_setup_s']:.2f} s"
                 + (f", fastedit {r['fastedit_setup_s']:.2f} s" if both else "")
                 + (f"; {r['reference_setup_info']}" if r["reference_setup_info"] else ""))
    lines.append(f"edits: reference {r['reference_total_s']:.2f} s" + (
        f", fastedit ({r.get('fastedit_mode', 'exact')} mode) {r['fastedit_total_s']:.2f} s, speedup "
        f"{r['reference_total_s'] / r['fastedit_total_s']:.2f}x; per-edit medians {r['reference_median_s']:.2f} s "
        f"and {r['fastedit_median_s']:.2f} s, {r['median_speedup']:.2f}x" if both else " (reference only)"))
    if both:
        verdict = "not judged (fast mode)" if r["passed"] is None else ("yes" if r["passed"] else "NO")
        lines.append(f"max relative update error {r['max_rel_update_error']:.2e} (tolerance {r['tolerance']:g}); "
                     f"history Gram rel. error {r['history_rel_error']}; passed: {verdict}")
    lines.append(f"(reference per-edit dW in {r['reference_deltas_file']}; reference output in {r['reference_log']})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- report
def table(summary: dict, results: list[dict]) -> str:
    lines = [
        f"compare_reference: {summary['model']} (float32), {summary['n_requests']} CounterFact request(s), "
        f"reference {summary['reference_dir']}",
        f"machine: {summary['machine']['cpu']}, {summary['machine']['torch_threads']} torch threads, "
        f"device {summary['machine']['device']}, torch {summary['machine']['torch']}, "
        f"transformers {summary['machine']['transformers']}",
        "",
        f"{'method':<7} {'edited weight':<42} {'|dW| reference':>15} {'|dW| fastedit':>15} {'rel. error':>11}",
        "-" * 94,
    ]
    for r in results:
        for name, v in r["layers"].items():
            lines.append(
                f"{r['method']:<7} {name:<42} {v['ref_update_norm']:>15.6e} {v['fastedit_update_norm']:>15.6e} "
                f"{v['rel_error']:>11.2e}"
            )
    lines += [
        "",
        f"{'method':<7} {'requests':>8} {'reference s':>12} {'fastedit s':>11} {'speedup':>8} "
        f"{'CPU s ref / fastedit':>21} {'CPU ratio':>10} {'max rel. error':>15} {'ok':>4}",
        "-" * 104,
    ]
    for r in results:
        cpu = f"{r['reference_cpu_seconds']:.1f} / {r['fastedit_cpu_seconds']:.1f}"
        lines.append(
            f"{r['method']:<7} {summary['n_requests']:>8} {r['reference_seconds']:>12.2f} {r['fastedit_seconds']:>11.2f} "
            f"{r['speedup']:>7.2f}x {cpu:>21} {r['cpu_time_ratio']:>9.2f}x {r['max_rel_update_error']:>15.2e} "
            f"{'yes' if r['passed'] else 'NO':>4}"
        )
    lines.append(
        f"(tolerance {summary['tolerance']:g}; times: the fastest of {results[0]['repeat']} run(s) per side; "
        f"load average at start {summary['machine'].get('load_average_at_start')}; "
        f"reference output in {summary['reference_log']})"
    )
    return "\n".join(lines)


def _scratch(args, reference_dir: Path) -> tuple[Path, Path]:
    """(scratch folder holding a copy of the checkout's globals.yml, the statistics folder it names)."""
    import yaml

    if not (reference_dir / "globals.yml").is_file():
        raise SystemExit(f"{reference_dir}/globals.yml not found: is this a checkout of the reference code?")
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="fastedit-compare-reference-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(reference_dir / "globals.yml", workdir / "globals.yml")
    return workdir, workdir / yaml.safe_load((workdir / "globals.yml").read_text())["STATS_DIR"]


def sequential_main(args) -> int:
    """``--edits N``: run, print and write one sequential comparison (see :func:`run_sequential`)."""
    if args.method == "both":
        raise SystemExit("--edits runs rome, memit, alphaedit, emmet or encore (one method at a time)")
    if args.edits < 1 or args.batch_size < 1:
        raise SystemExit("--edits and --batch-size must be at least 1")
    if not args.reference_only:
        import reference_sequence

        reference_sequence.check_fastedit_method(args.method)
    reference_dir = args.reference_dir.resolve()
    args.stats_source = args.stats_source.resolve()
    workdir, stats_dir = _scratch(args, reference_dir)
    if args.out is None:
        suffix = "_fast" if args.mode == "fast" else ""
        name = f"compare_reference_{args.method}_{model_short_name(args.model)}{suffix}.json"
        args.out = workdir / f"reference_{args.method}.json" if args.reference_only else HERE / "results" / name
    out = args.out.resolve()
    result = run_sequential(args, reference_dir, workdir, stats_dir, machine_description())
    text = sequential_table(result)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".txt").write_text(text + "\n")
    last = {k: result[k] for k in ("method", "model", "n_edits", "batch_size", "max_rel_update_error", "passed",
                                   "reference_total_s", "fastedit_total_s")}
    last["per_edit_max_rel_error"] = [e.get("max_rel_error") for e in result["edits"]]
    last["out"] = str(out)
    print(json.dumps(last))
    return 0 if result["passed"] in (True, None) else 1


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-dir", required=True, type=Path, help="checkout of kmeng01/memit or kmeng01/rome")
    ap.add_argument("--method", choices=["rome", "memit", "both", *SUCCESSORS], default="both",
                    help="default: both, or what the checkout has; alphaedit, emmet and encore run sequentially")
    ap.add_argument("--edits", type=int, default=None,
                    help="sequential mode: this many edits one after another, each ΔW compared (default for "
                         "alphaedit, emmet, encore: 5; rome, memit: only with this flag)")
    ap.add_argument("--batch-size", type=int, default=1, help="sequential mode: requests per edit")
    ap.add_argument("--reference-only", action="store_true",
                    help="sequential mode: run the reference side alone (no fastedit method needed)")
    ap.add_argument("--save-deltas", type=Path, default=None,
                    help="sequential mode: where the reference's per-edit dW go (default: the scratch folder)")
    ap.add_argument("--model", default="smollm2-135m",
                    help="fastedit model name or path, or random:ARCH[,key=value...] (ARCH: gpt2, gptj, gpt_neox, "
                         "llama, mistral, qwen2; small seeded random config, initializer_range "
                         f"{RANDOM_INIT_RANGE} unless overridden)")
    ap.add_argument("--requests", type=int, default=3, help="how many CounterFact records, from the first")
    ap.add_argument("--requests-file", type=Path, default=DEFAULT_REQUESTS,
                    help="CounterFact-style JSON list (default: ../shared/data/counterfact/counterfact-edit.json)")
    ap.add_argument("--hparams", default=None,
                    help="fastedit preset name or reference-layout JSON (default: the model's preset; "
                         "small settings for random models). With --method both, use a preset name")
    ap.add_argument("--stats-source", type=Path, default=DEFAULT_STATS_SOURCE,
                    help="text to compute the statistics from (default: ../shared/data/wikipedia/enwiki_sample.jsonl)")
    ap.add_argument("--stats-samples", type=int, default=20,
                    help="replaces mom2_n_samples on both sides (0: the preset's own)")
    ap.add_argument("--mode", choices=["exact", "fast"], default="exact",
                    help="sequential mode: fastedit's mode (fast changes the updates: errors are reported, "
                         "not judged; the results file gets a _fast suffix)")
    ap.add_argument("--stats-max-len", type=int, default=512, help="truncate statistics documents to this many tokens")
    ap.add_argument("--seed", type=int, default=0, help="seed of the context-template sampler")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="scratch folder (globals.yml, statistics, reference log); default: a new temp folder")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="largest relative update error that passes")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each side this many times, alternating which goes first; report the fastest")
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON (default: benchmarks/results/compare_reference.json; sequential mode: "
                         "compare_reference_<method>_<model>.json there, or the scratch folder with "
                         "--reference-only); the table goes beside it as .txt")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.method in SUCCESSORS and args.edits is None:
        args.edits = 5
    return sequential_main(args) if args.edits is not None else batch_main(args)


def batch_main(args) -> int:
    """Batch mode (rome, memit): run, print and write the comparison (see the module docstring)."""
    from fastedit.methods.templates import memit_templates, rome_templates
    from fastedit.models import get_adapter
    from fastedit.stats.store import SecondMomentStore

    reference_dir = args.reference_dir.resolve()
    args.stats_source = args.stats_source.resolve()
    out = (args.out or DEFAULT_OUT).resolve()
    if args.method == "both":
        methods = [m for m in ("rome", "memit") if reference_shims.has_method(reference_dir, m)]
    else:
        methods = [args.method]
    missing = [m for m in methods if not reference_shims.has_method(reference_dir, m)]
    if not methods or missing:
        raise SystemExit(f"{reference_dir} holds no reference package for {missing or ['rome', 'memit']}")
    workdir, stats_dir = _scratch(args, reference_dir)
    log_path = workdir / "reference.log"

    machine = machine_description()
    torch.manual_seed(0)
    base, tok, label = load_model(args.model)
    adapter = get_adapter(base)
    args.stats_max_len = min(args.stats_max_len, adapter.max_positions(base))
    requests = load_requests(args.requests_file, args.requests)
    ref = reference_shims.import_reference(reference_dir, workdir)

    results = []
    for method in methods:
        hp = resolve_hparams(method, args.hparams, base, adapter, args.stats_samples)
        # Statistics: computed once by fastedit (or found from an earlier run in --workdir), read by both.
        SecondMomentStore(
            base, tok, adapter, hp, stats_dir=stats_dir, source=args.stats_source, max_len=args.stats_max_len,
            progress=False,
        ).ensure(hp.layers)
        with torch.no_grad():
            if method == "rome":
                templates = rome_templates(base, tok, hp.context_template_length_params, seed=args.seed)
            else:
                templates = memit_templates(base, tok, seed=args.seed)
        print(f"[{method}] {len(requests)} request(s) through the reference, then fastedit ...", flush=True)
        r = run_method(method, ref, base, tok, adapter, requests, hp, templates, workdir, stats_dir, args, log_path)
        print(
            f"[{method}] reference {r['reference_seconds']:.2f} s, fastedit {r['fastedit_seconds']:.2f} s, "
            f"max relative update error {r['max_rel_update_error']:.2e}",
            flush=True,
        )
        results.append(r)

    summary = {
        "model": label,
        "dtype": "float32",
        "method": args.method if len(methods) > 1 else methods[0],
        "n_requests": len(requests),
        "requests": [r.to_reference_dict() for r in requests],
        "reference_dir": str(reference_dir),
        "reference_commit": reference_commit(reference_dir),
        "stats": {
            "source": str(args.stats_source),
            "samples": args.stats_samples,
            "max_len": args.stats_max_len,
            "dir": str(stats_dir),
        },
        "template_seed": args.seed,
        "tolerance": args.tolerance,
        "max_rel_update_error": max(r["max_rel_update_error"] for r in results),
        "passed": all(r["passed"] for r in results),
        "reference_log": str(log_path),
        "machine": machine,
        "shims": reference_shims.SHIMS,
        "results": results,
    }
    return write_batch_results(summary, results, out)


def write_batch_results(summary: dict, results: list[dict], out: Path) -> int:
    """Print the table, write the JSON and the table beside it, print the one-line summary."""
    text = table(summary, results)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    out.with_suffix(".txt").write_text(text + "\n")
    last = {
        "method": summary["method"],
        "model": summary["model"],
        "rel_errors": {r["method"]: {n: v["rel_error"] for n, v in r["layers"].items()} for r in results},
        "max_rel_update_error": summary["max_rel_update_error"],
        "reference_seconds": {r["method"]: round(r["reference_seconds"], 3) for r in results},
        "fastedit_seconds": {r["method"]: round(r["fastedit_seconds"], 3) for r in results},
        "speedup": {r["method"]: round(r["speedup"], 3) for r in results},
        "cpu_time_ratio": {r["method"]: round(r["cpu_time_ratio"], 3) for r in results},
        "passed": summary["passed"],
        "out": str(out),
        "machine": summary["machine"],
    }
    print(json.dumps(last))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
