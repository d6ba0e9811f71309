"""Drop-in replacements for the reference entry points.

Code written against kmeng01/rome and kmeng01/memit (or EasyEdit's copies of them) switches by
changing its imports::

    # from rome import ROMEHyperParams, apply_rome_to_model
    # from memit import MEMITHyperParams, apply_memit_to_model
    from fastedit.compat import ROMEHyperParams, apply_rome_to_model, MEMITHyperParams, apply_memit_to_model

The successors' entry points switch the same way: ``apply_AlphaEdit_to_model`` (jianghoucheng/AlphaEdit:
``(model, cache_c)``, with its ``P`` and ``cache_c`` arguments honoured), ``apply_emmet_to_model``
(scalable-model-editing/unified-model-editing: ``(model, weights_copy, distances)``) and
``apply_encore_to_model`` (knowledge-editing-regularization: ``(model, weights_copy, distances,
time_compute_z, total_inserting_time)``), with the hyperparameter classes of
:func:`fastedit.methods.get_method`.

Same signatures, same return values (``(model, weights_copy)``; ``execute_*`` return the reference's
deltas dictionaries), the same hparams JSON files (``ROMEHyperParams.from_json``) and the same
statistics cache files: ``$FASTEDIT_STATS_DIR`` or, like the references, ``data/stats`` under the
working directory. Missing statistics are computed from ``$FASTEDIT_STATS_SOURCE``: a local text
file, or a dataset name such as ``wikipedia`` (the reference's ``mom2_dataset``), streamed through the
``datasets`` package.

Hyperparameter objects of the reference classes are accepted too (their fields are read), and so are
EasyEdit's classes and YAML files and the extra keyword arguments its editor passes
(``keep_original_weight``, ``train_ds``, ...), which EasyEdit's own ROME and MEMIT accept and do not
use either. As in the references, context templates are sampled once per process and model at the first edit and reused;
:func:`set_context_templates` fixes them instead.
"""

from __future__ import annotations

import dataclasses
import weakref
from copy import deepcopy
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from .engine import EditSession
from .errors import safe_component
from .hparams import HyperParams, MEMITHyperParams, ROMEHyperParams, RROMEHyperParams
from .methods.registry import get_method
from .requests import RequestError

__all__ = [
    "ROMEHyperParams",
    "RROMEHyperParams",
    "MEMITHyperParams",
    "apply_rome_to_model",
    "execute_rome",
    "apply_memit_to_model",
    "execute_memit",
    "set_context_templates",
    "apply_AlphaEdit_to_model",
    "apply_emmet_to_model",
    "apply_encore_to_model",
]

# model → {"rome"/"memit": templates}; model → {(method, hparams): session}. Weak keys: a model that is
# dropped takes its state with it.
_TEMPLATES: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()
_SESSIONS: "weakref.WeakKeyDictionary[Any, dict[tuple, EditSession]]" = weakref.WeakKeyDictionary()


def set_context_templates(model, method: str, templates) -> None:
    """Fix the context templates used for ``model`` by ``method`` and every method with the same kind
    of templates (a flat list for the ROME family, groups for the MEMIT family), as if the reference
    had sampled them."""
    _TEMPLATES.setdefault(model, {})[get_method(method).templates] = templates
    _SESSIONS.pop(model, None)


def _as_hparams(hparams, cls: type[HyperParams]) -> HyperParams:
    if isinstance(hparams, cls):
        return hparams
    if isinstance(hparams, HyperParams):
        return cls.from_dict(hparams.to_dict())
    if isinstance(hparams, dict):
        return cls.from_dict(hparams)
    if dataclasses.is_dataclass(hparams):  # the reference's own hparams class
        return cls.from_dict(dataclasses.asdict(hparams))
    if isinstance(hparams, (str, Path)):
        return cls.from_file(hparams)
    raise TypeError(f"cannot read hyperparameters from {type(hparams).__name__}")


def _session(model, tok, method: str, hp: HyperParams) -> EditSession:
    sessions = _SESSIONS.setdefault(model, {})
    key = (method, hp)
    if key not in sessions:
        family = get_method(method).templates
        templates = _TEMPLATES.get(model, {}).get(family)
        sess = EditSession(model, tok, method, hp, templates=templates)
        sessions[key] = sess
        if templates is None:
            _TEMPLATES.setdefault(model, {})[family] = sess.templates
    return sessions[key]


def _rome_class(hparams) -> type[ROMEHyperParams]:
    return RROMEHyperParams if isinstance(hparams, RROMEHyperParams) else ROMEHyperParams


def execute_rome(model, tok, request: Dict, hparams) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """{weight name: (left vector u (d_ff,), right vector (d_model,))}; the model is unchanged."""
    hp = _as_hparams(hparams, _rome_class(hparams))
    out = _session(model, tok, hp.METHOD, hp).compute([request])
    return {u.weight_name: (u.keys_side[:, 0].detach(), u.values_side[:, 0].detach()) for u in out.updates}


