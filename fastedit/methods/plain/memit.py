"""Plain MEMIT (kmeng01/memit)."""

from __future__ import annotations

import torch

from .common import add_update, current_z, layer_keys, target_z

__all__ = ["memit"]


def memit(model, tok, requests, hp, groups, second_moment):
    """MEMIT for a batch, applied to ``model``; returns {weight name: ΔW}."""
    flat = [t for g in groups for t in g]
    Z = target_z(model, tok, requests, hp, flat)
    deltas = {}
    for i, layer in enumerate(hp["layers"]):
        name = hp["rewrite_module_tmp"].format(layer)
        K = layer_keys(model, tok, requests, hp, groups, layer)
        K, R = K.double(), (Z - current_z(model, tok, requests, hp)).double()
        C = second_moment(layer).double()
        adj = torch.linalg.solve(hp["mom2_update_weight"] * C + K @ K.T, K)
        resid = R / (len(hp["layers"]) - i)
        add_update(model, name, (resid @ adj.T).T, deltas)
    return deltas
