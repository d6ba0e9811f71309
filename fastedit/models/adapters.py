"""Architecture adapters: where each family keeps its edited projection, and how to run part of it.

An adapter knows, for one family of Hugging Face causal language models,

* the module names the reference hparams files use (``rewrite_module_tmp`` and friends),
* how the edited projection stores its weight (GPT-2's ``Conv1D`` as (in, out), the others as
  ``nn.Linear`` (out, in)),
* how to run the decoder layers ``start..`` on a given residual stream (``run_upper_layers``), which
  is what lets the target-value optimisation skip everything below the layer where δ enters.

Adapters are picked from ``config.model_type`` by :func:`get_adapter`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

__all__ = ["ModelAdapter", "UnsupportedModelError", "get_adapter", "SUPPORTED_MODEL_TYPES"]


class UnsupportedModelError(ValueError):
    """The model's architecture has no adapter."""


class _ZeroPositions(nn.Module):
    """Stands in for GPT-2's learned position embedding while a residual stream (which already
    contains it) is fed back in as ``inputs_embeds``: adds exactly zero."""

    def __init__(self, width: int, dtype: torch.dtype):
        super().__init__()
        self.width, self.dtype = width, dtype

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros((*position_ids.shape, self.width), dtype=self.dtype, device=position_ids.device)