def apply_rome_to_model(
    model, tok, requests: List[Dict], hparams, copy=False, return_orig_weights=False, keep_original_weight=False,
    **kwargs,
) -> Tuple[Any, Dict[str, torch.Tensor]]:
    """Edit ``model`` with each request in turn; returns ``(model, weights_copy)`` where
    ``weights_copy`` holds the original edited weights when ``return_orig_weights``.
    ``keep_original_weight`` and other keywords are EasyEdit's, accepted and unused as there."""
    if copy:
        model = deepcopy(model)
    hp = _as_hparams(hparams, _rome_class(hparams))
    sess = _session(model, tok, hp.METHOD, hp)
    weights_copy = {}
    if return_orig_weights:
        weights_copy = {k: w.detach().clone() for k, w in sess.edited_weights().items()}
    for request in requests:
        sess.apply([request])
    return model, weights_copy


def execute_memit(
    model, tok, requests: List[Dict], hparams, cache_template: Optional[str] = None
) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """{weight name: (adj_k (d_ff, n), resid (d_model, n))} on the CPU; the model is unchanged.
    ``cache_template`` stores and reuses each request's z as the reference does
    (``cache_template.format(z_layer, clamp_norm_factor, case_id)``, an npz with ``v_star``)."""
    hp = _as_hparams(hparams, MEMITHyperParams)
    sess = _session(model, tok, hp.METHOD, hp)
    pre, files = _cached_z(model, requests, hp, cache_template)
    out = sess.compute(requests, precomputed_z=pre)
    _store_z(out.info["z"], files, pre)
    return {u.weight_name: (u.keys_side.detach().cpu(), u.values_side.detach().cpu()) for u in out.updates}


def _cached_z(model, requests, hp, cache_template) -> tuple[dict[int, torch.Tensor], dict[int, Path]]:
    """The z of each request found in ``cache_template``'s files (request index → z) and the file of
    every request; an unreadable file is recomputed, as the reference does."""
    pre, files = {}, {}
    if cache_template is None:
        return pre, files
    for i, r in enumerate(requests):
        # the case id becomes a file name: it must not lead out of the template's folder
        if not isinstance(r, Mapping) or r.get("case_id") is None:
            raise RequestError(f"request #{i}: cache_template needs a case_id in every request")
        case_id = safe_component(r["case_id"], f"request #{i}: case_id")
        f = Path(str(cache_template).format(hp.layers[-1], hp.clamp_norm_factor, case_id))
        files[i] = f
        if f.exists():
            try:
                with np.load(f) as data:
                    pre[i] = torch.from_numpy(data["v_star"]).to(next(model.parameters()).device)
            except Exception:  # noqa: BLE001
                pass
    return pre, files


def _store_z(zs: torch.Tensor, files: dict[int, Path], pre: dict) -> None:
    """Write the z (column i of ``zs`` (d_model, n)) of every request that was not read from its file."""
    for i, f in files.items():
        if i not in pre:
            f.parent.mkdir(parents=True, exist_ok=True)
            np.savez(f, v_star=zs[:, i].detach().float().cpu().numpy())


def apply_memit_to_model(
    model, tok, requests: List[Dict], hparams, copy=False, return_orig_weights=False,
    cache_template: Optional[str] = None, keep_original_weight=False, **kwargs,
) -> Tuple[Any, Dict[str, torch.Tensor]]:
    """Edit ``model`` with the batch ``requests``; returns ``(model, weights_copy)``.
    ``keep_original_weight`` and other keywords are EasyEdit's, accepted and unused as there."""
    if copy:
        model = deepcopy(model)
    hp = _as_hparams(hparams, MEMITHyperParams)
    sess = _session(model, tok, hp.METHOD, hp)
    weights = sess.edited_weights()
    weights_copy = {k: w.detach().clone() for k, w in weights.items()} if return_orig_weights else {}
    if cache_template is None:
        sess.apply(requests)
        return model, weights_copy
    deltas = execute_memit(model, tok, requests, hp, cache_template=cache_template)
    with torch.no_grad():
        for name, (adj_k, resid) in deltas.items():
            w = weights[name]
            upd = sess.adapter.delta_to_weight(adj_k.to(w.device) @ resid.to(w.device).T, w)
            w.add_(upd.to(w.dtype))
    return model, weights_copy


