"""Shared pieces of the plain implementations: hooks on whole-model passes, kmeng01's subject index,
the reference npz statistics, and compute_v / compute_z (the target-value optimisation)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["subject_index", "read_second_moment", "optimise", "reprs", "module", "orient", "add_update", "target_z", "layer_keys",
           "current_z"]


def module(model, name):
    return model.get_submodule(name)


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def subject_index(tok, template: str, subject: str, fact_token: str = "subject_last", rule: str = "additive") -> int:
    """The lookup index in ``template`` (one '{}') filled with ``subject``: kmeng01's additive rule
    (pieces tokenised apart, lengths added) or AlphaEdit's ``concat`` rule (lengths of
    ``encode(prefix)``, ``encode(prefix + subject)``, ``encode(prefix + subject + suffix)``)."""
    i = template.index("{}")
    prefix, suffix = template[:i], template[i + 2 :]
    if rule == "concat":
        lp = len(tok.encode(prefix))
        lw = len(tok.encode(prefix + subject)) - lp
        ls = len(tok.encode(prefix + subject + suffix)) - lp - lw
    else:
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


def reprs(model, tok, contexts, idxs, name):
    """(inputs, outputs) of module ``name`` at idxs[i] of contexts[i], the contexts batched."""
    device = next(model.parameters()).device
    ids, mask = _pad(tok, contexts, device)
    got = {}
    h1 = module(model, name).register_forward_pre_hook(lambda m, a: got.__setitem__("in", a[0]))
    h2 = module(model, name).register_forward_hook(lambda m, a, o: got.__setitem__("out", _first(o)))
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


def _rewrite_batch(tok, request, hp, templates, device):
    """The rewrite prompts (one per template, the target but its last token appended) and the KL
    prompt, padded: (ids, mask, targets (n_rewrite, length) with -100 off the target, lookup index
    of every prompt, number of target tokens)."""
    target = request["target_new"] if request["target_new"].startswith(" ") else " " + request["target_new"]
    target_ids = tok(target)["input_ids"]
    if hp.get("target_skip_tokens") is not None:
        target_ids = target_ids[hp["target_skip_tokens"]:]  # EMMET's compute_z on Llama-2
    elif hp.get("strip_target_bos") and target_ids and target_ids[0] in (tok.bos_token_id, tok.unk_token_id):
        target_ids = target_ids[1:]  # AlphaEdit's compute_z drops a BOS or UNK the tokenizer prepends
    T = len(target_ids)
    rewriting = [t.format(request["prompt"]) + tok.decode(target_ids[:-1]) for t in templates]
    all_prompts = rewriting + ["{} is a"]
    ids, mask = _pad(tok, [p.format(request["subject"]) for p in all_prompts], device)
    targets = torch.full((len(rewriting), ids.shape[1]), -100, device=device)
    for i in range(len(rewriting)):
        n = int(mask[i].sum())
        targets[i, n - T : n] = torch.tensor(target_ids, device=device)
    lookup = [subject_index(tok, p, request["subject"], hp["fact_token"], hp.get("subject_index_rule", "additive")) for p in all_prompts]
    return ids, mask, targets, lookup, T


def _most_probable_stop(prob_cutoff, lp, targets, nll_each, n_right):
    """ENCORE's stop, checked before each backward: (stop, passes counted so far)."""
    if prob_cutoff < 0:
        rows = targets[1:] != -100
        n_right += bool((lp[1:].argmax(2) == targets[1:])[rows].all())  # all() of nothing is true
        return n_right == abs(prob_cutoff), n_right
    return torch.exp(-nll_each).mean().item() > prob_cutoff, n_right


def _edited_forward(model, ids, mask, site: str, edit, loss_module: str):
    """The model's logits with the hook ``edit`` on ``site``, and the output of ``loss_module``."""
    kept = {}

    def keep(m, a, out):
        kept["h"] = _first(out)

    h1 = module(model, site).register_forward_hook(edit)
    h2 = module(model, loss_module).register_forward_hook(keep)
    try:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    finally:
        h1.remove()
        h2.remove()
    return logits, kept["h"]


def _rewrite_logprobs(model, hp, logits, h, n_rewrite: int, nll_from: str):
    """Log-probabilities (n_rewrite, T, vocab) of the rewrite rows: from the model's logits, or (MEMIT's
    compute_z) the loss layer's output ``h`` through the final norm and the LM head."""
    if nll_from == "logits":
        return torch.log_softmax(logits[:n_rewrite], dim=2)
    ln_f = module(model, hp["ln_f_module"])
    head = module(model, hp["lm_head_module"])
    bias = head.bias if getattr(head, "bias", None) is not None else 0.0
    return torch.log_softmax(ln_f(h[:n_rewrite]) @ head.weight.T + bias, dim=2)


