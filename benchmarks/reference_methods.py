"""How to drive each method's public reference code for a sequential run; used by
``benchmarks/compare_reference.py --edits N`` (see its docstring for the checkouts).

One :class:`ReferenceMethod` per method says which reference module to import, which hyperparameter
class and JSON folder it has, what module-level state it keeps between calls (emptied before a run),
what a sequential run threads from one call to the next (AlphaEdit's ``P`` and ``cache_c``, ENCORE's
``SEQ_CACHE``), and how one call edits the model. Nothing here copies reference code: the reference
functions are imported from the checkout and called as its own experiment scripts call them.

The reference's hyperparameters always come from its own JSON layout: :func:`reference_hparams_data`
starts from the checkout's file for the model family (``hparams/<folder>/gpt2-xl.json`` or the Llama
file), writes the settings the methods share (layers, optimisation, module names, statistics) from
fastedit's MEMIT preset for the model (or the small settings of a random model) over it, and keeps
the method's own keys (``nullspace_threshold``, ``L2``, ``emmet_lambda``, ``prob_cutoff``, ...) as the
repository has them. Both sides then read the one file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

log = logging.getLogger("compare_reference")

__all__ = ["ReferenceMethod", "REFERENCE_METHODS", "reference_hparams_data", "nullspace_projection"]


@dataclass
class ReferenceMethod:
    """One method's entry points in its reference checkout.

    ``module``: the module holding the apply function (imported with the checkout on ``sys.path``);
    ``hparams_class`` / ``apply``: names in it; ``hparams_folder``: ``hparams/<folder>/`` in the
    checkout; ``family_files``: the checkout's JSON per ``model.config.model_type`` (first that
    exists); ``caches``: module-level dicts/values the reference fills as it runs (emptied before a
    run, so each run starts as a fresh process would); ``marker``: a file whose presence identifies
    the checkout."""

    name: str
    module: str
    hparams_class: str
    apply: str
    hparams_folder: str
    marker: str
    family_files: dict[str, tuple[str, ...]]
    caches: tuple[str, ...] = ("COV_CACHE",)
    begin: Callable[..., dict] = field(default=lambda mod, model, tok, hp, adapter: {})
    edit: Callable[..., dict] = field(default=None)
    history: Callable[..., dict] | None = None

    def reset(self, mod) -> None:
        """Empties the reference's module-level caches (templates are set by the caller)."""
        mod.CONTEXT_TEMPLATES_CACHE = None
        for name in self.caches:
            getattr(mod, name).clear()

    def json_file(self, reference_dir: Path, model_type: str) -> Path:
        folder = Path(reference_dir) / "hparams" / self.hparams_folder
        for name in self.family_files.get(model_type, self.family_files["llama"]):
            if (folder / name).is_file():
                return folder / name
        raise SystemExit(f"{folder} holds none of {self.family_files.get(model_type)} for a {model_type} model")