# ---------------------------------------------------------------------------------------- successors
def _edit_family(method: str, model, tok, requests, hparams, copy=False, return_orig_weights=False,
                 cache_template=None):
    """One batch through ``method``'s session on ``model``: (model, weights_copy, session, result,
    weights before the edit)."""
    if copy:
        model = deepcopy(model)
    hp = _as_hparams(hparams, get_method(method).hparams_class)
    sess = _session(model, tok, hp.METHOD, hp)
    before = {k: w.detach().clone() for k, w in sess.edited_weights().items()}
    weights_copy = {k: w.clone() for k, w in before.items()} if return_orig_weights else {}
    pre, files = _cached_z(model, requests, hp, cache_template)
    result = sess.apply(requests, precomputed_z=pre)
    _store_z(result.info["z"], files, pre)
    return model, weights_copy, sess, result, before


def _distances(sess, result, before) -> dict[str, dict]:
    """Per edited layer (keyed by its number, as the references key it), the norms the references
    report that fastedit has: ‖ΔW‖, ‖W‖ before and after, and the update's own norms
    (``inside_norms``). The objective distances need the preserved keys, which fastedit's statistics
    do not keep: None, as the references give them with their objective computation off."""
    out, weights = {}, sess.edited_weights()
    zs = result.info["z"]
    for u in result.updates:
        w = weights[u.weight_name]
        delta = (w.detach().double() - before[u.weight_name].double()).norm()
        out[str(u.layer)] = {
            "preservation_distance": None, "new_edit_distance": None, "old_edit_distance": None,
            "delta_norm": float(delta), "new_weights_norm": float(w.detach().double().norm()),
            "original_weights_norm": float(before[u.weight_name].double().norm()),
            "inside_norms": {
                "zs_norm": float(zs.norm(dim=0).mean()),
                "adj_norm": float(u.keys_side.norm(dim=0).mean()),
                "residual_norm": float(u.values_side.norm(dim=0).mean()),
                "inside_update_norm": float((u.keys_side @ u.values_side.T).norm()),
                **({"pseudo_inverse": result.info["pseudo_inverse"].get(u.layer)} if "pseudo_inverse" in result.info else {}),
            },
        }
    return out


def apply_emmet_to_model(model, tok, requests: List[Dict], hparams, copy=False, return_orig_weights=False,
                         cache_template: Optional[str] = None, **kwargs):
    """scalable-model-editing/unified-model-editing's entry point: edit ``model`` with the batch
    ``requests`` by EMMET; returns ``(model, weights_copy, distances)`` (see :func:`_distances`)."""
    model, weights_copy, sess, result, before = _edit_family(
        "emmet", model, tok, requests, hparams, copy, return_orig_weights, cache_template)
    return model, weights_copy, _distances(sess, result, before)


def apply_encore_to_model(model, tok, requests: List[Dict], hparams, copy=False, return_orig_weights=False,
                          cache_template: Optional[str] = None, **kwargs):
    """scalable-model-editing/knowledge-editing-regularization's entry point: edit ``model`` with the
    batch ``requests`` by ENCORE, the earlier calls' keys kept in the edit history (its
    ``sequential`` mode, which is how fastedit always runs it); returns ``(model, weights_copy,
    distances, time_compute_z, total_inserting_time)`` with ``distances["z_norms"]`` per case id."""
    model, weights_copy, sess, result, before = _edit_family(
        "encore", model, tok, requests, hparams, copy, return_orig_weights, cache_template)
    distances = _distances(sess, result, before)
    zs = result.info["z"]
    distances["z_norms"] = {r.get("case_id", i) if isinstance(r, Mapping) else i: {"final_norm": float(zs[:, i].norm())}
                            for i, r in enumerate(requests)}
    t = result.times
    return model, weights_copy, distances, sum(v for k, v in t.items() if k.startswith("target/")), t["total"]


def apply_AlphaEdit_to_model(model, tok, requests: List[Dict], hparams, cache_template: Optional[str] = None,
                             cache_c=None, P=None):
    """jianghoucheng/AlphaEdit's entry point: edit ``model`` with the batch ``requests``; returns
    ``(model, cache_c)``. ``P`` (n_layers, d_ff, d_ff): the null-space projections (default: computed
    from the statistics, as its ``get_project``); ``cache_c`` (n_layers, d_ff, d_ff): the sum of the
    earlier batches' KKᵀ (default: the session's own edit history). The returned ``cache_c`` adds
    this batch's keys, read again on the edited model, as the reference does."""
    hp = _as_hparams(hparams, get_method("alphaedit").hparams_class)
    sess = _session(model, tok, hp.METHOD, hp)
    sess.editor.use_reference_state(P, cache_c)
    result = _edit_family("alphaedit", model, tok, requests, hp, cache_template=cache_template)[3]
    entry = sess.journal.entry(result.edit_id)
    if cache_c is None:
        grams = [sess.edit_history.gram(layer) for layer in hp.layers]
        return model, torch.stack([g.float() for g in grams])
    new = cache_c.clone()
    for i, layer in enumerate(hp.layers):
        k = entry.history[layer].to(new.dtype)
        new[i] += k @ k.T
    return model, new
