"""The target-value optimisation shared by ROME (v*) and the MEMIT family (z).

For each request, a vector δ (d_model, initially zero) is added at the lookup token of every prompt
(the rewrite prompts and the KL prompt ``"{} is a"``) and optimised with Adam so that the model
predicts ``target_new``:

    loss = NLL + kl_factor · KL(current ‖ initial) at the KL prompt + v_weight_decay · ‖δ‖ / ‖v_init‖²

NLL is the mean over rewrite prompts of (Σ −log p over the T target tokens) / T, read from the
model's logits (ROME) or from ``ln_f(h at max(v_loss_layer, layer)) @ W_lm + b_lm`` (MEMIT). Before
each backward the request stops if its loss is below 5e-2; the last iteration stops before stepping,
so there are at most ``v_num_grad_steps − 1`` Adam updates; after each update δ is projected into
the ball ‖δ‖ ≤ clamp_norm_factor · ‖v_init‖. The result is v_init + δ.

ROME adds δ to the MLP output of the edit layer, MEMIT to the block output of the last edit layer;
both enter the residual stream right after that block, so fastedit computes everything below once
(δ = 0 there) and runs only the layers above during the optimisation (:mod:`fastedit.models.stack`), reads
logits only at the positions the loss uses, optimises all requests of a batch at once (each with its
own δ, Adam state and stopping); the only host read in the loop is the stop flag (``sync_stop``),
and on GPUs the whole step can be captured once as a CUDA graph and replayed (``cuda_graph``).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from ..models.adapters import ModelAdapter, get_module
from ..models.precision import LowPrecisionWeights
from ..models.stack import upper_stack
from ..models.tracing import first_tensor, record
from ..profiling import region
from ..requests import EditRequest, RequestError
from .keys import lookup_index, tokenize_batch
from .suffix import SuffixLayout

__all__ = ["TargetValues", "compute_target_values", "target_token_ids", "STOP_LOSS"]

STOP_LOSS = 5e-2  # the references' early-stopping threshold on the total loss
GRAPH_WARMUP = 3  # eager steps before a CUDA graph is captured (cuBLAS and autograd set up lazily)
GRAPH_CHECK_EVERY = 4  # a static loop reads the stop flag once every this many steps
KL_PROMPT = "{} is a"
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8

log = logging.getLogger(__name__)


@dataclass
class TargetValues:
    """Result of :func:`compute_target_values` for n requests.

    ``values`` = ``v_init + delta``: (n, d_model). ``losses``: (iterations, n) total loss per
    iteration that was evaluated (NaN once a request has stopped). ``steps``: Adam updates taken per
    request.
    """

    values: torch.Tensor
    v_init: torch.Tensor
    delta: torch.Tensor
    losses: torch.Tensor
    steps: list[int] = field(default_factory=list)


def target_token_ids(tok, request: EditRequest, strip_bos: bool) -> list[int]:
    """Token ids of ``" " + target_new`` as the references compute them (special tokens included;
    kmeng01 keeps a BOS, AlphaEdit strips it)."""
    ids = list(tok(request.target_new_spaced)["input_ids"])
    if strip_bos and ids and ids[0] in {tok.bos_token_id, tok.unk_token_id} - {None}:
        ids = ids[1:]
    if not ids:
        raise RequestError(f"request {request.name}: target_new {request.target_new!r} tokenises to nothing")
    return ids


def _adam_step(param, grad, m, v, step: int | torch.Tensor, lr: float, active):
    """One step of ``torch.optim.Adam`` (defaults: betas (0.9, 0.999), eps 1e-8, no weight decay),
    applied only to the rows where ``active`` is true (a stopped request keeps its δ and its moments).

    With an int ``step``: the same in-place operations in the same order as Adam's single-tensor
    path. With a tensor ``step`` (on the device, so a CUDA graph can replay it): Adam's
    ``capturable`` form, the same update rounded differently in the last bits.

    param, grad, m, v: (n, d); active: (n,) bool.
    """
    b1, b2 = ADAM_BETAS
    keep = active[:, None]
    new_m = m.clone().lerp_(grad, 1 - b1)
    new_v = v.clone().mul_(b2).addcmul_(grad, grad, value=1 - b2)
    if isinstance(step, torch.Tensor):
        step_size_neg = -(lr / (1 - torch.pow(b1, step)))
        bias_correction2_sqrt = (1 - torch.pow(b2, step)).sqrt()
        denom = (new_v.sqrt() / (bias_correction2_sqrt * step_size_neg)).add_(ADAM_EPS / step_size_neg)
        new_p = param.clone().addcdiv_(new_m, denom)
    else:
        bias_correction1 = 1 - b1**step
        bias_correction2_sqrt = (1 - b2**step) ** 0.5
        denom = (new_v.sqrt() / bias_correction2_sqrt).add_(ADAM_EPS)
        new_p = param.clone().addcdiv_(new_m, denom, value=-(lr / bias_correction1))
    m.copy_(torch.where(keep, new_m, m))
    v.copy_(torch.where(keep, new_v, v))
    param.copy_(torch.where(keep, new_p, param))


def compute_target_values(
    model,
    tok,
    adapter: ModelAdapter,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    hp,
    layer: int,
    delta_site: str,
    nll_from: str,
    delta_dtype: torch.dtype | None = None,
    early_stop_patience: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    low_precision_weights: LowPrecisionWeights | None = None,
    pack: bool = True,
    sync_stop: bool = True,
    cuda_graph: bool = False,
) -> TargetValues:
    """Optimise v* (ROME: ``delta_site="mlp"``, ``nll_from="logits"``) or z (MEMIT:
    ``delta_site="block"``, ``nll_from="loss_layer"``) for every request at once.

    ``templates`` is the flat list of context templates (``"{}"`` first). ``layer`` is where δ
    enters. Returns values (n, d_model).

    Fast-mode options (both off in exact mode):

    * ``early_stop_patience``: ENCORE's most-probable early stopping. A request stops once every
      target token of every rewrite prompt has been the argmax at ``early_stop_patience`` forward
      passes (counted, not necessarily consecutive, as ENCORE counts them). ENCORE leaves the bare
      prompt out of the check; here all rewrite prompts count.
    * ``autocast_dtype``: run the layers above the edit layer under ``torch.autocast`` in this dtype
      (bf16 on GPUs); δ, the loss and Adam stay in float32.
    * ``low_precision_weights`` (CPUs with native bf16): the layers above the edit layer, the final
      norm and the LM head run on the cached low-precision copies of their weights
      (:mod:`fastedit.models.precision`), on a residual stream cast to that dtype; δ, the
      log-softmax, the loss and Adam stay in float32.

    ``pack`` (both modes; it changes only rounding): run each iteration over the prompts' suffixes
    from their lookup token on, packed without padding, on top of a cache of their prefixes
    (:mod:`.suffix`). Off, every iteration runs the padded prompts whole through the layers above.

    ``sync_stop`` (default on): leave the loop once every request has stopped, which reads one flag
    from the device per step. Most requests stop long before ``v_num_grad_steps`` (the loss falls
    under 5e-2 in a few steps), and the steps skipped cost far more than the read. Off (GPU only), the
    loop has no host synchronisation: stopped requests are frozen on the device and the loop runs all
    steps.

    ``cuda_graph``: run the optimisation as one static step (forward, loss, backward, Adam in torch's
    capturable form, every counter on the device) and, on a GPU, capture that step as a CUDA graph
    after ``GRAPH_WARMUP`` eager steps and replay it, reading the stop flag once every
    ``GRAPH_CHECK_EVERY`` steps (with ``sync_stop``). One replay costs a single launch instead of the
    model's per-layer Python, which is what bounds small-batch editing on a GPU. On a CPU the same
    static step runs without capture. It changes only rounding (Adam's capturable form).
    """
    device = next(model.parameters()).device
    n_req = len(requests)
    mlp_name = (hp.mlp_module_tmp or adapter.mlp_module_tmp).format(layer)
    block_name = (hp.layer_module_tmp or adapter.layer_module_tmp).format(layer)
    n_layers = adapter.num_layers(model)
    loss_layer = max(hp.v_loss_layer, layer)
    if loss_layer >= n_layers:
        raise ValueError(f"v_loss_layer {hp.v_loss_layer} is beyond the model's {n_layers} layers")

    # ---- prompts, labels and lookup positions, request by request -------------------------------
    texts, positions, row_req = [], [], []
    label_rows, label_pos, label_ids, label_req = [], [], [], []
    kl_rows, t_lens = [], []
    with region("target/prepare"):
        for r, req in enumerate(requests):
            ids = target_token_ids(tok, req, hp.strip_target_bos)
            t_lens.append(len(ids))
            target_prefix = tok.decode(ids[:-1])
            prompts = [t.format(req.prompt) + target_prefix for t in templates] + [KL_PROMPT]
            for i, p in enumerate(prompts):
                row = len(texts)
                texts.append(p.format(req.subject))
                positions.append(lookup_index(tok, p, req.subject, hp.fact_token, hp.subject_index_rule))
                row_req.append(r)
                if i == len(prompts) - 1:
                    kl_rows.append(row)
                else:
                    # Labels sit on the last T positions of each rewrite prompt (placed below, once
                    # the lengths are known).
                    label_rows.append(row)
                    label_req.append(r)
                    label_ids.append(ids)
        batch = tokenize_batch(tok, texts, device)
        lengths = batch.lengths.tolist()
        flat_rows, flat_pos, flat_ids, flat_req, flat_w = [], [], [], [], []
        n_prompts = len(templates)
        for row, r, ids in zip(label_rows, label_req, label_ids):
            T = len(ids)
            if lengths[row] < T:
                raise RequestError(f"request {requests[r].name}: rewrite prompt shorter than its target")
            for j, tid in enumerate(ids):
                flat_rows.append(row)
                flat_pos.append(lengths[row] - T + j)
                flat_ids.append(tid)
                flat_req.append(r)
                # mean over prompts of (sum over tokens)/T, as one weighted sum
                flat_w.append(1.0 / (T * n_prompts))
        for row, p in enumerate(positions):
            if not 0 <= p < lengths[row]:
                raise RequestError(f"request {requests[row_req[row]].name}: lookup position outside its prompt")

    lab_rows = torch.tensor(flat_rows, device=device)
    lab_pos = torch.tensor(flat_pos, device=device)
    lab_ids = torch.tensor(flat_ids, device=device)
    lab_req = torch.tensor(flat_req, device=device)
    lab_w = torch.tensor(flat_w, device=device, dtype=torch.float64)
    look_rows = torch.arange(len(texts), device=device)
    look_pos = torch.tensor(positions, device=device)
    look_req = torch.tensor(row_req, device=device)
    kl_rows_t = torch.tensor(kl_rows, device=device)
    kl_pos = look_pos[kl_rows_t]
    first_rows = torch.tensor([kl_rows[r] - n_prompts for r in range(n_req)], device=device)

    # ---- everything below the edit layer, once --------------------------------------------------
    with region("target/prefix"), torch.no_grad():
        outs = [block_name] + ([mlp_name] if delta_site == "mlp" else [])
        with record(model, outputs=outs, stop_after=block_name) as rec:
            model(**batch.model_inputs(), use_cache=False)
        hidden = rec.outputs[block_name]  # (B, S, d): residual stream after the edit layer
        site = rec.outputs[mlp_name] if delta_site == "mlp" else hidden
        rows0 = first_rows.to(site.device)
        v_init = site[rows0, look_pos.to(site.device)[rows0]].clone()  # (n, d), model dtype

    # With a device_map the edit layer may sit on another device than the embedding: δ, its Adam
    # state and the index tensors live where the edit layer's output does, the loss where the LM
    # head is (both the same device otherwise).
    device = hidden.device
    lab_rows, lab_pos, look_rows, look_pos, look_req, kl_rows_t, kl_pos = (
        t.to(device) for t in (lab_rows, lab_pos, look_rows, look_pos, look_req, kl_rows_t, kl_pos)
    )

    lm_w, lm_b = adapter.lm_head(model)
    if hp.lm_head_module:
        head = get_module(model, hp.lm_head_module)
        lm_w, lm_b = head.weight, getattr(head, "bias", None)
    ln_f = get_module(model, hp.ln_f_module or adapter.ln_f_module)
    model_head = model.get_output_embeddings()
    run_dtype = hidden.dtype
    swap = contextlib.nullcontext()
    if low_precision_weights is not None and autocast_dtype is None:
        upper = list(get_module(model, adapter.layers))[layer + 1 :]
        modules = upper + [ln_f, model_head] + ([head] if hp.lm_head_module else [])
        if adapter.position_embedding:  # GPT-2 adds zero positions in its dtype (upper_layers_only)
            modules.append(get_module(model, adapter.position_embedding))
        swap = low_precision_weights.swapped(modules)
        run_dtype = low_precision_weights.dtype

    stack = upper_stack(model, adapter, layer + 1)  # fastedit's own forward, or transformers' modules
    packed = pack and stack.packs
    with swap:
        if packed:
            with region("target/prefix"):
                layout = SuffixLayout.build(
                    lengths, positions, hidden.shape[1], device, run_dtype,
                    boolean_mask=True,
                )
                flat = hidden.reshape(-1, hidden.shape[-1])
                cache = layout.prefix_cache(stack, flat.to(run_dtype))
                suffix_base = flat[layout.suf_index]  # (rows, Q, d)
                delta_r, delta_c = layout.slot_row, layout.slot_start  # each prompt's lookup token
                lab_r, lab_c = layout.slots(lab_rows, lab_pos)
                kl_r, kl_c = layout.slots(kl_rows_t, kl_pos)

        w_dtype = delta_dtype or (torch.float64 if hidden.dtype == torch.float64 else torch.float32)
        delta = torch.zeros((n_req, hidden.shape[-1]), dtype=w_dtype, device=device, requires_grad=True)
        m = torch.zeros_like(delta, requires_grad=False)
        v = torch.zeros_like(delta, requires_grad=False)
        active = torch.ones(n_req, dtype=torch.bool, device=device)
        init_norm = v_init.to(w_dtype).norm(dim=-1)  # (n,)
        max_norm = hp.clamp_norm_factor * init_norm
        steps_taken = torch.zeros(n_req, dtype=torch.long, device=device)

        read_loss_layer = nll_from == "loss_layer" and loss_layer < n_layers - 1

        out_dev = lm_w.device
        lab_ids, lab_req, lab_w = lab_ids.to(out_dev), lab_req.to(out_dev), lab_w.to(out_dev)
        hits = torch.zeros(n_req, dtype=torch.long, device=device)
        n_labels = torch.zeros(n_req, dtype=torch.long, device=out_dev).index_add(0, lab_req, torch.ones_like(lab_req))
        autocast = (
            torch.autocast(device_type=device.type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        # The references run v_num_grad_steps forward passes, the last of which only reports its loss
        # and breaks before stepping: it cannot change δ, so it is not run here.
        n_iter = hp.v_num_grad_steps - 1
        loss_buf = torch.full((max(n_iter, 0), n_req), torch.nan, dtype=w_dtype, device=device)
        # static (graph-mode) iteration counters: the row of loss_buf and Adam's step, on the device
        it_t = torch.zeros(1, dtype=torch.long, device=device)
        step_t = torch.zeros((), dtype=torch.float64 if w_dtype == torch.float64 else torch.float32, device=device)
        kl_init: list[torch.Tensor] = []

        def forward_loss(it: int | None) -> torch.Tensor:
            """One forward pass and the loss of every request; records the loss at iteration ``it``
            (``None``: at ``it_t``, on the device) and updates the stop flags in place."""
            with region("target/forward"), autocast:
                if packed:
                    add = torch.zeros_like(suffix_base)
                    add[delta_r, delta_c] = delta[look_req].to(suffix_base.dtype)
                    h = (suffix_base + add).to(run_dtype)
                    rows, cols, krows, kcols = lab_r, lab_c, kl_r, kl_c

                    def run(capture=None):
                        return layout.run_suffix(stack, h, cache, capture)
                else:
                    add = torch.zeros_like(hidden)
                    add[look_rows, look_pos] = delta[look_req].to(hidden.dtype)
                    h = (hidden + add).to(run_dtype)
                    rows, cols, krows, kcols = lab_rows, lab_pos, kl_rows_t, kl_pos

                    def run(capture=None):
                        return stack.forward(h, batch.attention_mask, capture)
                if read_loss_layer and loss_layer == layer:
                    # the loss reads the edited layer's own (δ-shifted) output
                    top, _ = run()
                    nll_hidden = ln_f(h[rows, cols])
                elif read_loss_layer:
                    top, at_loss_layer = run(capture=loss_layer)
                    nll_hidden = ln_f(_at(at_loss_layer, rows, cols))
                else:
                    top, _ = run()
                    nll_hidden = _at(top, rows, cols)
                kl_top = _at(top, krows, kcols).to(out_dev)
                if nll_from == "logits":
                    nll_logits = model_head(nll_hidden.to(out_dev))
                else:
                    nll_logits = F.linear(nll_hidden.to(out_dev), lm_w, lm_b)
                logp = torch.log_softmax(nll_logits.float() if nll_logits.dtype != torch.float64 else nll_logits, -1)
                tok_lp = logp.gather(1, lab_ids[:, None])[:, 0]
                nll = torch.zeros(n_req, dtype=tok_lp.dtype, device=out_dev).index_add(
                    0, lab_req, -tok_lp * lab_w.to(tok_lp.dtype)
                )
                kl_logits = model_head(kl_top)
                kl_lp = torch.log_softmax(kl_logits.float() if kl_logits.dtype != torch.float64 else kl_logits, -1)
                if not kl_init:
                    kl_init.append(kl_lp.detach().clone())
                # kl_div(init, current, log_target=True, batchmean) with one KL prompt per request
                kl = (kl_lp.exp() * (kl_lp - kl_init[0])).sum(-1)
                decay = hp.v_weight_decay * delta.norm(dim=-1) / init_norm**2
                loss = (nll.to(delta.dtype) + hp.kl_factor * kl.to(delta.dtype)).to(device) + decay
            shown = torch.where(active, loss.detach(), torch.nan)
            if it is None:
                loss_buf.index_copy_(0, it_t, shown[None])
            else:
                loss_buf[it] = shown
            active.logical_and_(~(loss.detach() < STOP_LOSS))
            if early_stop_patience:
                correct = (nll_logits.detach().argmax(-1) == lab_ids).long()
                all_right = (torch.zeros_like(n_labels).index_add(0, lab_req, correct) == n_labels).to(device)
                hits.add_((active & all_right).long())
                active.logical_and_(hits < early_stop_patience)
            return loss

        def backward_update(loss: torch.Tensor, it: int | None) -> None:
            """Gradient of the loss for δ, one Adam step on the active requests, the norm clamp.
            ``it`` is the iteration (``None``: Adam's step count lives on the device, in ``step_t``,
            and Adam runs in torch's capturable form)."""
            with region("target/backward"):
                grad = torch.autograd.grad(loss.sum(), delta)[0]
            with region("target/adam"), torch.no_grad():
                if it is None:
                    step_t.add_(1)
                    it_t.add_(1)
                _adam_step(delta, grad, m, v, step_t if it is None else it + 1, hp.v_lr, active)
                norms = delta.norm(dim=-1)
                over = active & (norms > max_norm)
                scale = torch.where(over, max_norm / norms, torch.ones_like(norms))
                delta.mul_(scale[:, None])
                steps_taken.add_(active.long())

        use_graph = (
            cuda_graph and device.type == "cuda" and n_iter > GRAPH_WARMUP
            and len({p.device for p in model.parameters()}) == 1  # not over a device_map
        )
        saved_grad = [p.requires_grad for p in model.parameters()]
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            if cuda_graph:
                n_run = _run_static(forward_loss, backward_update, n_iter, active, use_graph, sync_stop)
            else:
                n_run = 0
                for it in range(n_iter):
                    loss = forward_loss(it)
                    n_run = it + 1
                    if (sync_stop or device.type == "cpu") and not bool(active.any()):
                        break
                    backward_update(loss, it)
        finally:
            for p, g in zip(model.parameters(), saved_grad):
                p.requires_grad_(g)

    delta = delta.detach()
    values = v_init.to(delta.dtype) + delta
    loss_curve = loss_buf[:n_run].cpu()
    while len(loss_curve) and bool(loss_curve[-1].isnan().all()):
        loss_curve = loss_curve[:-1]  # a static loop runs on after every request has stopped
    return TargetValues(values=values, v_init=v_init, delta=delta, losses=loss_curve, steps=steps_taken.tolist())


def _at(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``x[rows, cols]`` with the indices moved to ``x``'s device (a no-op on one device)."""
    return x[rows.to(x.device), cols.to(x.device)]


def _run_static(forward_loss, backward_update, n_iter: int, active, use_graph: bool, sync_stop: bool) -> int:
    """The optimisation as one static step (forward, loss, backward, Adam) repeated ``n_iter`` times:
    the first ``GRAPH_WARMUP`` steps run eagerly (on a side stream when capturing), then, with
    ``use_graph``, one step is captured as a CUDA graph and replayed for the rest; without it (CPUs,
    tests) the same step is called directly. The stop flag is read once every ``GRAPH_CHECK_EVERY``
    steps (if ``sync_stop``); stopped requests stay frozen on the device in between. Returns the
    number of steps run. If capture fails, the remaining steps run eagerly."""

    def step():
        backward_update(forward_loss(None), None)

    done, graph = 0, None
    if use_graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(min(n_iter, GRAPH_WARMUP)):
                step()
        torch.cuda.current_stream().wait_stream(side)
        done = min(n_iter, GRAPH_WARMUP)
        if done == n_iter or (sync_stop and not bool(active.any())):
            return done
        graph = torch.cuda.CUDAGraph()
        try:
            with region("target/capture"), torch.cuda.graph(graph):
                step()
        except Exception as exc:  # e.g. an operation the model runs is not capturable
            log.warning("CUDA graph capture of the optimisation step failed (%s); running it eagerly", exc)
            graph = None
    while done < n_iter:
        if graph is None:
            step()
        else:
            with region("target/replay"):
                graph.replay()
        done += 1
        if sync_stop and done % GRAPH_CHECK_EVERY == 0 and not bool(active.any()):
            break
    return done
