"""Plain AlphaEdit (jianghoucheng/AlphaEdit): MEMIT's z and keys, the update projected onto the
null space of the preserved keys' second moment, and the earlier batches' keys kept as a running sum."""

from __future__ import annotations

import numpy as np
import torch

from .common import module as _module, optimise as _optimise, orient as _orient, reprs as _reprs, subject_index

__all__ = ["alphaedit", "null_space_projection"]


def null_space_projection(c: torch.Tensor, threshold: float) -> torch.Tensor:
    """P = U_r U_rᵀ (d_ff, d_ff) from the SVD of C = E[kkᵀ], U_r the singular vectors whose singular
    value is below ``threshold`` (AlphaEdit's ``get_project``), in C's dtype."""
    u, s, _ = torch.linalg.svd(c, full_matrices=False)
    small = (s < threshold).nonzero(as_tuple=True)[0]
    return u[:, small] @ u[:, small].T


def _keys(model, tok, requests, hp, groups, layer):
    """compute_ks: K (d_ff, n), each request's key averaged within each template group, then across."""
    flat = [t for g in groups for t in g]
    rule = hp.get("subject_index_rule", "concat")
    ctx = [t.format(r["prompt"]) for r in requests for t in flat]
    words = [r["subject"] for r in requests for _ in flat]
    idx = [subject_index(tok, c, w, hp["fact_token"], rule) for c, w in zip(ctx, words)]
    ks, _ = _reprs(model, tok, [c.format(w) for c, w in zip(ctx, words)], idx, hp["rewrite_module_tmp"].format(layer))
    starts = np.cumsum([0] + [len(g) for g in groups])
    per_req = []
    for j in range(len(requests)):
        block = ks[j * len(flat) : (j + 1) * len(flat)]
        per_req.append(torch.stack([block[a:b].mean(0) for a, b in zip(starts[:-1], starts[1:])]).mean(0))
    return torch.stack(per_req, 1)


def alphaedit(model, tok, requests, hp, groups, projections, cache_c):
    """AlphaEdit for a batch, applied to ``model``; returns {weight name: ΔW}.

    ``projections[layer]``: P (d_ff, d_ff). ``cache_c[layer]``: Σ K_p K_pᵀ (d_ff, d_ff) of the earlier
    batches, a zero matrix before the first; this batch's keys, recomputed at every layer on the
    edited model once all its layers are updated, are added to it in place (as the reference
    returns its ``cache_c``). Everything runs in the model's dtype, as the reference does.
    """
    L = hp["layers"][-1]
    rule = hp.get("subject_index_rule", "concat")
    hp = {**hp, "subject_index_rule": rule, "strip_target_bos": hp.get("strip_target_bos", True)}
    flat = [t for g in groups for t in g]
    zs = []
    for r in requests:
        v_init, delta = _optimise(model, tok, r, hp, L, flat, hp["layer_module_tmp"].format(L), "loss_layer")
        zs.append(v_init + delta)
    Z = torch.stack(zs, 1)
    deltas = {}
    for i, layer in enumerate(hp["layers"]):
        name = hp["rewrite_module_tmp"].format(layer)
        K = _keys(model, tok, requests, hp, groups, layer)
        bare = [subject_index(tok, r["prompt"], r["subject"], hp["fact_token"], rule) for r in requests]
        _, cur = _reprs(model, tok, [r["prompt"].format(r["subject"]) for r in requests], bare, hp["layer_module_tmp"].format(L))
        resid = (Z - cur.T) / (len(hp["layers"]) - i)
        P, Cp = projections[layer].to(K.dtype), cache_c[layer].to(K.dtype)
        eye = torch.eye(K.shape[0], dtype=K.dtype, device=K.device)
        upd = torch.linalg.solve(P @ (K @ K.T + Cp) + hp["L2"] * eye, P @ K @ resid.T)  # (d_ff, d_model)
        w = _module(model, name).weight
        upd = _orient(upd, w)
        with torch.no_grad():
            w += upd.to(w.dtype)
        deltas[name + ".weight"] = upd
    for layer in hp["layers"]:
        K = _keys(model, tok, requests, hp, groups, layer)
        cache_c[layer] += (K @ K.T).to(cache_c[layer].dtype)
    return deltas
