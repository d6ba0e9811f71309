"""fastedit's own forward of a model's decoder layers: those above the edit layer, and reading passes.

The target-value optimisation runs layers ``[start, n_layers)`` tens of times per edit. Through
transformers' modules each layer costs about 0.2 ms of Python per pass (module calls, hooks,
keyword handling, mask and cache objects), which bounds edit speed on a GPU and on narrow models.
:class:`OwnedStack` runs the same arithmetic as plain functions over the model's own parameters,
read from its modules at every call (so fast mode's bf16 ``param.data`` swap and earlier edits are
seen; nothing is copied), with its own key/value cache for packed prefixes.

:func:`upper_stack` returns it, or :class:`ModuleStack` (transformers' modules, the same interface)
for a model it does not cover, saying why in one log line per model. :func:`owned_reader` gives the
whole model as one, whose :meth:`OwnedStack.read` returns what hooks on a layer, its MLP and the MLP's
output projection would record (the pass below the edit layer, MEMIT's key passes) without module
calls; where it returns None its callers use hooks.

Shapes: hidden states (rows, S, d); positions (rows, S); boolean masks (rows, 1, S_query, S_key),
True where a query may attend to a key. Every function returns the hidden state after the final norm
and, when ``capture`` names a layer, that layer's own output (the residual stream after it).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import ModelAdapter, get_module

__all__ = ["upper_stack", "owned_reader", "OwnedStack", "ModuleStack", "PrefixCache", "unsupported_reason", "ROPE_TYPES"]

log = logging.getLogger(__name__)

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")  # as transformers' rotary modules compute them
# attention implementations that compute plain softmax attention under the mask the model builds
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


# ----------------------------------------------------------------------------- pieces of a layer
def _linear(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, mod.weight, mod.bias)


def _conv1d(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """GPT-2's ``Conv1D``: weight stored (in, out); ``linear`` of its transpose is one GEMM, no copy."""
    return F.linear(x, mod.weight.T, mod.bias)


def _norm(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm, or the Llama family's RMSNorm: statistics in at least float32 (as transformers'),
    the weight applied in ``x``'s dtype."""
    if isinstance(mod, nn.LayerNorm):
        return F.layer_norm(x, mod.normalized_shape, mod.weight, mod.bias, mod.eps)
    up = torch.promote_types(x.dtype, torch.float32)
    y = F.rms_norm(x if x.dtype == up else x.to(up), mod.weight.shape, eps=mod.variance_epsilon)
    return mod.weight * (y if y.dtype == x.dtype else y.to(x.dtype))


