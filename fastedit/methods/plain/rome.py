"""Plain ROME and r-ROME (kmeng01/rome, and the r-ROME key variants)."""

from __future__ import annotations

import torch

from .common import add_update, optimise as _optimise, reprs as _reprs, subject_index

__all__ = ["rome"]


def rome(model, tok, request, hp, templates, second_moment, variant="rome", u_from_average=True):
    """ROME for one request, applied to ``model``; returns {weight name: ΔW}.

    ``second_moment(layer)`` → C. ``variant``: "rome", "random_prefix" (r-ROME) or "prompt";
    ``u_from_average``: u from the template-averaged key (ROME, and r-ROME's default) or the bare key.
    """
    deltas = {}
    for layer in sorted(hp["layers"]):
        name = hp["rewrite_module_tmp"].format(layer)
        ctx = [t.format(request["prompt"]) for t in templates]
        idx = [subject_index(tok, c, request["subject"], hp["fact_token"], hp.get("subject_index_rule", "additive")) for c in ctx]
        ks, _ = _reprs(model, tok, [c.format(request["subject"]) for c in ctx], idx, name)
        k_avg = ks.mean(0)
        u = k_avg if u_from_average else ks[0]
        if hp["mom2_adjustment"]:
            c = second_moment(layer)
            c = c.double() if u.dtype == torch.float64 else c.float()
            u = torch.inverse(c) @ u
        u = u / u.norm()
        v_init, delta = _optimise(model, tok, request, hp, layer, templates, hp["mlp_module_tmp"].format(layer), "logits")
        if variant == "random_prefix":
            ins, outs = zip(*[_reprs(model, tok, [c.format(request["subject"])], [i], name) for c, i in zip(ctx, idx)])
            k, cur = torch.cat(ins).mean(0), torch.cat(outs).mean(0)
            right = (v_init + delta - cur) / torch.dot(k, u)
        else:
            bare = subject_index(tok, request["prompt"], request["subject"], hp["fact_token"], hp.get("subject_index_rule", "additive"))
            k, cur = _reprs(model, tok, [request["prompt"].format(request["subject"])], [bare], name)
            k, cur = k[0], cur[0]
            goal = cur + delta if variant == "prompt" else v_init + delta
            right = (goal - cur) / torch.dot(k, u)
        add_update(model, name, torch.outer(u, right), deltas)
    return deltas
