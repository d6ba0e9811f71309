"""MEMIT: a batch of requests spread over several layers.

1. z for every request: the target-value optimisation with δ on the block output of the last edit
   layer L, on the unedited model (all requests of the batch optimised together, each on its own);
2. for each layer l of ``hp.layers`` in order, on the model carrying the updates of the layers
   before it:

   * K (d_ff × n): the keys at l, averaged within each template group and then across the groups
     (0.5 · bare prompt + 0.5 · mean of the prefixed ones);
   * z_current: the block-L output for the bare request prompt at the lookup token;
   * R = (Z − z_current) / (number of layers left);
   * ΔW_l = R adj_kᵀ with adj_k = solve(λC + KKᵀ, K), C the float32 statistics, the solve in float64;
   * W_l += ΔW_l (cast to the weight's dtype) before the next layer.
"""

from __future__ import annotations

import torch

from ..models.adapters import ModelAdapter
from ..profiling import region
from ..requests import EditRequest
from .base import LowRankUpdate, MethodOutput, apply_update, resolve_dtype
from .keys import lookup_index, read_at_positions
from .target import compute_target_values

__all__ = ["memit_updates", "memit_keys_and_current_z"]


def memit_keys_and_current_z(
    model, tok, adapter: ModelAdapter, requests: list[EditRequest], hp, groups: list[list[str]], layer: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(K (d_ff, n) group-averaged keys at ``layer``, z_current (d_model, n) at the last edit layer)
    from one forward pass over every request × template (template ``"{}"`` is the bare prompt)."""
    rewrite = (hp.rewrite_module_tmp or adapter.rewrite_module_tmp).format(layer)
    z_block = (hp.layer_module_tmp or adapter.layer_module_tmp).format(hp.layers[-1])
    flat = [t for g in groups for t in g]
    bare = flat.index("{}")
    texts, pos = [], []
    for req in requests:
        for t in flat:
            filled = t.format(req.prompt)
            texts.append(filled.format(req.subject))
            pos.append(lookup_index(tok, filled, req.subject, hp.fact_token, hp.subject_index_rule))
    ins, outs = read_at_positions(model, tok, texts, pos, inputs=[rewrite], outputs=[z_block], stop_after=z_block)
    n_t = len(flat)
    keys = ins[rewrite].reshape(len(requests), n_t, -1)
    bounds, start = [], 0
    for g in groups:
        bounds.append((start, start + len(g)))
        start += len(g)
    # mean within each group, then across groups, as the reference's compute_ks
    k = torch.stack([keys[:, a:b].mean(1) for a, b in bounds], 1).mean(1)
    z_cur = outs[z_block].reshape(len(requests), n_t, -1)[:, bare]
    return k.T, z_cur.T


def memit_updates(
    model,
    tok,
    adapter: ModelAdapter,
    requests: list[EditRequest],
    hp,
    groups: list[list[str]],
    second_moment,
    precomputed_z: dict[int, torch.Tensor] | None = None,
) -> MethodOutput:
    """MEMIT's updates for a batch, applied to ``model`` layer by layer as they are computed.
    ``second_moment(layer)`` returns C (d_ff, d_ff) float32. ``precomputed_z`` maps a request's index
    in ``requests`` to a z (d_model,) computed earlier (the reference's ``cache_template``)."""
    flat = [t for g in groups for t in g]
    precomputed_z = precomputed_z or {}
    todo = [i for i in range(len(requests)) if i not in precomputed_z]
    dtype = resolve_dtype(hp, torch.float64)
    z_list: list[torch.Tensor | None] = [precomputed_z.get(i) for i in range(len(requests))]
    target = None
    if todo:
        target = compute_target_values(
            model, tok, adapter, [requests[i] for i in todo], flat, hp, hp.layers[-1], delta_site="block",
            nll_from="loss_layer", delta_dtype=torch.float64 if hp.solve_dtype == "float64" else None,
        )
        for j, i in enumerate(todo):
            z_list[i] = target.values[j]
    zs = torch.stack([z.to(dtype) for z in z_list], 1)  # (d_model, n)
    updates, z_errors = [], []
    for i, layer in enumerate(hp.layers):
        with region("keys"):
            k, z_cur = memit_keys_and_current_z(model, tok, adapter, requests, hp, groups, layer)
        with region("solve"):
            k = k.to(dtype)
            resid_all = zs - z_cur.to(dtype)
            z_errors.append(float(resid_all.norm(dim=0).mean()))
            c = second_moment(layer).to(dtype)
            # torch.linalg.solve (LU) as the reference; the Cholesky/Woodbury path is the engine's.
            adj_k = torch.linalg.solve(hp.mom2_update_weight * c + k @ k.T, k)  # (d_ff, n)
            resid = resid_all / (len(hp.layers) - i)  # (d_model, n)
        name = f"{(hp.rewrite_module_tmp or adapter.rewrite_module_tmp).format(layer)}.weight"
        upd = LowRankUpdate(name, layer, adj_k, resid)
        apply_update(model, adapter, upd)
        updates.append(upd)
    info = {"target": [target] if target is not None else [], "z_error": z_errors, "z": zs}
    return MethodOutput(updates, info)
