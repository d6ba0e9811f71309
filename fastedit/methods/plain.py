"""A deliberately plain, reference-style implementation of ROME, r-ROME and MEMIT.

It keeps the structure (and so the cost) of kmeng01/rome and kmeng01/memit: whole-model forward
passes with hooks, full logits over every position, ``torch.optim.Adam`` with a host-side loss check
every step and the last forward pass run only for its loss, one request at a time, separate passes
for keys, current outputs and z, ``torch.inverse`` and ``torch.linalg.solve``. It shares no code with
fastedit's engine, which makes it two things:

* the independent implementation the parity tests compare fastedit against (run it on a float64
  model and everything, δ included, is float64);
* the same-process baseline of the end-to-end benchmarks (``benchmarks/bench_edit.py``).

Requests are reference-layout dicts (``prompt`` with ``{}``, ``subject``, ``target_new`` as a string).
Hyperparameters are a dict of the reference keys. Statistics come from the reference npz files.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["rome", "memit", "subject_index", "read_second_moment"]


def _module(model, name):
    return model.get_submodule(name)


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def subject_index(tok, template: str, subject: str, fact_token: str = "subject_last") -> int:
    """kmeng01's additive rule on one template with '{}'."""
    i = template.index("{}")
    prefix, suffix = template[:i], template[i + 2 :]
    word = subject
    if len(prefix) > 0:
        assert prefix[-1] == " "
        prefix = prefix[:-1]
        word = " " + subject.strip()
    lp = len(tok(prefix)["input_ids"])
    lw = len(tok(word)["input_ids"])
    ls = len(tok(suffix)["input_ids"])
    if fact_token == "subject_last":
        return lp + lw - 1
    if fact_token == "subject_first":
        return lp
    if fact_token == "subject_first_after_last":
        return lp + lw - (1 if ls == 0 else 0)
    raise ValueError(fact_token)


def _pad(tok, texts, device):
    rows = [tok(t)["input_ids"] for t in texts]
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), tok.pad_token_id)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def _reprs(model, tok, contexts, idxs, name):
    """(inputs, outputs) of module ``name`` at idxs[i] of contexts[i], the contexts batched."""
    device = next(model.parameters()).device
    ids, mask = _pad(tok, contexts, device)
    got = {}
    h1 = _module(model, name).register_forward_pre_hook(lambda m, a: got.__setitem__("in", a[0]))
    h2 = _module(model, name).register_forward_hook(lambda m, a, o: got.__setitem__("out", _first(o)))
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        h1.remove()
        h2.remove()
    rows = torch.arange(len(contexts), device=device)
    pos = torch.tensor(idxs, device=device)
    return got["in"][rows, pos].clone(), got["out"][rows, pos].clone()


def read_second_moment(path) -> torch.Tensor:
    """C = mom2 / count from a reference npz file, float32 as the references use it."""
    d = np.load(path)
    return (torch.from_numpy(d["mom2.mom2"]) / int(d["mom2.count"])).float()


