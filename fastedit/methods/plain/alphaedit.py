"""Plain AlphaEdit (jianghoucheng/AlphaEdit): MEMIT's z and keys, the update projected onto the
null space of the preserved keys' second moment, and the earlier batches' keys kept as a running sum."""

from __future__ import annotations

import torch

from .common import add_update, current_z, layer_keys, target_z

__all__ = ["alphaedit", "null_space_projection"]


def null_space_projection(c: torch.Tensor, threshold: float) -> torch.Tensor:
    """P = U_r U_rᵀ (d_ff, d_ff) from the SVD of C = E[kkᵀ], U_r the singular vectors whose singular
    value is below ``threshold`` (AlphaEdit's ``get_project``), in C's dtype."""
    u, s, _ = torch.linalg.svd(c, full_matrices=False)
    small = (s < threshold).nonzero(as_tuple=True)[0]
    return u[:, small] @ u[:, small].T


def alphaedit(model, tok, requests, hp, groups, projections, cache_c):
    """AlphaEdit for a batch, applied to ``model``; returns {weight name: ΔW}.

    ``projections[layer]``: P (d_ff, d_ff). ``cache_c[layer]``: Σ K_p K_pᵀ (d_ff, d_ff) of the earlier
    batches, a zero matrix before the first; this batch's keys, recomputed at every layer on the
    edited model once all its layers are updated, are added to it in place (as the reference
    returns its ``cache_c``). Everything runs in the model's dtype, as the reference does.
    """
    rule = hp.get("subject_index_rule", "concat")
    hp = {**hp, "subject_index_rule": rule, "strip_target_bos": hp.get("strip_target_bos", True)}
    flat = [t for g in groups for t in g]
    Z = target_z(model, tok, requests, hp, flat)
    deltas = {}
    for i, layer in enumerate(hp["layers"]):
        name = hp["rewrite_module_tmp"].format(layer)
        K = layer_keys(model, tok, requests, hp, groups, layer)
        resid = (Z - current_z(model, tok, requests, hp)) / (len(hp["layers"]) - i)
        P, Cp = projections[layer].to(K.dtype), cache_c[layer].to(K.dtype)
        eye = torch.eye(K.shape[0], dtype=K.dtype, device=K.device)
        upd = torch.linalg.solve(P @ (K @ K.T + Cp) + hp["L2"] * eye, P @ K @ resid.T)  # (d_ff, d_model)
        add_update(model, name, upd, deltas)
    for layer in hp["layers"]:
        K = layer_keys(model, tok, requests, hp, groups, layer)
        cache_c[layer] += (K @ K.T).to(cache_c[layer].dtype)
    return deltas