def _heads(x: torch.Tensor, rows: int, head_dim: int) -> torch.Tensor:
    """(rows·S, n·hd) → (rows, n, S, hd)."""
    return x.view(rows, x.shape[0] // rows, -1, head_dim).transpose(1, 2)


def _qkv_gpt2(attn: nn.Module, h: torch.Tensor, rows: int):
    y = _conv1d(attn.c_attn, h).view(rows, h.shape[0] // rows, 3, -1, attn.head_dim)  # [q | k | v], each per head
    return y.permute(2, 0, 3, 1, 4).unbind(0)


def _qkv_separate(attn: nn.Module, h: torch.Tensor, rows: int):
    hd = attn.head_dim
    return (_heads(_linear(attn.q_proj, h), rows, hd), _heads(_linear(attn.k_proj, h), rows, hd),
            _heads(_linear(attn.v_proj, h), rows, hd))


def _qkv_neox(attn: nn.Module, h: torch.Tensor, rows: int):
    # fused per head: [q_h | k_h | v_h] for each head h in turn
    return _heads(_linear(attn.query_key_value, h), rows, 3 * attn.head_size).chunk(3, dim=-1)


def _inner_gpt2(mlp: nn.Module, h: torch.Tensor, act: Callable) -> torch.Tensor:
    return act(_conv1d(mlp.c_fc, h))


def _inner_gptj(mlp: nn.Module, h: torch.Tensor, act: Callable) -> torch.Tensor:
    return act(_linear(mlp.fc_in, h))


def _inner_neox(mlp: nn.Module, h: torch.Tensor, act: Callable) -> torch.Tensor:
    return act(_linear(mlp.dense_h_to_4h, h))


def _inner_gated(mlp: nn.Module, h: torch.Tensor, act: Callable) -> torch.Tensor:
    return act(_linear(mlp.gate_proj, h)) * _linear(mlp.up_proj, h)


@dataclass(frozen=True)
class _Family:
    """Where one family keeps the parts of a decoder layer, and how they combine."""

    attn: str  # the attention module in a layer
    norm1: str
    norm2: str | None  # None: the MLP reads norm1's output (GPT-J)
    # Token-wise parts work on (rows·S, width): one GEMM each, no view to undo in the backward pass.
    qkv: Callable  # (attention module, h (rows·S, d), rows) -> q (rows, H, S, hd), k, v (rows, H_kv, S, hd)
    attn_out: str  # the attention's output projection
    mlp_inner: Callable  # (mlp module, h, activation) -> (rows·S, d_ff): the input of its output projection
    mlp_down: str  # the MLP's output projection (the module MEMIT-family methods edit)
    project: Callable  # (projection module, x) -> x Wᵀ + b in this family's weight layout
    parallel: Callable[[nn.Module], bool]  # attention and MLP both read the layer's input
    rope: str | None  # None, "half" (rotate_half, Llama/NeoX) or "pairs" (rotate-every-two, GPT-J)
    act_key: str  # the config attribute naming the MLP activation


_FAMILIES = {
    "gpt2": _Family("attn", "ln_1", "ln_2", _qkv_gpt2, "c_proj", _inner_gpt2, "c_proj", _conv1d,
                    lambda _: False, None, "activation_function"),
    "gptj": _Family("attn", "ln_1", None, _qkv_separate, "out_proj", _inner_gptj, "fc_out", _linear,
                    lambda _: True, "pairs", "activation_function"),
    "gpt_neox": _Family("attention", "input_layernorm", "post_attention_layernorm", _qkv_neox, "dense", _inner_neox,
                        "dense_4h_to_h", _linear, lambda layer: bool(layer.use_parallel_residual), "half", "hidden_act"),
    "llama": _Family("self_attn", "input_layernorm", "post_attention_layernorm", _qkv_separate, "o_proj",
                     _inner_gated, "down_proj", _linear, lambda _: False, "half", "hidden_act"),
}
_FAMILIES["mistral"] = _FAMILIES["qwen2"] = _FAMILIES["llama"]

# the activations with one fused torch op (NewGELU is the tanh approximation, written out in Python)
_ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
}


def _activation(name: str) -> Callable:
    if name in _ACTIVATIONS:
        return _ACTIVATIONS[name]
    from transformers.activations import ACT2FN

    return ACT2FN[name]


# ----------------------------------------------------------------------------- rotary embedding
def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


class _Rope:
    """cos and sin (rows, 1, S, rotary_dim) for one set of positions; rotates the first rotary_dim
    features of each head and passes the rest."""

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor, style: str):
        self.cos, self.sin = cos, sin
        self.turn = _rotate_half if style == "half" else _rotate_pairs

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rot = self.cos.shape[-1]
        if rot == x.shape[-1]:
            return x * self.cos + self.turn(x) * self.sin
        xr, xp = x[..., :rot], x[..., rot:]
        return torch.cat((xr * self.cos + self.turn(xr) * self.sin, xp), dim=-1)


# ----------------------------------------------------------------------------- the owned stack
@dataclass
class PrefixCache:
    """Keys and values (after rotary) of packed prefixes at each layer of a stack, (rows, H_kv, P, hd),
    and the prefixes' positions (rows, P). Read-only: suffix passes extend copies."""

    keys: list
    values: list
    positions: torch.Tensor
    rope_table: tuple | None = None  # (cos, sin) by position, shared with the suffix passes
    module_cache: object = None  # the transformers cache, for ModuleStack

    def rows(self, keep: torch.Tensor) -> "PrefixCache":
        """The cache of the packed rows where ``keep`` (rows,) is true; this one is left as it was."""
        return PrefixCache([k[keep] for k in self.keys], [v[keep] for v in self.values], self.positions[keep],
                           self.rope_table, _select(self.module_cache, keep) if self.module_cache is not None else None)


