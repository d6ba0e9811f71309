"""Plain ENCORE (scalable-model-editing/knowledge-editing-regularization, encore/encore_main.py)."""

from __future__ import annotations

import torch

from .common import add_update, current_z, layer_keys, target_z

__all__ = ["encore"]


def encore(model, tok, requests, hp, groups, second_moment, seq_cache, history_dtype=None):
    """ENCORE for a batch, applied to ``model``; returns {weight name: ΔW}.

    MEMIT with two changes: z stops early by ``prob_cutoff`` (see ``optimise``), and each layer
    solves (λ_p C + λ_n I + Σ_prev KKᵀ + KKᵀ) X = K in float64. ``seq_cache`` stands for the
    reference's module-level ``SEQ_CACHE``: layer → Σ KKᵀ of the earlier calls' keys (float64),
    read when ``hp["sequential"]`` and ``hp["add_prev_edits"]``, and always added to afterwards; with
    ``history_dtype`` the keys are rounded to it first (the reference keeps them as computed).
    Subject index by the concat rule and BOS-stripped targets, as ENCORE's code does.
    """
    hp = {**hp, "subject_index_rule": "concat", "strip_target_bos": True}
    flat = [t for g in groups for t in g]
    Z = target_z(model, tok, requests, hp, flat, prob_cutoff=hp["prob_cutoff"])
    deltas = {}
    for i, layer in enumerate(hp["layers"]):
        name = hp["rewrite_module_tmp"].format(layer)
        K = layer_keys(model, tok, requests, hp, groups, layer)
        K, R = K.double(), (Z - current_z(model, tok, requests, hp)).double()
        cov = second_moment(layer).double() * hp["mom2_update_weight"]
        cov = cov + hp["update_norm_lambda"] * torch.eye(cov.shape[0], dtype=cov.dtype)
        if layer in seq_cache and hp["sequential"] and hp["add_prev_edits"]:
            cov = cov + seq_cache[layer]
        kept = K if history_dtype is None else K.to(history_dtype).double()
        seq_cache[layer] = seq_cache.get(layer, 0) + kept @ kept.T  # this call's keys, unscaled, for the next
        adj = torch.linalg.solve(cov + K @ K.T, K)
        resid = R / (len(hp["layers"]) - i)
        add_update(model, name, (resid @ adj.T).T, deltas)
    return deltas
