"""The machinery that runs the target-value optimisation fast (the math is in :mod:`.target`).

δ enters the residual stream right after the edit layer, so everything below it is computed once
(δ = 0 there) and each step runs only the layers above (:class:`UpperStack`, on fastedit's own
forward of them, :mod:`fastedit.models.stack`): either over the
prompts' suffixes from their lookup token on, one request per row, on top of a cache of their
prefixes (:mod:`.suffix`), or over the padded prompts whole. Logits are read only where the loss
reads them. Requests that have stopped are dropped from the rows (``UpperStack.keep``), so a batch
costs what its requests' own steps cost. On GPUs the step can run as one static, capturable step
replayed as a CUDA graph (:func:`run_static`).
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from ..models.adapters import ModelAdapter, get_module
from ..models.precision import LowPrecisionWeights
from ..models.stack import owned_reader, upper_stack as model_stack
from ..models.tracing import record
from ..profiling import region
from .keys import TokenBatch
from .suffix import SuffixLayout

__all__ = ["PromptSet", "UpperStack", "upper_stack", "run_static", "bucket", "StepProgram", "StepPrograms", "GRAPH_WARMUP",
           "GRAPH_CHECK_EVERY"]

GRAPH_WARMUP = 3  # eager steps before a CUDA graph is captured (cuBLAS and autograd set up lazily)
GRAPH_CHECK_EVERY = 4  # a static loop reads the stop flag once every this many steps

log = logging.getLogger(__name__)


@dataclass
class PromptSet:
    """The prompts of n requests, request-major (each request's rewrite prompts, then its KL prompt).

    ``lookup``/``owner``: per prompt, the lookup position and the request. ``bare``/``kl``: per
    request, the index of its first rewrite prompt (v_init is read there) and of its KL prompt.
    ``lab_*``: per target token of every rewrite prompt: prompt, position, token id, request and its
    weight in the NLL (1 / (T · prompts per request)).
    """

    batch: TokenBatch
    lookup: list[int]
    owner: list[int]
    bare: list[int]
    kl: list[int]
    lab_prompt: list[int]
    lab_pos: list[int]
    lab_ids: list[int]
    lab_req: list[int]
    lab_w: list[float]


def _at(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``x[rows, cols]`` with the indices moved to ``x``'s device (a no-op on one device)."""
    return x[rows.to(x.device), cols.to(x.device)]


class UpperStack:
    """The layers above the edit layer for n requests' prompts, each request's δ (n, d) added at its
    prompts' lookup tokens. Rows are the packed suffixes (one request per row) or the padded prompts.

    ``base``: (rows, L, d) residual stream after the edit layer; ``look_*`` per prompt, ``lab_*`` per
    label, ``kl_*`` per request: (row, column) where δ enters, where the NLL and the KL are read.
    Per label also its token id, request, NLL weight, prompt (an index below ``n_prompts``, kept as
    requests are dropped) and whether that prompt is its request's first, bare one (``lab_bare``).
    """

    def __init__(self, model, adapter: ModelAdapter, hp, layer: int, nll_from: str, run_dtype, autocast):
        self.model, self.adapter, self.layer, self.nll_from = model, adapter, layer, nll_from
        self.run_dtype, self.autocast = run_dtype, autocast
        n_layers = adapter.num_layers(model)
        self.loss_layer = max(hp.v_loss_layer, layer)
        self.read_loss_layer = nll_from == "loss_layer" and self.loss_layer < n_layers - 1
        self.lm_w, self.lm_b = adapter.lm_head(model)
        if hp.lm_head_module:
            head = get_module(model, hp.lm_head_module)
            self.lm_w, self.lm_b = head.weight, getattr(head, "bias", None)
        self.ln_f = get_module(model, hp.ln_f_module)
        self.model_head = model.get_output_embeddings()
        self.out_dev = self.lm_w.device
        self.layers = model_stack(model, adapter, layer + 1)  # fastedit's own forward, or transformers' modules
        self.layout = self.cache = self.attention_mask = None

    def place(self, prompts: PromptSet, hidden: torch.Tensor, pack: bool, boolean_mask: bool,
              bucketed: bool = False) -> None:
        """Lay out the rows: the suffixes over a prefix cache (``pack``) or the padded prompts whole.
        ``bucketed``: prefix and suffix columns, labels and the rotary table padded to :func:`bucket`
        sizes (masked, weight 0), so that edits of similar lengths share one :class:`StepProgram`."""
        dev, lengths = hidden.device, prompts.batch.lengths.tolist()
        t = lambda x: torch.tensor(x, device=dev)  # noqa: E731
        n_lab = len(prompts.lab_ids)
        pad = bucket(n_lab) - n_lab if bucketed else 0
        lab_p, lab_pos = t(prompts.lab_prompt + [0] * pad), t(prompts.lab_pos + [prompts.lookup[0]] * pad)
        look_p = t(list(range(len(prompts.lookup))))
        kl_p, look_pos = t(prompts.kl), t(prompts.lookup)
        self.look_req = t(prompts.owner)
        if pack:
            rows = [[] for _ in prompts.bare]
            for i, r in enumerate(prompts.owner):
                rows[r].append(i)
            self.layout = SuffixLayout.build(lengths, prompts.lookup, hidden.shape[1], dev, self.run_dtype,
                                             boolean_mask=boolean_mask, bins=rows, size=bucket if bucketed else None)
            flat = hidden.reshape(-1, hidden.shape[-1])
            self.cache = self.layout.prefix_cache(self.layers, flat.to(self.run_dtype))
            if bucketed and self.cache.rope_table is not None:  # rows past the last position are never read
                self.cache.rope_table = tuple(F.pad(x, (0, 0, 0, bucket(x.shape[0]) - x.shape[0]))
                                              for x in self.cache.rope_table)
            self.base = flat[self.layout.suf_index]  # (rows, Q, d)
            self.look_r, self.look_c = self.layout.slot_row, self.layout.slot_start
            self.lab_r, self.lab_c = self.layout.slots(lab_p, lab_pos)
            self.kl_r, self.kl_c = self.layout.slots(kl_p, look_pos[kl_p])
            self.row_owner = torch.arange(len(rows), device=dev)
        else:
            self.attention_mask = prompts.batch.attention_mask
            self.base = hidden
            self.look_r, self.look_c = look_p, look_pos
            self.lab_r, self.lab_c = lab_p, lab_pos
            self.kl_r, self.kl_c = kl_p, look_pos[kl_p]
            self.row_owner = self.look_req
        o = self.out_dev
        lab_req = t(prompts.lab_req + [0] * pad)
        self.lab_ids, self.lab_req = t(prompts.lab_ids + [0] * pad).to(o), lab_req.to(o)
        self.lab_w = torch.tensor(prompts.lab_w + [0.0] * pad, dtype=torch.float64, device=o)
        self.lab_valid = (torch.arange(n_lab + pad, device=o) < n_lab)
        self.lab_prompt, self.n_prompts = lab_p.to(o), len(prompts.lookup)
        self.lab_bare = (t(prompts.bare)[lab_req] == lab_p).to(o)

    def _run(self, h: torch.Tensor, capture: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Layers above the edit layer over the rows ``h`` (rows, L, d) → (the last hidden state after
        the final norm, the output of layer ``capture`` or None)."""
        if self.layout is not None:
            return self.layout.run_suffix(self.layers, h, self.cache, capture)
        return self.layers.forward(h, self.attention_mask, capture)

    def logits(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """δ (n, d) → (logits at every label (n_labels, vocab), logits at each KL prompt (n, vocab)):
        the NLL's from the model's head or from ``ln_f(h at the loss layer) @ W_lm + b_lm``."""
        add = torch.zeros_like(self.base)
        add[self.look_r, self.look_c] = delta[self.look_req].to(self.base.dtype)
        h = (self.base + add).to(self.run_dtype)
        rows, cols = self.lab_r, self.lab_c
        with self.autocast:
            if self.read_loss_layer and self.loss_layer == self.layer:
                top, _ = self._run(h)  # the loss reads the edited layer's own (δ-shifted) output
                nll_hidden = self.ln_f(h[rows, cols])
            elif self.read_loss_layer:
                top, at_loss_layer = self._run(h, capture=self.loss_layer)
                nll_hidden = self.ln_f(_at(at_loss_layer, rows, cols))
            else:
                top, _ = self._run(h)
                nll_hidden = _at(top, rows, cols)
            kl_top = _at(top, self.kl_r, self.kl_c).to(self.out_dev)
            if self.nll_from == "logits":
                nll_logits = self.model_head(nll_hidden.to(self.out_dev))
            else:
                nll_logits = F.linear(nll_hidden.to(self.out_dev), self.lm_w, self.lm_b)
            return nll_logits, self.model_head(kl_top)

    def keep(self, keep_req: torch.Tensor) -> None:
        """Drop the requests whose ``keep_req`` (n,) is false: their rows, prompts and labels."""
        req_new = torch.cumsum(keep_req.long(), 0) - 1
        row_keep = keep_req[self.row_owner]
        row_new = torch.cumsum(row_keep.long(), 0) - 1
        sel = keep_req[self.look_req]
        self.look_r, self.look_c = row_new[self.look_r[sel]], self.look_c[sel]
        self.look_req = req_new[self.look_req[sel]]
        o = self.out_dev
        sel = keep_req.to(o)[self.lab_req]
        self.lab_r, self.lab_c = row_new[self.lab_r[sel.to(row_new.device)]], self.lab_c[sel.to(self.lab_c.device)]
        self.lab_ids, self.lab_w, self.lab_req = self.lab_ids[sel], self.lab_w[sel], req_new.to(o)[self.lab_req[sel]]
        self.lab_prompt, self.lab_bare, self.lab_valid = self.lab_prompt[sel], self.lab_bare[sel], self.lab_valid[sel]
        self.kl_r, self.kl_c = row_new[self.kl_r[keep_req]], self.kl_c[keep_req]
        self.base, self.row_owner = self.base[row_keep], req_new[self.row_owner[row_keep]]
        if self.layout is not None:
            self.layout = self.layout.rows(row_keep)
            self.cache = self.cache.rows(row_keep)
        else:
            self.attention_mask = self.attention_mask[row_keep]


    def buffers(self) -> list[torch.Tensor]:
        """Every tensor a step reads, in a fixed order (a :class:`StepProgram` copies a later stack's
        into its own); empty when the rows run through transformers' modules and their cache objects."""
        if self.cache is not None and self.cache.module_cache is not None:
            return []
        own = [self.base, self.look_r, self.look_c, self.look_req, self.lab_r, self.lab_c, self.lab_ids, self.lab_req,
               self.lab_w, self.lab_prompt, self.lab_bare, self.lab_valid, self.kl_r, self.kl_c, self.row_owner]
        if self.layout is None:
            return own + [self.attention_mask]
        c = self.cache
        return own + [self.layout.suf_pos, self.layout.suf_mask, c.positions, *c.keys, *c.values, *(c.rope_table or ())]

    def signature(self) -> tuple:
        """What a step's code depends on besides the buffers' values: their shapes, dtypes and
        devices, where the loss is read, the precision it runs in."""
        shapes = tuple((tuple(x.shape), x.dtype, x.device) for x in self.buffers())
        return shapes, self.layer, self.loss_layer, self.read_loss_layer, self.nll_from, self.run_dtype, \
            type(self.layers).__name__, getattr(self.autocast, "fast_dtype", None), self.layout is None


@contextlib.contextmanager
def upper_stack(
    model, adapter: ModelAdapter, hp, prompts: PromptSet, layer: int, delta_site: str, nll_from: str,
    pack: bool = True, autocast_dtype=None, low_precision_weights: LowPrecisionWeights | None = None,
    bucketed: bool = False,
) -> Iterator[tuple[UpperStack, torch.Tensor]]:
    """The pass below the edit layer (δ = 0), once, then the :class:`UpperStack` above it; yields
    (stack, v_init (n, d) in the model's dtype: the δ site's output at each bare prompt's lookup
    token). With ``low_precision_weights`` the upper layers, final norm and heads run on their
    low-precision copies for as long as the context is open. ``bucketed``: see :meth:`UpperStack.place`."""
    batch = prompts.batch
    with region("target/prefix"), torch.no_grad():
        hidden, site = _below(model, adapter, hp, batch, layer, delta_site)
        bare = torch.tensor(prompts.bare, device=site.device)
        v_init = site[bare, torch.tensor(prompts.lookup, device=site.device)[bare]].clone()
    run_dtype, swap = hidden.dtype, contextlib.nullcontext()
    if low_precision_weights is not None and autocast_dtype is None:
        upper = list(get_module(model, adapter.layers))[layer + 1 :]
        modules = upper + [get_module(model, hp.ln_f_module), model.get_output_embeddings()]
        if hp.lm_head_module:
            modules.append(get_module(model, hp.lm_head_module))
        if adapter.position_embedding:  # GPT-2 adds zero positions in its dtype (upper_layers_only)
            modules.append(get_module(model, adapter.position_embedding))
        swap = low_precision_weights.swapped(modules)
        run_dtype = low_precision_weights.dtype
    autocast = (torch.autocast(device_type=hidden.device.type, dtype=autocast_dtype)
                if autocast_dtype is not None else contextlib.nullcontext())
    stack = UpperStack(model, adapter, hp, layer, nll_from, run_dtype, autocast)
    with swap:
        with region("target/prefix"):
            stack.place(prompts, hidden, pack and stack.layers.packs, boolean_mask=True, bucketed=bucketed)
        yield stack, v_init


def _below(model, adapter: ModelAdapter, hp, batch: TokenBatch, layer: int, delta_site: str):
    """The padded prompts through layers 0..``layer`` → (the residual stream after ``layer``, the δ
    site's output there: that stream, or ``layer``'s MLP output), each (B, S, d); on fastedit's own
    forward where it covers the model, else with hooks on the model's modules."""
    owned = owned_reader(model, adapter, hp, [layer])
    if owned is not None:
        got = owned.read(owned.embed(batch.input_ids), batch.attention_mask, 0, layer + 1, blocks=(layer,),
                         mlps=(layer,) if delta_site == "mlp" else ())
        hidden = got["block", layer]
        return hidden, got["mlp", layer] if delta_site == "mlp" else hidden
    block_name, mlp_name = hp.layer_module_tmp.format(layer), hp.mlp_module_tmp.format(layer)
    outs = [block_name] + ([mlp_name] if delta_site == "mlp" else [])
    with record(model, outputs=outs, stop_after=block_name) as rec:
        model(**batch.model_inputs(), use_cache=False)
    hidden = rec.outputs[block_name]
    return hidden, rec.outputs[mlp_name] if delta_site == "mlp" else hidden


def run_static(forward_loss, backward_update, n_iter: int, active, use_graph: bool, sync_stop: bool,
               program: "StepProgram | None" = None) -> int:
    """The optimisation as one static step (forward, loss, backward, Adam) repeated ``n_iter`` times:
    the first ``GRAPH_WARMUP`` steps run eagerly (on a side stream when capturing), then, with
    ``use_graph``, one step is captured as a CUDA graph and replayed for the rest; without it (CPUs,
    tests) the same step is called directly. A ``program`` that already holds a graph (captured by an
    earlier edit of the same shapes) replays it after one eager step (the KL's reference pass); one
    that holds none keeps the graph it captures. The stop flag is read once every
    ``GRAPH_CHECK_EVERY`` steps (if ``sync_stop``); stopped requests stay frozen on the device in
    between. Returns the number of steps run. If capture fails, the remaining steps run eagerly."""

    def step():
        backward_update(forward_loss(None), None)

    done, graph = 0, program.graph if program is not None else None
    if use_graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(min(n_iter, 1 if graph is not None else GRAPH_WARMUP)):
                step()
        torch.cuda.current_stream().wait_stream(side)
        done = min(n_iter, 1 if graph is not None else GRAPH_WARMUP)
        if done == n_iter or (sync_stop and not bool(active.any())):
            return done
        if graph is None:
            graph = _capture(step)
            if program is not None:
                program.graph = graph
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


def _capture(step) -> "torch.cuda.CUDAGraph | None":
    """``step`` captured as a CUDA graph (None if capture fails: the caller runs it eagerly)."""
    graph = torch.cuda.CUDAGraph()
    try:
        with region("target/capture"), torch.cuda.graph(graph):
            step()
    except Exception as exc:  # e.g. an operation the model runs is not capturable
        log.warning("CUDA graph capture of the optimisation step failed (%s); running it eagerly", exc)
        return None
    return graph


def bucket(n: int) -> int:
    """The padded size for ``n`` columns or labels: the smallest of 8, 12, 16, 24, 32, 48, 64, ...
    (8·2^k and 12·2^k) that holds n, at most 1.5 n for n ≥ 8."""
    size = 8
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


class StepProgram:
    """One optimisation step of one shape, kept across edits so that it is compiled or captured once.

    ``stack``: the first :class:`UpperStack` of this shape; its tensors are the step's buffers, and a
    later stack of the same :meth:`~UpperStack.signature` is copied into them (:meth:`load`).
    ``state``: the optimisation's state (δ, Adam's moments, stop flags), reset by the caller for each
    edit. ``logits``: ``stack.logits``, or its ``torch.compile`` (compiled at its first call);
    ``graph``: the CUDA graph of the whole step once one edit has captured it.
    """

    def __init__(self, stack: UpperStack, compile_step: bool):
        self.stack, self.state, self.graph, self.uses = stack, None, None, 0
        self.compile_step = compile_step
        self.compiled = False  # the first call of a compiled ``logits`` compiles it
        self.logits = stack.logits
        if compile_step:
            try:
                self.logits = torch.compile(stack.logits, dynamic=False)
            except Exception as exc:  # no compiler backend for this platform
                log.warning("torch.compile of the optimisation step is unavailable (%s); running it eagerly", exc)
                self.compile_step = False

    def load(self, stack: UpperStack) -> None:
        """Copy ``stack``'s tensors (same signature) into this program's buffers."""
        with torch.no_grad():
            for dst, src in zip(self.stack.buffers(), stack.buffers()):
                dst.copy_(src)
        self.stack.n_prompts = stack.n_prompts

    def call_logits(self, delta: torch.Tensor):
        """``stack.logits(delta)``; the first call of a compiled program compiles (timed apart as
        ``target/compile``), and falls back to the eager step, logged, if compiling fails."""
        if not self.compile_step or self.compiled:
            return self.logits(delta)
        self.compiled = True
        try:
            with region("target/compile"):
                return self.logits(delta)
        except Exception as exc:  # a missing C++ compiler, an operation inductor cannot lower
            log.warning("torch.compile of the optimisation step failed (%s); running it eagerly", exc)
            self.logits, self.compile_step = self.stack.logits, False
            return self.logits(delta)


class StepPrograms:
    """A session's :class:`StepProgram` per step signature, the ``limit`` most recently used kept."""

    def __init__(self, limit: int = 8):
        self.limit, self.programs, self.built = limit, OrderedDict(), 0

    def get(self, stack: UpperStack, key: tuple, compile_step: bool) -> StepProgram | None:
        """The program for ``stack`` under ``key``, with ``stack``'s tensors loaded into it (built now
        if there is none; ``built`` counts them); None for a stack whose step cannot be kept."""
        if not stack.buffers():
            return None
        key = (stack.signature(), key, compile_step)
        program = self.programs.get(key)
        if program is not None:
            self.programs.move_to_end(key)
            program.load(stack)
            return program
        program = self.programs[key] = StepProgram(stack, compile_step)
        self.built += 1
        while len(self.programs) > self.limit:
            self.programs.popitem(last=False)
        return program
