"""The target-value optimisation shared by ROME (v*) and the MEMIT family (z).

For each request, a vector δ (d_model, initially zero) is added at the lookup token of every prompt
(the rewrite prompts and the KL prompt ``"{} is a"``) and optimised with Adam so that the model
predicts ``target_new``:

    loss = NLL + kl_factor · KL(current ‖ initial) at the KL prompt + v_weight_decay · ‖δ‖ / ‖v_init‖²

NLL is the mean over rewrite prompts of (Σ −log p over the T target tokens) / T, read from the
model's logits (ROME) or from ``ln_f(h at max(v_loss_layer, layer)) @ W_lm + b_lm`` (MEMIT). Before
each backward the request stops if its loss is below 5e-2; the last iteration stops before stepping,
so there are at most ``v_num_grad_steps − 1`` Adam updates; after each update δ is projected into
the ball ‖δ‖ ≤ clamp_norm_factor · ‖v_init‖. The result is v_init + δ. A :class:`StopRule`
(ENCORE's most-probable early stopping; fast mode's) can stop a request sooner, checked at the same
point.

ROME adds δ to the MLP output of the edit layer, MEMIT to the block output of the last edit layer;
both enter the residual stream right after that block. This file holds the math (:func:`target_loss`,
:func:`_adam_step`, :func:`optimise`); :mod:`.stepping` runs the layers above the edit layer fast.
All requests of a batch are optimised at once, each with its own δ, Adam state and stopping, in
chunks of about ``CHUNK_TOKENS`` prompt tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..models.adapters import ModelAdapter
from ..models.precision import LowPrecisionWeights
from ..profiling import region
from ..requests import EditRequest, RequestError
from . import stepping
from .keys import lookup_index, pad_batch
from .stepping import PromptSet, StepPrograms, upper_stack

__all__ = ["TargetValues", "StopRule", "STOP_RULES", "compute_target_values", "target_token_ids", "STOP_LOSS"]

STOP_LOSS = 5e-2  # the references' early-stopping threshold on the total loss
CHUNK_TOKENS = 8192  # prompt tokens optimised together: bounds the memory a large batch needs
KL_PROMPT = "{} is a"
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
STOP_RULES = ("encore", "all_prompts")  # which rewrite prompts a StopRule's argmax test reads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StopRule:
    """ENCORE's early stopping of a request's optimisation (its compute_z's ``prob_cutoff``), checked
    before each backward beside the loss threshold.

    ``cutoff`` −n (a whole number): stop once every target token of the counted rewrite prompts has
    been the argmax at n forward passes (a counter per request, never reset: the passes need not be
    consecutive). ``cutoff`` p in (0, 1): stop once the mean over every rewrite prompt of its target
    probability exp(−NLL of the prompt) exceeds p. ``prompts``: ``"encore"`` counts every rewrite
    prompt but the first, bare one (ENCORE's ``log_probs[1:]``; with the bare template alone nothing is
    counted, so every pass counts, as there); ``"all_prompts"`` counts them all.
    """

    cutoff: float
    prompts: str = "encore"

    def __post_init__(self) -> None:
        if self.prompts not in STOP_RULES:
            raise ValueError(f"early-stop rule must be one of {STOP_RULES}, got {self.prompts!r}")
        c = self.cutoff
        if not (c < 0 and float(c) == int(c)) and not 0 < c < 1:
            raise ValueError(f"early-stop cutoff must be a negative whole number or a probability in (0, 1), got {c!r}")

    @classmethod
    def of(cls, cutoff: float | None, prompts: str = "encore") -> "StopRule | None":
        """The rule for ENCORE's ``prob_cutoff`` (None or 0: no rule)."""
        return cls(cutoff, prompts) if cutoff else None

    def stops(self, logp: torch.Tensor, stack, hits: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """(n,) bool: the requests this pass stops. ``logp``: (n_labels, vocab) log-probabilities at the
        labels of ``stack`` (its ``lab_ids``, ``lab_req``, ``lab_w``, ``lab_prompt``, ``lab_bare``,
        ``lab_valid``, ``n_prompts``; padding labels, not valid, are not read); ``hits`` (n,) the pass
        counters, advanced in place where ``active``. Reads nothing on the host."""
        dev, n = hits.device, hits.shape[0]
        req = stack.lab_req.to(dev)
        valid = stack.lab_valid.to(dev)
        if self.cutoff > 0:
            tok_lp = logp.gather(1, stack.lab_ids[:, None])[:, 0].to(dev)
            tok_lp = torch.where(valid, tok_lp, torch.zeros_like(tok_lp))
            prompt = stack.lab_prompt.to(dev)
            per_prompt = torch.zeros(stack.n_prompts, dtype=tok_lp.dtype, device=dev).index_add(0, prompt, tok_lp)
            count = torch.zeros_like(per_prompt).index_add(0, prompt, valid.to(tok_lp.dtype))
            # a prompt's T labels each add exp(its mean log p) · lab_w, lab_w = 1 / (T · rewrite prompts)
            share = (per_prompt / count.clamp_min(1))[prompt].exp() * stack.lab_w.to(dev, tok_lp.dtype)
            return torch.zeros(n, dtype=tok_lp.dtype, device=dev).index_add(0, req, share) > self.cutoff
        wrong = (logp.argmax(-1) != stack.lab_ids) & stack.lab_valid
        if self.prompts == "encore":
            wrong = wrong & ~stack.lab_bare
        n_wrong = torch.zeros_like(hits).index_add(0, req, wrong.long().to(dev))
        hits.add_((active & (n_wrong == 0)).long())
        return hits >= -self.cutoff


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

    @classmethod
    def concat(cls, parts: list["TargetValues"]) -> "TargetValues":
        """The results of consecutive chunks of requests as one (loss curves padded with NaN)."""
        if len(parts) == 1:
            return parts[0]
        n_it = max(p.losses.shape[0] for p in parts)
        pad = [torch.cat([p.losses, p.losses.new_full((n_it - p.losses.shape[0], p.losses.shape[1]), torch.nan)])
               for p in parts]
        return cls(values=torch.cat([p.values for p in parts]), v_init=torch.cat([p.v_init for p in parts]),
                   delta=torch.cat([p.delta for p in parts]), losses=torch.cat(pad, 1),
                   steps=[s for p in parts for s in p.steps])


def target_token_ids(tok, request: EditRequest, strip_bos: bool, skip: int | None = None) -> list[int]:
    """Token ids of ``" " + target_new`` as the references compute them (special tokens included;
    kmeng01 keeps a BOS, AlphaEdit strips it). ``skip`` (not None) drops exactly that many leading ids
    instead, as EMMET does on Llama-2 (its BOS and SentencePiece's lone "▁" before the spaced target);
    a dropped id that is neither BOS/UNK nor blank is logged, since the target then loses a piece."""
    ids = list(tok(request.target_new_spaced)["input_ids"])
    special = {tok.bos_token_id, tok.unk_token_id} - {None}
    if skip is not None:
        lost = [i for i in ids[:skip] if i not in special and tok.decode([i]).strip()]
        if lost:
            log.warning("request %s: dropping %d leading target token(s) drops %r of %r (this tokenizer puts "
                        "no blank piece before the target)", request.name, skip, tok.decode(lost), request.target_new)
        ids = ids[skip:]
    elif strip_bos and ids and ids[0] in special:
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


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log-softmax over the vocabulary in float32 (float64 logits stay float64)."""
    return torch.log_softmax(logits.float() if logits.dtype != torch.float64 else logits, -1)


def target_loss(nll_logits, kl_logits, kl_init, delta, init_norm, lab_ids, lab_req, lab_w, hp) -> torch.Tensor:
    """Each request's loss (n,): NLL + kl_factor · KL + v_weight_decay · ‖δ‖ / ‖v_init‖².

    nll_logits: (n_labels, vocab) at every target token of every rewrite prompt, with its token id,
    request and weight ``lab_w`` = 1 / (T · rewrite prompts); kl_logits, kl_init: (n, vocab) logits
    and initial log-probabilities at each request's KL prompt; delta: (n, d); init_norm: ‖v_init‖ (n,).
    """
    logp = log_probs(nll_logits)
    tok_lp = logp.gather(1, lab_ids[:, None])[:, 0]
    n = delta.shape[0]
    nll = torch.zeros(n, dtype=tok_lp.dtype, device=tok_lp.device).index_add(0, lab_req, -tok_lp * lab_w.to(tok_lp.dtype))
    kl_lp = log_probs(kl_logits)
    # kl_div(init, current, log_target=True, reduction="batchmean") with one KL prompt per request
    kl = (kl_lp.exp() * (kl_lp - kl_init)).sum(-1)
    decay = hp.v_weight_decay * delta.norm(dim=-1) / init_norm**2
    return (nll.to(delta.dtype) + hp.kl_factor * kl.to(delta.dtype)).to(delta.device) + decay


def target_prompts(tok, requests: Sequence[EditRequest], templates: Sequence[str], hp) -> tuple[list, list[int]]:
    """Per request: its prompts (each template filled with the request's prompt and the target's
    tokens but the last, then the KL prompt), their lookup positions, token ids and the target ids.
    Returns (rows, token counts): rows[r] = (token ids per prompt, lookup per prompt, target ids)."""
    out, sizes = [], []
    for req in requests:
        ids = target_token_ids(tok, req, hp.strip_target_bos, hp.target_skip_tokens)
        target_prefix = tok.decode(ids[:-1])
        prompts = [t.format(req.prompt) + target_prefix for t in templates] + [KL_PROMPT]
        toks = tok([p.format(req.subject) for p in prompts])["input_ids"]
        look = [lookup_index(tok, p, req.subject, hp.fact_token, hp.subject_index_rule) for p in prompts]
        for p_ids, p in zip(toks[:-1], look[:-1]):
            if len(p_ids) < len(ids):
                raise RequestError(f"request {req.name}: rewrite prompt shorter than its target")
        if any(not 0 <= p < len(t) for p, t in zip(look, toks)):
            raise RequestError(f"request {req.name}: lookup position outside its prompt")
        out.append((toks, look, ids))
        sizes.append(sum(len(t) for t in toks))
    return out, sizes


def prompt_set(tok, rows: list, device) -> PromptSet:
    """The :class:`PromptSet` of the requests' prompts from :func:`target_prompts` (request-major)."""
    all_toks, lookup, owner, bare, kl = [], [], [], [], []
    lab = ([], [], [], [], [])  # prompt, position, id, request, weight
    for r, (toks, look, ids) in enumerate(rows):
        first, T, n_rewrite = len(all_toks), len(ids), len(toks) - 1
        for j, (t, p) in enumerate(zip(toks, look)):
            if j < n_rewrite:  # the labels: the last T positions of each rewrite prompt
                for c, tid in enumerate(ids):
                    for col, x in zip(lab, (first + j, len(t) - T + c, tid, r, 1.0 / (T * n_rewrite))):
                        col.append(x)
            all_toks.append(t)
            lookup.append(p)
            owner.append(r)
        bare.append(first)
        kl.append(first + n_rewrite)
    return PromptSet(pad_batch(tok, all_toks, device), lookup, owner, bare, kl, *lab)


def _chunks(sizes: list[int], budget: int) -> list[range]:
    """Consecutive runs of requests whose token counts sum to at most ``budget`` (at least one)."""
    out, start, used = [], 0, 0
    for i, n in enumerate(sizes):
        if i > start and used + n > budget:
            out.append(range(start, i))
            start, used = i, 0
        used += n
    out.append(range(start, len(sizes)))
    return out


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
    early_stop: StopRule | None = None,
    early_stop_patience: int | None = None,
    early_stop_rule: str = "encore",
    autocast_dtype: torch.dtype | None = None,
    low_precision_weights: LowPrecisionWeights | None = None,
    pack: bool = True,
    sync_stop: bool = True,
    cuda_graph: bool = False,
    compile_step: bool = False,
    programs: StepPrograms | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
) -> TargetValues:
    """Optimise v* (ROME: ``delta_site="mlp"``, ``nll_from="logits"``) or z (MEMIT:
    ``delta_site="block"``, ``nll_from="loss_layer"``) for every request; values (n, d_model).

    ``templates``: the flat list of context templates (``"{}"`` first); ``layer``: where δ enters.
    Requests run in chunks of about ``chunk_tokens`` prompt tokens, each chunk's requests at once.

    ``early_stop``: a :class:`StopRule` (ENCORE passes its ``prob_cutoff`` in every mode). Fast-mode
    options (off in exact mode): ``early_stop_patience`` n with ``early_stop_rule`` (one of
    :data:`STOP_RULES`), the rule ``StopRule(−n, early_stop_rule)`` when ``early_stop`` is None;
    ``autocast_dtype`` (the upper layers under ``torch.autocast``, GPUs); ``low_precision_weights``
    (CPUs with native bf16: the upper layers and heads on cached bf16 weight copies). δ, the
    log-softmax, the loss and Adam stay in float32 (float64 for a float64 model).

    ``pack`` (both modes; it changes only rounding): run the suffixes from each lookup token on over
    a prefix cache instead of the padded prompts whole. ``sync_stop`` (default on): read the stop
    flags each step, leave once every request has stopped and drop stopped requests from the rows;
    off (GPU only), the loop never synchronises and runs all steps. ``cuda_graph``: one static step
    (Adam in torch's capturable form, counters on the device), captured as a CUDA graph on a GPU
    after ``GRAPH_WARMUP`` eager steps and replayed, the stop flag read every ``GRAPH_CHECK_EVERY``
    steps; on a CPU the same step runs uncaptured. It changes only rounding. ``compile_step``: the
    same static step with the layers above, the final norm and the heads through ``torch.compile``.
    ``programs`` (a session's :class:`~.stepping.StepPrograms`): a static step's compiled code and
    CUDA graph are kept there and reused by later calls of the same shapes, the prompts' columns and
    labels padded to a few sizes (:func:`~.stepping.bucket`), masked, so that later edits match.
    """
    hp = hp.resolve(adapter, model)  # a no-op for a session's hyperparameters
    n_layers = adapter.num_layers(model)
    if max(hp.v_loss_layer, layer) >= n_layers:
        raise ValueError(f"v_loss_layer {hp.v_loss_layer} is beyond the model's {n_layers} layers")
    with region("target/prepare"):
        rows, sizes = target_prompts(tok, requests, templates, hp)
    device = next(model.parameters()).device
    if early_stop is None and early_stop_patience:
        early_stop = StopRule(-int(early_stop_patience), early_stop_rule)
    opts = dict(delta_dtype=delta_dtype, early_stop=early_stop, sync_stop=sync_stop, cuda_graph=cuda_graph,
                compile_step=compile_step, programs=programs)
    bucketed = programs is not None and (cuda_graph or compile_step)
    saved_grad = [p.requires_grad for p in model.parameters()]
    parts = []
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for chunk in _chunks(sizes, chunk_tokens):
            with region("target/prepare"):
                prompts = prompt_set(tok, [rows[i] for i in chunk], device)
            with upper_stack(model, adapter, hp, prompts, layer, delta_site, nll_from, pack, autocast_dtype,
                             low_precision_weights, bucketed) as (stack, v_init):
                parts.append(optimise(stack, v_init, hp, **opts))
    finally:
        for p, g in zip(model.parameters(), saved_grad):
            p.requires_grad_(g)
    return TargetValues.concat(parts)


class _Deltas:
    """The optimisation's state per request: δ (n, d) and Adam's moments, stop flags, step counts;
    ``keep`` drops stopped requests (their results stay in ``delta_all``/``steps_all``)."""

    def __init__(self, v_init: torch.Tensor, hp, dtype, n_iter: int):
        n, dev = v_init.shape[0], v_init.device
        self.delta = torch.zeros(v_init.shape, dtype=dtype, device=dev, requires_grad=True)
        self.m, self.v = torch.zeros_like(self.delta), torch.zeros_like(self.delta)
        self.active = torch.ones(n, dtype=torch.bool, device=dev)
        self.hits = torch.zeros(n, dtype=torch.long, device=dev)
        self.steps = torch.zeros(n, dtype=torch.long, device=dev)
        self.init_norm = v_init.to(dtype).norm(dim=-1)
        self.max_norm = hp.clamp_norm_factor * self.init_norm
        self.kl_init: torch.Tensor | None = None
        self.fresh = True  # the next pass is the first (δ = 0): it sets kl_init
        self.ids = torch.arange(n, device=dev)
        self.delta_all, self.steps_all = self.delta.detach().clone(), self.steps.clone()
        self.loss_buf = torch.full((max(n_iter, 0), n), torch.nan, dtype=dtype, device=dev)
        self.it_t = torch.zeros(1, dtype=torch.long, device=dev)  # static form: loss_buf's row and
        self.step_t = torch.zeros((), dtype=dtype, device=dev)  # Adam's step, on the device

    def reset(self, v_init: torch.Tensor, hp) -> None:
        """Start over for new requests of the same shape, in place (a captured step keeps its tensors)."""
        with torch.no_grad():
            for x in (self.delta, self.m, self.v, self.hits, self.steps, self.delta_all, self.steps_all, self.it_t,
                      self.step_t):
                x.zero_()
            self.active.fill_(True)
            self.init_norm.copy_(v_init.to(self.init_norm.dtype).norm(dim=-1))
            self.max_norm.copy_(hp.clamp_norm_factor * self.init_norm)
            self.loss_buf.fill_(torch.nan)
        self.fresh = True

    def flush(self) -> None:
        self.delta_all[self.ids] = self.delta.detach()
        self.steps_all[self.ids] = self.steps

    def keep(self, keep: torch.Tensor) -> None:
        self.flush()
        for name in ("m", "v", "active", "hits", "steps", "init_norm", "max_norm", "ids"):
            setattr(self, name, getattr(self, name)[keep])
        self.kl_init = self.kl_init[keep] if self.kl_init is not None else None
        self.delta = self.delta.detach()[keep].requires_grad_(True)


def optimise(stack, v_init, hp, delta_dtype=None, early_stop: StopRule | None = None, sync_stop=True, cuda_graph=False,
             compile_step=False, programs: StepPrograms | None = None):
    """Adam on δ for every request of ``stack`` (an :class:`~.stepping.UpperStack`), the references'
    loop: ``v_num_grad_steps`` forward passes, stop before the backward once the loss is < 5e-2 or
    ``early_stop`` says so (each request on its own, as the references optimise one request at a
    time), the last pass only reports (so it is not run), the norm clamp after each step. With
    ``cuda_graph`` or ``compile_step`` the step is static (:func:`~.stepping.run_static`), run by a
    :class:`~.stepping.StepProgram` kept in ``programs`` when its stack allows."""
    dtype = delta_dtype or (torch.float64 if v_init.dtype == torch.float64 else torch.float32)
    n_iter = hp.v_num_grad_steps - 1
    program = None
    if cuda_graph or compile_step:
        program = _program(stack, v_init, hp, dtype, (early_stop, sync_stop), cuda_graph, compile_step, programs)
    stack, st = (program.stack, program.state) if program is not None else (stack, _Deltas(v_init, hp, dtype, n_iter))
    logits = program.call_logits if program is not None else stack.logits

    def forward_loss(it: int | None) -> torch.Tensor:
        with region("target/forward"):
            nll_logits, kl_logits = logits(st.delta)
            if st.fresh:  # the first pass (δ = 0) gives the KL's reference distribution
                lp = log_probs(kl_logits.detach())
                st.kl_init, st.fresh = (lp if st.kl_init is None else st.kl_init.copy_(lp)), False
            loss = target_loss(nll_logits, kl_logits, st.kl_init, st.delta, st.init_norm, stack.lab_ids,
                               stack.lab_req, stack.lab_w, hp)
        shown = torch.where(st.active, loss.detach(), torch.nan)
        if it is None:
            st.loss_buf.index_copy_(0, st.it_t, shown[None])
        else:
            st.loss_buf[it, st.ids] = shown
        if early_stop is not None:  # ENCORE checks its rule before the loss threshold
            st.active.logical_and_(~early_stop.stops(log_probs(nll_logits.detach()), stack, st.hits, st.active))
        st.active.logical_and_(~(loss.detach() < STOP_LOSS))
        return loss

    def backward_update(loss: torch.Tensor, it: int | None) -> None:
        with region("target/backward"):
            grad = torch.autograd.grad(loss.sum(), st.delta)[0]
        with region("target/adam"), torch.no_grad():
            if it is None:
                st.step_t.add_(1)
                st.it_t.add_(1)
            _adam_step(st.delta, grad, st.m, st.v, st.step_t if it is None else it + 1, hp.v_lr, st.active)
            norms = st.delta.norm(dim=-1)
            over = st.active & (norms > st.max_norm)
            st.delta.mul_(torch.where(over, st.max_norm / norms, torch.ones_like(norms))[:, None])
            st.steps.add_(st.active.long())

    device = v_init.device
    if cuda_graph or compile_step:
        use_graph = cuda_graph and device.type == "cuda" and n_iter > stepping.GRAPH_WARMUP and \
            len({p.device for p in stack.model.parameters()}) == 1  # not over a device_map
        n_run = stepping.run_static(forward_loss, backward_update, n_iter, st.active, use_graph, sync_stop, program)
    else:
        n_run = _run_eager(forward_loss, backward_update, n_iter, st, stack, sync_stop or device.type == "cpu")
    st.flush()
    return _result(v_init, st, n_run)


def _program(stack, v_init, hp, dtype, stopping: tuple, cuda_graph: bool, compile_step: bool,
             programs: StepPrograms | None):
    """The static step's :class:`~.stepping.StepProgram` for ``stack`` (kept in ``programs``, else
    for this call alone) with its state set for ``v_init``; None when the stack's step cannot be kept.
    Its key: what the step's code depends on besides the stack (``stopping``, the loss's constants)."""
    n_iter = hp.v_num_grad_steps - 1
    key = (dtype, n_iter, stopping, cuda_graph, hp.v_lr, hp.kl_factor, hp.v_weight_decay, hp.clamp_norm_factor)
    if cuda_graph:  # a CUDA graph reads each weight where it was when the graph was captured
        key += (tuple(p.data_ptr() for p in stack.model.parameters()),)
    program = (programs if programs is not None else StepPrograms()).get(stack, key, compile_step)
    if program is None:
        return None
    if program.state is None:
        program.state = _Deltas(v_init, hp, dtype, n_iter)
    else:
        program.state.reset(v_init, hp)
    return program


def _run_eager(forward_loss, backward_update, n_iter: int, st: _Deltas, stack, read_flags: bool) -> int:
    """The loop step by step; with ``read_flags`` it leaves once every request has stopped and drops
    stopped requests from the rows before the next step. Returns the forward passes run."""
    n_run = 0
    for it in range(n_iter):
        loss = forward_loss(it)
        n_run = it + 1
        n_active = int(st.active.sum()) if read_flags else len(st.active)
        if n_active == 0:
            break
        backward_update(loss, it)
        if n_active < len(st.active) and it + 1 < n_iter:
            keep = st.active.clone()
            st.keep(keep)
            stack.keep(keep)
    return n_run


def _result(v_init: torch.Tensor, st: _Deltas, n_run: int) -> TargetValues:
    delta = st.delta_all.clone()  # a kept program's state is reused by the next call
    loss_curve = st.loss_buf[:n_run].clone().cpu()
    while len(loss_curve) and bool(loss_curve[-1].isnan().all()):
        loss_curve = loss_curve[:-1]  # a static loop runs on after every request has stopped
    return TargetValues(values=v_init.to(delta.dtype) + delta, v_init=v_init, delta=delta, losses=loss_curve,
                        steps=st.steps_all.tolist())