class OwnedStack:
    """Decoder layers ``[start, n_layers)``, the final norm and the LM head of one model, as plain
    functions over its parameters (see the module docstring). Build with :func:`upper_stack`."""

    packs = True  # runs packed prefixes and suffixes under any attention implementation

    def __init__(self, model: nn.Module, adapter: ModelAdapter, start: int):
        cfg = model.config
        self.model, self.adapter, self.start = model, adapter, start
        self.family = _FAMILIES[cfg.model_type]
        self.base = get_module(model, adapter.base_model)
        self.layers = list(get_module(model, adapter.layers))[start:]
        self.final_norm = get_module(model, adapter.ln_f_module)
        self.act = _activation(getattr(cfg, self.family.act_key))
        self.n_layers = start + len(self.layers)
        window = getattr(cfg, "sliding_window", None)
        types = getattr(cfg, "layer_types", None)
        # Mistral slides every layer when sliding_window is set; Qwen2 the layers its layer_types mark
        self.windows = [
            window if window is not None and (not isinstance(types, list) or types[i] == "sliding_attention") else None
            for i in range(start, self.n_layers)
        ]

    # -------------------------------------------------------------- public interface
    def prefix(self, hidden: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
               n_positions: int | None = None) -> PrefixCache:
        """Packed prefixes (rows, P, d) with their positions and mask (rows, 1, P, P) → their cache.
        ``n_positions`` (default: the largest prefix position + 1) bounds the positions of every later
        suffix: rotary tables cover 0..n_positions-1, computed in one call as for a sequence that long
        (dynamic rope scaling depends on it). Runs without gradients."""
        n = n_positions if n_positions is not None else int(positions.max()) + 1
        with torch.no_grad():
            table = self._rope_table(hidden, n)
            kv: list = []
            self._layers(hidden, positions, positions, mask, None, kv, None, table)
        return PrefixCache([k for k, _ in kv], [v for _, v in kv], positions, rope_table=table)

    def suffix(self, hidden, positions, mask, cache: PrefixCache, capture: int | None = None):
        """Packed suffixes (rows, Q, d) attending to ``cache`` and to themselves under ``mask``
        (rows, 1, Q, P + Q) over [cached prefix, suffix] → (final-normed hidden (rows, Q, d), the
        output of layer ``capture`` or None)."""
        key_pos = torch.cat((cache.positions, positions), dim=1)
        return self._layers(hidden, positions, key_pos, mask, cache, None, capture, cache.rope_table)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, capture: int | None = None):
        """A right-padded batch (B, S, d) with its (B, S) attention mask, positions 0..S-1 → as
        :meth:`suffix`."""
        B, S = attention_mask.shape
        pos = torch.arange(S, device=hidden.device).expand(B, S)
        ok = _padded_causal(attention_mask)
        return self._layers(hidden, pos, pos, ok[:, None], None, None, capture, self._rope_table(hidden, S))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The LM head on final-normed hidden states (..., d) → (..., vocab)."""
        head = self.model.get_output_embeddings()
        return F.linear(h, head.weight, getattr(head, "bias", None))

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, S) at positions 0..S-1 → the residual stream entering layer 0 (B, S, d):
        the token embeddings, plus the learned position embeddings where the family has them."""
        x = F.embedding(input_ids, self.model.get_input_embeddings().weight)
        if self.adapter.position_embedding is not None:
            wpe = get_module(self.model, self.adapter.position_embedding).weight
            x = x + wpe[: input_ids.shape[1]]
        return x

    def read(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int,
             blocks=(), mlp_inputs=(), mlps=()) -> dict:
        """Layers ``[start, stop)`` (model indices, within this stack) over a right-padded batch:
        ``hidden`` (B, S, d) the stream entering layer ``start``, ``attention_mask`` (B, S), positions
        0..S-1. Returns {("block" | "mlp_in" | "mlp", layer): (B, S, width)}: the output of each layer
        in ``blocks``, the input of the MLP's output projection of each in ``mlp_inputs`` and the MLP's
        output of each in ``mlps``: what hooks on those modules would record, without module calls."""
        B, S = attention_mask.shape
        pos = torch.arange(S, device=hidden.device).expand(B, S)
        rope = self._rope(self._rope_table(hidden, S), pos)
        masks = self._window_masks(_padded_causal(attention_mask)[:, None], pos, pos)
        x, out = hidden.reshape(B * S, -1), {}
        for layer in range(start, stop):
            i, tap = layer - self.start, {}
            x = self._block(self.layers[i], x, B, rope, masks[self.windows[i]], tap=tap)
            for kind, wanted, value in (("block", blocks, x), ("mlp_in", mlp_inputs, tap["mlp_in"]),
                                        ("mlp", mlps, tap["mlp"])):
                if layer in wanted:
                    out[kind, layer] = value.view(B, S, -1)
        return out

    # -------------------------------------------------------------- the loop over layers
    def _rope_table(self, x: torch.Tensor, n: int):
        """(cos, sin), each (n, rotary_dim) in ``x``'s dtype, for positions 0..n-1, from the model's own
        rotary module (every rope type and scaling as transformers computes them); None without rotary."""
        style = self.family.rope
        if style is None:
            return None
        pos = torch.arange(n, device=x.device)[None]
        if style == "pairs":  # GPT-J: a table of [sin | cos] halves, each repeated for its pair of features
            sin, cos = self.base.rotary_emb(x, pos)
            return cos[0].repeat_interleave(2, dim=-1), sin[0].repeat_interleave(2, dim=-1)
        cos, sin = self.base.rotary_emb(x, pos)
        return cos[0], sin[0]

    def _rope(self, table, positions: torch.Tensor) -> _Rope | None:
        if table is None:
            return None
        return _Rope(table[0][positions][:, None], table[1][positions][:, None], self.family.rope)

    def _layers(self, x, q_pos, k_pos, mask, cache, keep_kv, capture, rope_table):
        rope = self._rope(rope_table, q_pos)
        masks = self._window_masks(mask, q_pos, k_pos)
        captured = None
        shape = x.shape
        rows, x = shape[0], x.reshape(-1, shape[-1])
        for i, layer in enumerate(self.layers):
            past = (cache.keys[i], cache.values[i]) if cache is not None else None
            x = self._block(layer, x, rows, rope, masks[self.windows[i]], past, keep_kv)
            if capture == self.start + i:
                captured = x.view(shape)
        return _norm(self.final_norm, x).view(shape), captured

    def _window_masks(self, mask, q_pos, k_pos) -> dict:
        """The mask for full attention (key None) and for each sliding window the layers use."""
        masks = {None: mask}
        for w in set(self.windows) - {None}:
            masks[w] = mask & ((q_pos[:, :, None] - k_pos[:, None, :]) < w)[:, None]
        return masks

    def _block(self, layer, x, rows, rope, mask, past=None, keep_kv=None, tap=None) -> torch.Tensor:
        """One decoder layer: x (rows·S, d) → the residual stream after it. ``past``: cached (keys,
        values) to attend to before x's own; ``keep_kv`` receives x's (keys, values); ``tap`` (a dict)
        receives the MLP's inner activation ("mlp_in", (rows·S, d_ff)) and its output ("mlp")."""
        fam = self.family
        attn = getattr(layer, fam.attn)
        h = _norm(getattr(layer, fam.norm1), x)
        q, k, v = fam.qkv(attn, h, rows)
        if rope is not None:
            q, k = rope(q), rope(k)
        if keep_kv is not None:
            keep_kv.append((k, v))
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling,
                                           enable_gqa=k.shape[1] != q.shape[1])
        a = fam.project(getattr(attn, fam.attn_out), o.transpose(1, 2).reshape(x.shape[0], -1))
        parallel = fam.parallel(layer)
        if parallel:
            m_in = h if fam.norm2 is None else _norm(getattr(layer, fam.norm2), x)
        else:
            x = x + a
            m_in = _norm(getattr(layer, fam.norm2), x)
        inner = fam.mlp_inner(layer.mlp, m_in, self.act)
        m = fam.project(getattr(layer.mlp, fam.mlp_down), inner)
        if tap is not None:
            tap["mlp_in"], tap["mlp"] = inner, m
        return a + m + x if parallel else x + m