# ---------------------------------------------------------------------------- per-method calls
def nullspace_projection(cov: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    """AlphaEdit's projection onto the null space of the preserved keys, as its experiment script
    builds ``P`` before the first edit: U_s U_sᵀ over the singular vectors of C whose singular value
    is below ``threshold``. ``cov``: (d_ff, d_ff) float32 → ((d_ff, d_ff) float32, info), info: the
    rank of P and the singular value closest to the threshold relative to it (a margin near 0 means
    another solver's rounding may move one direction across the threshold and change P)."""
    U, S, _ = torch.linalg.svd(cov, full_matrices=False)
    keep = U[:, S < threshold]
    margin = float(((S.double() - threshold).abs() / threshold).min())
    return keep @ keep.T, {"rank": keep.shape[1], "threshold_margin": margin}


def _alphaedit_begin(mod, model, tok, hp, adapter) -> dict:
    """P from the reference's own ``get_cov`` (its statistics loader, its folder naming) and an
    empty ``cache_c``, both (n_layers, d_ff, d_ff) on the CPU, as its experiment script sets them up."""
    d_ff = adapter.key_size(model, hp.layers[0])
    P = torch.zeros((len(hp.layers), d_ff, d_ff))
    null_space = {}
    for i, layer in enumerate(hp.layers):
        cov = mod.get_cov(
            model, tok, hp.rewrite_module_tmp.format(layer), hp.mom2_dataset, hp.mom2_n_samples, hp.mom2_dtype,
        ).cpu()
        P[i], null_space[str(layer)] = nullspace_projection(cov, hp.nullspace_threshold)
    return {"P": P, "cache_c": torch.zeros_like(P), "null_space": null_space, "d_ff": d_ff}


def _alphaedit_edit(mod, model, tok, requests, hp, state) -> dict:
    _, state["cache_c"] = mod.apply_AlphaEdit_to_model(
        model, tok, requests, hp, cache_c=state["cache_c"], P=state["P"]
    )
    return {}


def _alphaedit_history(mod, state, hp) -> dict:
    return {layer: state["cache_c"][i].double() for i, layer in enumerate(hp.layers)}


def _emmet_edit(mod, model, tok, requests, hp, state) -> dict:
    _, _, distances = mod.apply_emmet_to_model(model, tok, requests, hp)
    return {"delta_norms": {k: v["delta_norm"] for k, v in distances.items()}}


def _encore_begin(mod, model, tok, hp, adapter) -> dict:
    # Its experiment script switches on the sequential memory by writing `sequential` into the
    # hparams' __dict__ (through the params dict it saves); the dataclass has no such field.
    hp.sequential = True
    return {}


def _encore_edit(mod, model, tok, requests, hp, state) -> dict:
    _, _, distances, _, _ = mod.apply_encore_to_model(model, tok, requests, hp)
    z = distances.pop("z_norms", {})
    return {
        "delta_norms": {k: v["delta_norm"] for k, v in distances.items()},
        # the early stop shows in the size of δ: ‖δ‖, ‖z_init‖, ‖z‖ per request
        "z_norms": {str(k): v for k, v in z.items()},
    }


def _encore_history(mod, state, hp) -> dict:
    return {layer: mod.SEQ_CACHE[layer].double() for layer in hp.layers if layer in mod.SEQ_CACHE}


def _rome_begin(mod, model, tok, hp, adapter) -> dict:
    # ROME keeps C⁻¹ per layer in its compute_u module (kept between edits, as in one process)
    import sys

    sys.modules[mod.__name__.rsplit(".", 1)[0] + ".compute_u"].inv_mom2_cache.clear()
    return {}


def _rome_edit(mod, model, tok, requests, hp, state) -> dict:
    mod.apply_rome_to_model(model, tok, requests, hp)
    return {}


def _memit_edit(mod, model, tok, requests, hp, state) -> dict:
    mod.apply_memit_to_model(model, tok, requests, hp)
    return {}


_LLAMA = ("Llama3-8B.json", "llama3-8b.json", "llama2-7b.json")
REFERENCE_METHODS: dict[str, ReferenceMethod] = {
    m.name: m
    for m in (
        ReferenceMethod(
            "alphaedit", "AlphaEdit.AlphaEdit_main", "AlphaEditHyperParams", "apply_AlphaEdit_to_model", "AlphaEdit",
            "AlphaEdit/AlphaEdit_main.py", {"gpt2": ("gpt2-xl.json",), "llama": _LLAMA},
            begin=_alphaedit_begin, edit=_alphaedit_edit, history=_alphaedit_history,
        ),
        ReferenceMethod(
            "emmet", "emmet.emmet_main", "EMMETHyperParams", "apply_emmet_to_model", "EMMET",
            "emmet/emmet_main.py", {"gpt2": ("gpt2-xl.json",), "llama": _LLAMA}, edit=_emmet_edit,
        ),
        ReferenceMethod(
            "encore", "encore.encore_main", "ENCOREHyperParams", "apply_encore_to_model", "ENCORE",
            "encore/encore_main.py", {"gpt2": ("gpt2-xl.json",), "llama": _LLAMA},
            caches=("COV_CACHE", "SEQ_CACHE"), begin=_encore_begin, edit=_encore_edit, history=_encore_history,
        ),
        ReferenceMethod(
            "rome", "rome.rome_main", "ROMEHyperParams", "apply_rome_to_model", "ROME",
            # fastedit's ROME settings replace every key of the checkout's GPT-2 XL file
            "rome/rome_main.py", {"gpt2": ("gpt2-xl.json",), "llama": ("gpt2-xl.json",)}, caches=(),
            begin=_rome_begin, edit=_rome_edit,
        ),
        ReferenceMethod(
            "memit", "memit.memit_main", "MEMITHyperParams", "apply_memit_to_model", "MEMIT",
            # kmeng01's checkout has no Llama file; fastedit's MEMIT settings replace every key anyway
            "memit/memit_main.py", {"gpt2": ("gpt2-xl.json",), "llama": _LLAMA + ("gpt2-xl.json",)}, edit=_memit_edit,
        ),
    )
}


# ---------------------------------------------------------------------------- hyperparameters
def reference_hparams_data(method: ReferenceMethod, hp_class, reference_dir: Path, model, shared: dict,
                           hparams_file: Path | None) -> tuple[dict, dict]:
    """(the reference's hyperparameters as its JSON holds them, provenance). ``hp_class``: the
    reference's dataclass; ``shared``: fastedit's MEMIT settings for the model (every module name
    filled, ``mom2_n_samples`` already the run's; ROME's own settings for ROME); ``hparams_file``: a file in the reference layout to
    use as it is instead (only ``mom2_n_samples`` replaced)."""
    names = [f.name for f in dataclasses.fields(hp_class)]
    if hparams_file is not None:
        data = json.loads(Path(hparams_file).read_text())
        data["mom2_n_samples"] = shared["mom2_n_samples"]
        source = {"file": str(hparams_file), "replaced": ["mom2_n_samples"]}
    else:
        path = method.json_file(reference_dir, model.config.model_type)
        data = json.loads(path.read_text())
        replaced = sorted(k for k in names if k in shared and data.get(k) != shared[k])
        data.update({k: shared[k] for k in names if k in shared})
        if "model_name" in names:
            data["model_name"] = str(model.config._name_or_path)
            replaced.append("model_name")
        source = {"file": str(path), "replaced_from_fastedit_memit_settings": replaced}
    missing = [k for k in names if k not in data]
    unknown = [k for k in data if k not in names]
    if missing or unknown:
        raise SystemExit(f"{method.name}: reference hyperparameters: missing {missing}, unknown {unknown}")
    data["layers"] = list(data["layers"])
    return data, source