@dataclass(frozen=True)
class ModelAdapter:
    """Names and layout of one architecture family.

    Module templates take the layer number through ``str.format`` exactly like the reference hparams
    (``"transformer.h.{}.mlp.c_proj"``).
    """

    family: str
    base_model: str  # the decoder stack without the LM head: "transformer", "model", "gpt_neox"
    layers: str  # the ModuleList of decoder layers, relative to the whole model
    layer_module_tmp: str
    mlp_module_tmp: str
    rewrite_module_tmp: str
    attn_module_tmp: str
    ln_f_module: str
    lm_head_module: str
    weight_is_in_out: bool  # True for GPT-2's Conv1D: weight (d_ff, d_model) = (in, out)
    position_embedding: str | None = None  # learned absolute positions added to the input (GPT-2)

    # ----------------------------------------------------------------- sizes and modules
    def num_layers(self, model: nn.Module) -> int:
        return len(get_module(model, self.layers))

    def hidden_size(self, model: nn.Module) -> int:
        cfg = model.config
        return int(getattr(cfg, "n_embd", None) or cfg.hidden_size)

    def rewrite_weight(self, model: nn.Module, layer: int) -> nn.Parameter:
        return get_module(model, self.rewrite_module_tmp.format(layer)).weight

    def key_size(self, model: nn.Module, layer: int) -> int:
        """d_ff: the size of the key (the input of the edited projection)."""
        w = self.rewrite_weight(model, layer)
        return int(w.shape[0] if self.weight_is_in_out else w.shape[1])

    def max_positions(self, model: nn.Module) -> int:
        """Longest sequence the statistics pass feeds the model (the references' truncation rule:
        ``n_positions`` where the config has it, else ``max_position_embeddings``, capped at 4096 for
        Mistral and Qwen2 as AlphaEdit does)."""
        cfg = model.config
        n = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None) or 2048
        if cfg.model_type in ("mistral", "qwen2"):
            n = min(n, 4096)
        return int(n)

    # ----------------------------------------------------------------- weight orientation
    def delta_to_weight(self, delta_key_value: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Turn an update written as (d_ff, d_model) (key side first, as ``u ⊗ v``) into the weight's
        own layout."""
        if self.weight_is_in_out:
            out = delta_key_value
        else:
            out = delta_key_value.T
        if out.shape != weight.shape:
            raise ValueError(
                f"update of shape {tuple(out.shape)} does not fit weight of shape {tuple(weight.shape)}"
            )
        return out

    def weight_as_out_in(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight as (d_model, d_ff) = (out, in), a view."""
        return weight.T if self.weight_is_in_out else weight

    # ----------------------------------------------------------------- partial forward passes
    @contextlib.contextmanager
    def upper_layers_only(self, model: nn.Module, start: int) -> Iterator[nn.Module]:
        """Within the block, the base model runs only decoder layers ``start, start+1, ...`` on
        whatever is passed as ``inputs_embeds`` (which must then be the residual stream entering layer
        ``start``). Yields the base model. Restores the model on exit, also on errors.

        The model's own forward builds masks and rotary position embeddings as usual, so nothing
        about them is re-implemented here; position ids are 0..S-1 as in the full pass.
        """
        base = get_module(model, self.base_model)
        parent_name, _, attr = self.layers.rpartition(".")
        parent = get_module(model, parent_name) if parent_name else model
        full_layers = getattr(parent, attr)
        cfg = model.config
        saved_types = getattr(cfg, "layer_types", None)
        pos_parent = pos_attr = saved_pos = None
        try:
            setattr(parent, attr, nn.ModuleList(list(full_layers)[start:]))
            if isinstance(saved_types, list):
                # Qwen2/Mistral index the mask kind by the loop counter: keep it aligned.
                cfg.layer_types = saved_types[start:]
            if self.position_embedding is not None:
                pp, _, pa = self.position_embedding.rpartition(".")
                pos_parent, pos_attr = get_module(model, pp), pa
                saved_pos = getattr(pos_parent, pos_attr)
                setattr(pos_parent, pos_attr, _ZeroPositions(self.hidden_size(model), saved_pos.weight.dtype))
            yield base
        finally:
            setattr(parent, attr, full_layers)
            if isinstance(saved_types, list):
                cfg.layer_types = saved_types
            if pos_parent is not None:
                setattr(pos_parent, pos_attr, saved_pos)

    def run_upper_layers(
        self, model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int
    ) -> torch.Tensor:
        """Residual stream entering layer ``start`` (batch, seq, d_model) → the base model's last
        hidden state (after the final norm), (batch, seq, d_model)."""
        with self.upper_layers_only(model, start) as base:
            out = base(inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def lm_head_name(self, model: nn.Module) -> str:
        """The output projection's module name (``embed_out`` in older GPT-NeoX, ``lm_head`` in newer)."""
        head = model.get_output_embeddings()
        for name, mod in model.named_modules():
            if mod is head:
                return name
        return self.lm_head_module

    def lm_head(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight (vocab, d_model), bias or None) of the output projection."""
        head = model.get_output_embeddings()
        return head.weight, getattr(head, "bias", None)


def get_module(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule`` with an error that names what was looked for."""
    try:
        return model.get_submodule(name) if name else model
    except AttributeError as e:
        raise LookupError(f"model {type(model).__name__} has no module {name!r}") from e


_GPT2 = ModelAdapter(
    family="gpt2",
    base_model="transformer",
    layers="transformer.h",
    layer_module_tmp="transformer.h.{}",
    mlp_module_tmp="transformer.h.{}.mlp",
    rewrite_module_tmp="transformer.h.{}.mlp.c_proj",
    attn_module_tmp="transformer.h.{}.attn",
    ln_f_module="transformer.ln_f",
    lm_head_module="lm_head",
    weight_is_in_out=True,
    position_embedding="transformer.wpe",
)
_GPTJ = ModelAdapter(
    family="gptj",
    base_model="transformer",
    layers="transformer.h",
    layer_module_tmp="transformer.h.{}",
    mlp_module_tmp="transformer.h.{}.mlp",
    rewrite_module_tmp="transformer.h.{}.mlp.fc_out",
    attn_module_tmp="transformer.h.{}.attn",
    ln_f_module="transformer.ln_f",
    lm_head_module="lm_head",
    weight_is_in_out=False,
)
_NEOX = ModelAdapter(
    family="gpt_neox",
    base_model="gpt_neox",
    layers="gpt_neox.layers",
    layer_module_tmp="gpt_neox.layers.{}",
    mlp_module_tmp="gpt_neox.layers.{}.mlp",
    rewrite_module_tmp="gpt_neox.layers.{}.mlp.dense_4h_to_h",
    attn_module_tmp="gpt_neox.layers.{}.attention",
    ln_f_module="gpt_neox.final_layer_norm",
    lm_head_module="lm_head",
    weight_is_in_out=False,
)
_LLAMA = ModelAdapter(
    family="llama",
    base_model="model",
    layers="model.layers",
    layer_module_tmp="model.layers.{}",
    mlp_module_tmp="model.layers.{}.mlp",
    rewrite_module_tmp="model.layers.{}.mlp.down_proj",
    attn_module_tmp="model.layers.{}.self_attn",
    ln_f_module="model.norm",
    lm_head_module="lm_head",
    weight_is_in_out=False,
)

_BY_MODEL_TYPE: dict[str, ModelAdapter] = {
    "gpt2": _GPT2,
    "gptj": _GPTJ,
    "gpt_neox": _NEOX,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
}
SUPPORTED_MODEL_TYPES = tuple(_BY_MODEL_TYPE)


def get_adapter(model_or_type: nn.Module | str) -> ModelAdapter:
    """The adapter for a model (or a ``config.model_type`` string)."""
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        cfg = getattr(model_or_type, "config", None)
        model_type = getattr(cfg, "model_type", None)
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"fastedit has no adapter for model_type {model_type!r}; supported families: "
            "GPT-2 (gpt2), GPT-J (gptj), GPT-NeoX (gpt_neox), Llama family (llama, mistral, qwen2)"
        ) from None