def _padded_causal(attention_mask: torch.Tensor) -> torch.Tensor:
    """A right-padded batch's (B, S) attention mask → (B, S, S): causal, padding keys masked, and
    each padded query sees itself (no empty row)."""
    S = attention_mask.shape[1]
    idx = torch.arange(S, device=attention_mask.device)
    ok = (idx[None, :] <= idx[:, None]) & attention_mask.bool()[:, None, :]
    return ok | torch.eye(S, dtype=torch.bool, device=attention_mask.device)


# ----------------------------------------------------------------------------- the fallback
class ModuleStack:
    """The interface of :class:`OwnedStack` through transformers' modules (``upper_layers_only``, a
    ``DynamicCache``, a hook for ``capture``)."""

    def __init__(self, model: nn.Module, adapter: ModelAdapter, start: int):
        self.model, self.adapter, self.start = model, adapter, start
        impl = getattr(model.config, "_attn_implementation", "eager")
        # the implementations that take a 4D custom mask, in models that take a cache object (not
        # GPT-2 before transformers 4.5x, which flattens the mask and wants tuples)
        self.packs = impl in ("eager", "sdpa") and getattr(model, "_supports_cache_class", None) is not False
        self._additive = impl == "eager"

    def _mask(self, ok: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A boolean mask as the attention implementation takes it (additive for eager)."""
        if not self._additive or ok.dtype != torch.bool:
            return ok
        return torch.zeros(ok.shape, dtype=dtype, device=ok.device).masked_fill_(~ok, torch.finfo(dtype).min)

    def _run(self, capture, **kwargs):
        from .tracing import record

        names = [self.adapter.layer_module_tmp.format(capture)] if capture is not None else []
        with record(self.model, outputs=names, detach=False) as rec:
            with self.adapter.upper_layers_only(self.model, self.start) as base:
                if "cache" in kwargs and "cache" not in _parameters(base):
                    kwargs["past_key_values"] = kwargs.pop("cache")
                out = base(**kwargs)
        return out.last_hidden_state, (rec.outputs[names[0]] if names else None)

    def prefix(self, hidden, positions, mask, n_positions: int | None = None) -> PrefixCache:
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()
        with torch.no_grad():
            self._run(None, inputs_embeds=hidden, attention_mask=self._mask(mask, hidden.dtype),
                      position_ids=positions, use_cache=True, cache=cache)
        return PrefixCache([], [], positions, module_cache=cache)

    def suffix(self, hidden, positions, mask, cache: PrefixCache, capture: int | None = None):
        return self._run(capture, inputs_embeds=hidden, attention_mask=self._mask(mask, hidden.dtype),
                         position_ids=positions, use_cache=True, cache=_fork(cache.module_cache))

    def forward(self, hidden, attention_mask, capture: int | None = None):
        return self._run(capture, inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(h)


def _parameters(module: nn.Module):
    import inspect

    return inspect.signature(module.forward).parameters


def _fork(cache):
    """A copy of a transformers cache that a forward pass may extend: its dynamic layers extend by
    rebinding (``self.keys = torch.cat(...)``), so new layer objects over the same tensors suffice."""
    import copy

    layers = getattr(cache, "layers", None)
    if type(cache).__name__ == "DynamicCache" and isinstance(layers, list) and all(
        type(layer).__name__ == "DynamicLayer" for layer in layers
    ):
        new = copy.copy(cache)
        new.layers = [copy.copy(layer) for layer in layers]
        return new
    return copy.deepcopy(cache)


def _select(cache, keep: torch.Tensor):
    """A copy of a transformers cache holding the batch rows where ``keep`` is true."""
    new = _fork(cache)
    layers = getattr(new, "layers", None)
    if isinstance(layers, list) and all(type(layer).__name__ == "DynamicLayer" for layer in layers):
        for layer in layers:
            if layer.is_initialized:
                layer.keys, layer.values = layer.keys[keep], layer.values[keep]
        return new
    new.batch_select_indices(torch.nonzero(keep).flatten())
    return new


# ----------------------------------------------------------------------------- choosing
def unsupported_reason(model: nn.Module, adapter: ModelAdapter, start: int = 0) -> str | None:
    """Why :class:`OwnedStack` cannot run ``model`` (None when it can)."""
    cfg = model.config
    if cfg.model_type not in _FAMILIES:
        return f"model_type {cfg.model_type!r} has no owned forward"
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    if impl not in ATTENTION_IMPLEMENTATIONS:
        return f"attention implementation {impl!r} is not one of {ATTENTION_IMPLEMENTATIONS}"
    if model.training:
        return "the model is in training mode (dropout)"
    if getattr(cfg, "add_cross_attention", False):
        return "the model has cross-attention layers"
    dispatched, devices = _placement(model)
    if dispatched:
        return "the model is dispatched by accelerate (a device_map)"
    if len(devices) > 1 or any(d.type == "meta" for d in devices):
        return f"the model's parameters are on {sorted(map(str, devices))}"
    if _FAMILIES[cfg.model_type].rope == "half":
        rope_type = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
        if rope_type not in ROPE_TYPES:
            return f"rope type {rope_type!r} is not one of {ROPE_TYPES}"
    types = getattr(cfg, "layer_types", None)
    if isinstance(types, list) and set(types) - {"full_attention", "sliding_attention"}:
        return f"layer types {sorted(set(types))} beyond full and sliding attention"
    if _FAMILIES[cfg.model_type].rope == "pairs" and not getattr(cfg, "rotary_dim", None):
        return "GPT-J without rotary_dim"
    try:
        stack = OwnedStack(model, adapter, start)
        layer = stack.layers[0] if stack.layers else None
        norms = [stack.final_norm] + ([getattr(layer, n) for n in (stack.family.norm1, stack.family.norm2) if n]
                                      if layer is not None else [])
        for norm in norms:
            if not isinstance(norm, nn.LayerNorm) and not hasattr(norm, "variance_epsilon"):
                return f"a norm of type {type(norm).__name__}, neither LayerNorm nor RMSNorm"
        if layer is not None:
            _ = (getattr(layer, stack.family.attn).scaling, layer.mlp)
    except (AttributeError, KeyError, LookupError) as exc:
        return f"unexpected module layout ({exc})"
    return None


def _placement(model: nn.Module) -> tuple[bool, set]:
    """(whether accelerate hooks any module, the devices of the parameters), in one walk over the
    modules' own dicts (``hasattr`` on a module costs a raised AttributeError each)."""
    dispatched, devices = False, set()
    for module in model.modules():
        own = module.__dict__
        dispatched = dispatched or "_hf_hook" in own
        devices.update(p.device for p in own["_parameters"].values() if p is not None)
    return dispatched, devices


_reported: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()


def upper_stack(model: nn.Module, adapter: ModelAdapter, start: int) -> OwnedStack | ModuleStack:
    """The stack of layers ``[start, n_layers)`` of ``model``: fastedit's own forward where it covers
    the model, else transformers' modules, with one logged line per model that says why."""
    reason = unsupported_reason(model, adapter, start)
    if reason is None:
        return OwnedStack(model, adapter, start)
    if _reported.get(model) != reason:
        _reported[model] = reason
        log.warning("running the layers above the edit layer through transformers' modules (slower): %s", reason)
    return ModuleStack(model, adapter, start)


def owned_reader(model: nn.Module, adapter: ModelAdapter, hp, layers) -> OwnedStack | None:
    """The whole model as an :class:`OwnedStack` (from layer 0) for :meth:`OwnedStack.read`, when it
    covers ``model`` and, at each of ``layers``, the hyperparameters' ``layer_module_tmp``,
    ``mlp_module_tmp`` and ``rewrite_module_tmp`` name the layer, its MLP and the MLP's output
    projection (what ``read`` taps). Else None: the caller records those modules with hooks."""
    if unsupported_reason(model, adapter, 0) is not None:
        return None
    stack = OwnedStack(model, adapter, 0)
    for layer in layers:
        block = stack.layers[layer]
        wanted = ((hp.layer_module_tmp, block), (hp.mlp_module_tmp, block.mlp),
                  (hp.rewrite_module_tmp, getattr(block.mlp, stack.family.mlp_down)))
        for template, module in wanted:
            try:
                if template and get_module(model, template.format(layer)) is not module:
                    return None
            except LookupError:
                return None
    return stack