def _optimise(model, tok, request, hp, layer, templates, site, nll_from):
    """compute_v / compute_z: returns (v_init, delta); δ is float64 on float64 models, else float32."""
    device = next(model.parameters()).device
    target = request["target_new"] if request["target_new"].startswith(" ") else " " + request["target_new"]
    target_ids = tok(target)["input_ids"]
    T = len(target_ids)
    rewriting = [t.format(request["prompt"]) + tok.decode(target_ids[:-1]) for t in templates]
    all_prompts = rewriting + ["{} is a"]
    ids, mask = _pad(tok, [p.format(request["subject"]) for p in all_prompts], device)
    targets = torch.full((len(rewriting), ids.shape[1]), -100, device=device)
    for i in range(len(rewriting)):
        n = int(mask[i].sum())
        targets[i, n - T : n] = torch.tensor(target_ids, device=device)
    lookup = [subject_index(tok, p, request["subject"], hp["fact_token"]) for p in all_prompts]
    loss_layer = max(hp["v_loss_layer"], layer)
    cfg = model.config
    d = getattr(cfg, "n_embd", None) or cfg.hidden_size
    dtype = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
    delta = torch.zeros(d, dtype=dtype, device=device, requires_grad=True)
    state = {"init": None}

    def edit(m, a, out):
        t = _first(out)
        if state["init"] is None:
            state["init"] = t[0, lookup[0]].detach().clone()
        t = t.clone()
        for i, idx in enumerate(lookup):
            t[i, idx] = t[i, idx] + delta.to(t.dtype)
        return (t,) + tuple(out[1:]) if isinstance(out, tuple) else t

    kept = {}

    def keep(m, a, out):
        kept["h"] = _first(out)

    saved = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam([delta], lr=hp["v_lr"])
    kl_init = None
    try:
        for it in range(hp["v_num_grad_steps"]):
            opt.zero_grad()
            h1 = _module(model, site).register_forward_hook(edit)
            h2 = _module(model, hp["layer_module_tmp"].format(loss_layer)).register_forward_hook(keep)
            try:
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            finally:
                h1.remove()
                h2.remove()
            kl_lp = torch.log_softmax(logits[len(rewriting), lookup[-1]][None], dim=1)
            if kl_init is None:
                kl_init = kl_lp.detach().clone()
            if nll_from == "logits":
                lp = torch.log_softmax(logits[: len(rewriting)], dim=2)
            else:
                ln_f = _module(model, hp["ln_f_module"])
                head = _module(model, hp["lm_head_module"])
                bias = head.bias if getattr(head, "bias", None) is not None else 0.0
                lp = torch.log_softmax(ln_f(kept["h"][: len(rewriting)]) @ head.weight.T + bias, dim=2)
            picked = torch.gather(lp, 2, torch.where(targets != -100, targets, 0)[:, :, None])[:, :, 0]
            m = (targets != -100).to(picked.dtype)
            nll = (-(picked * m).sum(1) / T).mean()
            kl = hp["kl_factor"] * torch.nn.functional.kl_div(kl_init, kl_lp, log_target=True, reduction="batchmean")
            wd = hp["v_weight_decay"] * (torch.norm(delta) / torch.norm(state["init"]) ** 2)
            loss = nll + kl + wd
            if loss.item() < 5e-2:
                break
            if it == hp["v_num_grad_steps"] - 1:
                break
            loss.backward()
            opt.step()
            max_norm = hp["clamp_norm_factor"] * state["init"].norm()
            if delta.norm() > max_norm:
                with torch.no_grad():
                    delta[...] = delta * max_norm / delta.norm()
    finally:
        for p, g in zip(model.parameters(), saved):
            p.requires_grad_(g)
    return state["init"], delta.detach()


def _orient(upd, w):
    """A (d_ff, d_model) update in the weight's layout."""
    return upd if upd.shape == w.shape else upd.T


def rome(model, tok, request, hp, templates, second_moment, variant="rome", u_from_average=True):
    """ROME for one request, applied to ``model``; returns {weight name: ΔW}.

    ``second_moment(layer)`` → C. ``variant``: "rome", "random_prefix" (r-ROME) or "prompt";
    ``u_from_average``: u from the template-averaged key (ROME, and r-ROME's default) or the bare key.
    """
    deltas = {}
    for layer in sorted(hp["layers"]):
        name = hp["rewrite_module_tmp"].format(layer)
        ctx = [t.format(request["prompt"]) for t in templates]
        idx = [subject_index(tok, c, request["subject"], hp["fact_token"]) for c in ctx]
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
            bare = subject_index(tok, request["prompt"], request["subject"], hp["fact_token"])
            k, cur = _reprs(model, tok, [request["prompt"].format(request["subject"])], [bare], name)
            k, cur = k[0], cur[0]
            goal = cur + delta if variant == "prompt" else v_init + delta
            right = (goal - cur) / torch.dot(k, u)
        w = _module(model, name).weight
        upd = _orient(torch.outer(u, right), w)
        with torch.no_grad():
            w += upd.to(w.dtype)
        deltas[name + ".weight"] = upd
    return deltas


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
        idx = [subject_index(tok, c, w, hp["fact_token"]) for c, w in zip(ctx, words)]
        ks, _ = _reprs(model, tok, [c.format(w) for c, w in zip(ctx, words)], idx, name)
        sizes = [len(g) for g in groups]
        per_req = []
        for j in range(len(requests)):
            block = ks[j * len(flat) : (j + 1) * len(flat)]
            starts = np.cumsum([0] + sizes)
            per_req.append(torch.stack([block[a:b].mean(0) for a, b in zip(starts[:-1], starts[1:])]).mean(0))
        K = torch.stack(per_req, 1)
        bare = [subject_index(tok, r["prompt"], r["subject"], hp["fact_token"]) for r in requests]
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