def optimise(model, tok, request, hp, layer, templates, site, nll_from, prob_cutoff=None):
    """compute_v / compute_z: returns (v_init, delta); δ is float64 on float64 models, else float32.

    ``prob_cutoff`` (ENCORE's compute_z; None or 0: off): before each backward, negative −n stops once
    every target token of every rewrite prompt but the first (the bare ``"{}"`` one) has been the
    argmax at n passes (a counter never reset); positive p stops once the mean over rewrite prompts
    of exp(−NLL) exceeds p."""
    device = next(model.parameters()).device
    ids, mask, targets, lookup, T = _rewrite_batch(tok, request, hp, templates, device)
    n_rewrite = targets.shape[0]
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

    saved = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam([delta], lr=hp["v_lr"])
    kl_init = None
    n_right = 0
    try:
        for it in range(hp["v_num_grad_steps"]):
            opt.zero_grad()
            logits, h = _edited_forward(model, ids, mask, site, edit, hp["layer_module_tmp"].format(loss_layer))
            kl_lp = torch.log_softmax(logits[n_rewrite, lookup[-1]][None], dim=1)
            if kl_init is None:
                kl_init = kl_lp.detach().clone()
            lp = _rewrite_logprobs(model, hp, logits, h, n_rewrite, nll_from)
            picked = torch.gather(lp, 2, torch.where(targets != -100, targets, 0)[:, :, None])[:, :, 0]
            m = (targets != -100).to(picked.dtype)
            nll_each = -(picked * m).sum(1) / T
            nll = nll_each.mean()
            kl = hp["kl_factor"] * torch.nn.functional.kl_div(kl_init, kl_lp, log_target=True, reduction="batchmean")
            wd = hp["v_weight_decay"] * (torch.norm(delta) / torch.norm(state["init"]) ** 2)
            loss = nll + kl + wd
            if prob_cutoff:
                stop, n_right = _most_probable_stop(prob_cutoff, lp, targets, nll_each, n_right)
                if stop:
                    break
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


def orient(upd, w):
    """A (d_ff, d_model) update in the weight's layout."""
    return upd if upd.shape == w.shape else upd.T


def add_update(model, name, upd, deltas) -> None:
    """W += ΔW for module ``name``, ΔW (d_ff, d_model) put in the weight's layout and cast to its dtype
    (as the references add it); ``deltas[name + ".weight"]`` records ΔW in that layout."""
    w = module(model, name).weight
    upd = orient(upd, w)
    with torch.no_grad():
        w += upd.to(w.dtype)
    deltas[name + ".weight"] = upd


def target_z(model, tok, requests, hp, flat, **options) -> torch.Tensor:
    """The MEMIT family's compute_z for every request, one at a time: Z (d_model, n). ``options`` go
    to :func:`optimise` (ENCORE's ``prob_cutoff``)."""
    top = hp["layers"][-1]
    site = hp["layer_module_tmp"].format(top)
    return torch.stack([sum(optimise(model, tok, r, hp, top, flat, site, "loss_layer", **options)) for r in requests], 1)


def layer_keys(model, tok, requests, hp, groups, layer) -> torch.Tensor:
    """compute_ks: K (d_ff, n), each request's key at ``layer`` averaged within each template group,
    then across the groups."""
    flat = [t for g in groups for t in g]
    rule = hp.get("subject_index_rule", "additive")
    ctx = [t.format(r["prompt"]) for r in requests for t in flat]
    words = [r["subject"] for r in requests for _ in flat]
    idx = [subject_index(tok, c, w, hp["fact_token"], rule) for c, w in zip(ctx, words)]
    ks, _ = reprs(model, tok, [c.format(w) for c, w in zip(ctx, words)], idx, hp["rewrite_module_tmp"].format(layer))
    starts = np.cumsum([0] + [len(g) for g in groups])
    per_req = []
    for j in range(len(requests)):
        block = ks[j * len(flat) : (j + 1) * len(flat)]
        per_req.append(torch.stack([block[a:b].mean(0) for a, b in zip(starts[:-1], starts[1:])]).mean(0))
    return torch.stack(per_req, 1)


def current_z(model, tok, requests, hp) -> torch.Tensor:
    """The block output of the last edit layer at each bare prompt's lookup token: (d_model, n)."""
    rule = hp.get("subject_index_rule", "additive")
    bare = [subject_index(tok, r["prompt"], r["subject"], hp["fact_token"], rule) for r in requests]
    texts = [r["prompt"].format(r["subject"]) for r in requests]
    return reprs(model, tok, texts, bare, hp["layer_module_tmp"].format(hp["layers"][-1]))[1].T

