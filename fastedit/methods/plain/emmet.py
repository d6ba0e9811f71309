"""Plain EMMET (scalable-model-editing/unified-model-editing, ``emmet/emmet_main.py``).

MEMIT's z and keys (with EMMET's ``concat`` subject index and BOS-stripped targets; on a model whose
name contains ``llama-2``, the first two target tokens dropped instead), then per layer, in float64,
the equality-constrained update

    C = mom2_update_weight · E[kkᵀ] + update_norm_lambda · I
    D = Kᵀ C⁻¹ K (+ emmet_lambda · I when the batch holds more than one edit)
    ΔW = R D⁻¹ Kᵀ C⁻¹,  R = (Z − z_current) / (layers left)

with ``torch.inverse`` for C⁻¹ and D⁻¹, and ``torch.linalg.pinv`` when inverting D raises.
"""

from __future__ import annotations

import torch

from .common import add_update, current_z, layer_keys, target_z

__all__ = ["emmet"]

# EMMET's compute_z and repr_tools: prefix and subject tokenised together, a leading BOS/UNK dropped
# from the target.
EMMET_DEFAULTS = {"subject_index_rule": "concat", "strip_target_bos": True, "update_norm_lambda": 0.0}


def emmet(model, tok, requests, hp, groups, second_moment, record=None):
    """EMMET for a batch, applied to ``model``; returns {weight name: ΔW}.

    ``second_moment(layer)`` → the unscaled C = E[kkᵀ]. ``record``: a dict that receives, per weight
    name, {"pseudo_inverse": whether D took the pinv fallback, "keys": K (d_ff, n), "resid": this
    layer's share of R (d_model, n)}.
    """
    hp = {**EMMET_DEFAULTS, **hp}
    if hp.get("target_skip_tokens") is None and "llama-2" in str(model.config._name_or_path).lower():
        hp["target_skip_tokens"] = 2  # EMMET's compute_z: BOS and the lone "▁" before the spaced target
    flat = [t for g in groups for t in g]
    Z = target_z(model, tok, requests, hp, flat)
    deltas = {}
    for i, layer in enumerate(hp["layers"]):
        name = hp["rewrite_module_tmp"].format(layer)
        K = layer_keys(model, tok, requests, hp, groups, layer).double()  # (d_ff, n)
        R = (Z - current_z(model, tok, requests, hp)).double()

        cov = second_moment(layer).double()
        if hp["mom2_update_weight"] != 1:
            cov = cov * hp["mom2_update_weight"]
        if hp["update_norm_lambda"] != 0:
            cov = cov + hp["update_norm_lambda"] * torch.eye(cov.shape[0], dtype=cov.dtype)
        c_inv = torch.inverse(cov)
        D = K.T @ c_inv @ K
        if D.shape[0] > 1:
            D = D + hp["emmet_lambda"] * torch.eye(D.shape[0], dtype=D.dtype)
        try:
            d_inv, pinv = torch.inverse(D), False
        except RuntimeError:  # torch.linalg.LinAlgError: an exactly zero pivot
            d_inv, pinv = torch.linalg.pinv(D), True
        adj = (d_inv @ K.T @ c_inv).T  # (d_ff, n)

        resid = R / (len(hp["layers"]) - i)
        add_update(model, name, (resid @ adj.T).T, deltas)
        if record is not None:
            record[name + ".weight"] = {"pseudo_inverse": pinv, "keys": K, "resid": resid}
    return deltas
