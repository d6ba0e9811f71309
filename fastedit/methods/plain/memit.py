"""Plain MEMIT (kmeng01/memit)."""

from __future__ import annotations

import numpy as np
import torch

from .common import module as _module, optimise as _optimise, orient as _orient, reprs as _reprs, subject_index

__all__ = ["memit"]


def memit(model, tok, requests, hp, groups, second_moment):
    """MEMIT for a batch, applied to ``model``; returns {weight name: ΔW}."""
    flat = [t for g in groups for t in g]
    L = hp["layers"][-1]
    zs = []
    for r in requests:
        v_init, delta = _optimise(model, tok, r, hp, L, flat, hp["layer_module_tmp"].format(L), "loss_layer")
        zs.append(v_init + delta)
    Z = torch.stack(zs, 1)
    deltas = {}
    for i, layer in enumerate(hp["layers"]):
        name = hp["rewrite_module_tmp"].format(layer)
        ctx, words = [], []
        for r in requests:
            ctx += [t.format(r["prompt"]) for t in flat]
            words += [r["subject"]] * len(flat)
        idx = [subject_index(tok, c, w, hp["fact_token"], hp.get("subject_index_rule", "additive")) for c, w in zip(ctx, words)]
        ks, _ = _reprs(model, tok, [c.format(w) for c, w in zip(ctx, words)], idx, name)
        sizes = [len(g) for g in groups]
        per_req = []
        for j in range(len(requests)):
            block = ks[j * len(flat) : (j + 1) * len(flat)]
            starts = np.cumsum([0] + sizes)
            per_req.append(torch.stack([block[a:b].mean(0) for a, b in zip(starts[:-1], starts[1:])]).mean(0))
        K = torch.stack(per_req, 1)
        bare = [subject_index(tok, r["prompt"], r["subject"], hp["fact_token"], hp.get("subject_index_rule", "additive")) for r in requests]
        _, cur = _reprs(model, tok, [r["prompt"].format(r["subject"]) for r in requests], bare, hp["layer_module_tmp"].format(L))
        K, R = K.double(), (Z - cur.T).double()
        C = second_moment(layer).double()
        adj = torch.linalg.solve(hp["mom2_update_weight"] * C + K @ K.T, K)
        resid = R / (len(hp["layers"]) - i)
        w = _module(model, name).weight
        upd = _orient((resid @ adj.T).T, w)
        with torch.no_grad():
            w += upd.to(w.dtype)
        deltas[name + ".weight"] = upd
    return deltas
