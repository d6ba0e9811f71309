"""Sequential comparison with a method's reference code, edit by edit: the engine of
``benchmarks/compare_reference.py --edits N`` and of its successor methods (alphaedit, emmet, encore).

Both sides edit their own deep copy of the float32 model ``N`` times in a row (``B`` requests per
edit), from one hyperparameter file in the reference's layout, one set of statistics and one set of
templates. After each edit the change of every edited weight, ΔW_e = W_after_e − W_before_e, is
taken on each side; the report gives ‖ΔW_e,fastedit − ΔW_e,ref‖ / ‖ΔW_e,ref‖ per weight and edit,
the per-edit wall and CPU times, and where the method keeps an edit history (AlphaEdit's
``cache_c``, ENCORE's ``SEQ_CACHE``) the relative difference of the two sides' history Gram
matrices after the last edit.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import json
import logging
from pathlib import Path

import torch

import reference_shims
from reference_methods import REFERENCE_METHODS, ReferenceMethod, reference_hparams_data

log = logging.getLogger("compare_reference")

__all__ = [
    "SequentialSetup", "prepare", "run_reference", "run_fastedit", "edit_records", "history_errors", "save_deltas",
    "check_fastedit_method",
]


@dataclasses.dataclass
class SequentialSetup:
    """What both sides share: the reference's imported modules, the hyperparameter file (reference
    layout) and its data, the batches of requests, the templates, the scratch folder."""

    method: ReferenceMethod
    ref: reference_shims.ReferenceModules
    hp_path: Path
    hp_data: dict
    hp_source: dict
    batches: list
    templates: list
    workdir: Path
    log_path: Path


def check_fastedit_method(method: str) -> None:
    """Exit with a clear message when fastedit has no method ``method`` (before any work is done)."""
    from fastedit.hparams import HyperParamsError, hparams_class

    try:
        hparams_class(method)
        # the method registry, where the checkout has it
        importlib.import_module("fastedit.methods.registry").get_method(method)
    except ModuleNotFoundError as e:
        if e.name != "fastedit.methods.registry":
            raise
    except (HyperParamsError, KeyError, ValueError, LookupError) as e:
        raise SystemExit(
            f"fastedit has no method {method!r} registered ({e}); the comparison needs it on the fastedit "
            f"side. Run with --reference-only to run the reference side alone."
        ) from None


def prepare(method: str, reference_dir: Path, base, tok, adapter, requests, args, workdir, shared_hp) -> SequentialSetup:
    """Imports the reference, writes its hyperparameter file (see
    :func:`reference_methods.reference_hparams_data`) and samples the templates (seeded, in the
    method's layout: ROME's flat list, MEMIT's groups, which every successor uses)."""
    from fastedit.methods.registry import get_method

    rm = REFERENCE_METHODS[method]
    if not (reference_dir / rm.marker).is_file():
        raise SystemExit(f"{reference_dir}/{rm.marker} not found: not a checkout with the {method} reference")
    ref = reference_shims.import_method(reference_dir, workdir, rm.module)
    hp_file = args.hparams if method not in ("memit", "rome") and args.hparams else None
    data, source = reference_hparams_data(
        rm, getattr(ref.main, rm.hparams_class), reference_dir, base, shared_hp.to_dict(), hp_file
    )
    hp_path = workdir / f"hparams_{method}.json"
    hp_path.write_text(json.dumps(data, indent=2) + "\n")
    with torch.no_grad():
        templates = get_method(method).sample_templates(base, tok, shared_hp, seed=args.seed)
    b = args.batch_size
    batches = [requests[i : i + b] for i in range(0, len(requests), b)]
    return SequentialSetup(rm, ref, hp_path, data, source, batches, templates, workdir, workdir / "reference.log")


def _weights(model, names):
    return {n: model.get_parameter(n).detach().clone() for n in names}


def _step(model, names, before, timed, info=None) -> dict:
    after = _weights(model, names)
    out = {"delta": {n: after[n] - before[n] for n in names}, "timed": timed, "info": info or {}}
    return out, after


def run_reference(s: SequentialSetup, base, tok, adapter, names, timer) -> dict:
    """The reference's sequential run on a fresh copy of ``base``: per-edit deltas and times, the
    setup time (AlphaEdit: P from the statistics), the history it kept, the edited model."""
    model = copy.deepcopy(base)
    blocks = [model.get_submodule(s.hp_data["layer_module_tmp"].format(i)) for i in range(adapter.num_layers(model))]
    mod, rm = s.ref.main, s.method
    hp = getattr(mod, rm.hparams_class).from_json(str(s.hp_path))
    rm.reset(mod)
    mod.CONTEXT_TEMPLATES_CACHE = copy.deepcopy(s.templates)
    with open(s.log_path, "a") as f:
        f.write(f"\n===== reference {rm.name}: {len(s.batches)} edit(s) =====\n")
    edits = []
    start = s.log_path.stat().st_size  # the header above created it
    with reference_shims.reference_shims(s.ref, model, blocks, s.workdir, s.log_path):
        with timer() as setup:
            state = rm.begin(mod, model, tok, hp, adapter)
        before = _weights(model, names)
        for e, batch in enumerate(s.batches):
            print(f"{_EDIT_MARK}{e}", flush=True)  # into the reference's log: steps per edit are counted there
            with timer() as timed:
                info = rm.edit(mod, model, tok, [r.to_reference_dict() for r in batch], hp, state)
            step, before = _step(model, names, before, timed, info)
            edits.append(step)
    for step, n in zip(edits, _optimisation_steps(s.log_path, start)):
        step["info"]["target_optimisation_steps"] = n
    history = rm.history(mod, state, hp) if rm.history else None
    begin_info = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    return {"model": model, "edits": edits, "setup": setup, "history": history, "begin": begin_info}


_EDIT_MARK = "===== compare_reference: edit "


def _optimisation_steps(log_path: Path, start: int) -> list[int]:
    """Per edit, how many target-optimisation steps the reference took (its compute_z prints one
    ``loss ...`` line per step), read from its log after byte ``start``: where a method stops early
    (ENCORE's ``prob_cutoff``) this shows where it stopped."""
    with open(log_path, "rb") as f:
        f.seek(start)
        text = f.read().decode("utf-8", "replace")
    parts = text.split(_EDIT_MARK)[1:]
    return [sum(1 for line in part.splitlines() if line.startswith("loss ")) for part in parts]


def run_fastedit(s: SequentialSetup, base, tok, names, stats_dir, args, timer) -> dict:
    """fastedit's sequential run: ``EditSession(model, tok, method, load_hparams(method, file),
    templates=..., mode=args.mode)`` and one ``apply(batch)`` per edit."""
    from fastedit.engine import EditSession
    from fastedit.hparams import load_hparams

    model = copy.deepcopy(base)
    hp = load_hparams(s.method.name, s.hp_path)
    with timer() as setup:
        session = EditSession(
            model, tok, s.method.name, hp, templates=s.templates, stats_dir=stats_dir, mode=getattr(args, "mode", "exact"),
            stats_source=args.stats_source, stats_max_len=args.stats_max_len, progress=False,
        )
        session.stats.ensure(list(hp.layers))
    before = _weights(model, names)
    edits = []
    for batch in s.batches:
        with timer() as timed:
            session.apply(batch)
        step, before = _step(model, names, before, timed)
        edits.append(step)
    history = None
    # the session's edit history (Σ K Kᵀ per layer over the active edits), under either name
    kept = getattr(session, "edit_history", None) or getattr(session, "history", None)
    if s.method.history is not None and hasattr(kept, "gram"):
        history = {layer: kept.gram(layer) for layer in hp.layers}
    stats_files = {str(k): str(v) for k, v in session.stats.loaded_from.items()}
    return {"model": model, "edits": edits, "setup": setup, "history": history, "stats_files": stats_files,
            "hparams": session.hp.to_dict()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    nb = b.norm()
    return float((a - b).norm() / nb) if nb > 0 else (0.0 if a.norm() == 0 else float("inf"))


def edit_records(ref: dict, ours: dict | None, names, layers) -> list[dict]:
    """Per edit: per weight the norms of both ΔW and their relative error; both sides' times."""
    out = []
    for e, r in enumerate(ref["edits"]):
        o = ours["edits"][e] if ours else None
        weights = {}
        for layer, n in zip(layers, names):
            d = r["delta"][n]
            w = {"layer": layer, "ref_update_norm": float(d.double().norm()), "ref_update_max_abs": float(d.abs().max()),
                 "ref_update_sha256": hashlib.sha256(d.float().contiguous().numpy().tobytes()).hexdigest()}
            if o is not None:
                w["fastedit_update_norm"] = float(o["delta"][n].double().norm())
                w["rel_error"] = _rel(o["delta"][n], r["delta"][n])
            weights[n] = w
        rec = {"edit": e, "weights": weights, "reference_s": r["timed"].wall, "reference_cpu_s": r["timed"].cpu,
               "reference_info": r["info"]}
        if o is not None:
            rec.update(fastedit_s=o["timed"].wall, fastedit_cpu_s=o["timed"].cpu,
                       max_rel_error=max(w["rel_error"] for w in weights.values()))
        out.append(rec)
    return out


def history_errors(ref: dict, ours: dict | None) -> dict | None:
    """Relative difference of the two sides' history Gram matrices per layer, where both keep one."""
    if not ref.get("history") or not ours or not ours.get("history"):
        return None
    return {
        str(layer): (_rel(ours["history"][layer], g) if ours["history"].get(layer) is not None else None)
        for layer, g in ref["history"].items()
    }


def save_deltas(path: Path, ref: dict, names, meta: dict) -> None:
    """The reference's per-edit ΔW (float32, CPU) with what produced them, for later comparisons."""
    torch.save({"meta": meta, "names": list(names),
                "edits": [{n: r["delta"][n].float().cpu() for n in names} for r in ref["edits"]]}, path)
