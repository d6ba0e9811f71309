"""Random-weight models of every supported architecture, built from configs (no download).

Right for parity tests and timing, not for efficacy. ``tiny`` sizes keep tests fast on a CPU; the
named full sizes (``gpt2-xl``, ``gpt-j-6b``, ``llama-3-8b``) give the published shapes for GPU
benchmarks; their ``-narrow`` variants (width 16) are CPU proxies for the per-edit overhead.
"""

from __future__ import annotations

import torch

__all__ = ["random_model", "ARCHITECTURES", "FULL_SIZES"]

ARCHITECTURES = ("gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2")

# The shapes of the models the references were tuned on.
FULL_SIZES = {
    "gpt2-xl": ("gpt2", dict(n_embd=1600, n_layer=48, n_head=25, n_positions=1024, vocab_size=50257)),
    # GPT-2 XL's depth and vocabulary at width 16: the per-edit machinery (48 layers, its preset's
    # layers and steps) at a CPU-sized cost, for runs of thousands of edits
    "gpt2-xl-narrow": ("gpt2", dict(n_embd=16, n_layer=48, n_head=2, n_positions=1024, vocab_size=50257)),
    "gpt-j-6b": (
        "gptj",
        dict(n_embd=4096, n_layer=28, n_head=16, rotary_dim=64, n_positions=2048, vocab_size=50400),
    ),
    "llama-3-8b": (
        "llama",
        dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=8192,
            vocab_size=128256,
            rope_theta=500000.0,
        ),
    ),
}

# The same depth, layer structure and vocabulary at width 16: CPU proxies of the full models whose
# time goes where the full model's Python goes (per-layer calls, per-step overhead), not to matmuls.
FULL_SIZES["gpt2-xl-narrow"] = ("gpt2", {**FULL_SIZES["gpt2-xl"][1], "n_embd": 16, "n_head": 2})
FULL_SIZES["llama-3-8b-narrow"] = (
    "llama",
    {**FULL_SIZES["llama-3-8b"][1], "hidden_size": 16, "intermediate_size": 56, "num_attention_heads": 2,
     "num_key_value_heads": 1},
)


def _config(arch: str, tiny: bool = True, **overrides):
    from transformers import AutoConfig

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHITECTURES}")
    if not tiny:
        return AutoConfig.for_model(arch, **overrides)
    # Small but not degenerate: several layers, d_ff != 4·d_model where the family allows it,
    # so orientation mistakes show up as shape errors.
    if arch == "gpt2":
        base = dict(n_embd=64, n_layer=4, n_head=4, n_inner=176, n_positions=128)
    elif arch == "gptj":
        base = dict(n_embd=64, n_layer=4, n_head=4, n_inner=176, rotary_dim=8, n_positions=128)
    elif arch == "gpt_neox":
        base = dict(
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=176,
            max_position_embeddings=128,
            rotary_pct=0.25,
        )
    elif arch in ("llama", "mistral", "qwen2"):
        base = dict(
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=176,
            max_position_embeddings=128,
        )
        if arch == "mistral":
            base["sliding_window"] = None
    base.update(overrides)
    return AutoConfig.for_model(arch, **base)


def random_model(
    arch: str,
    vocab_size: int = 50257,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    **config_overrides,
):
    """A causal LM of architecture ``arch`` (a family name, or one of :data:`FULL_SIZES`) with
    seeded random weights, in eval mode."""
    from transformers import AutoModelForCausalLM

    from .loading import dtype_keyword

    if arch in FULL_SIZES:
        family, shape = FULL_SIZES[arch]
        cfg = _config(family, tiny=False, **{**shape, **config_overrides})
        name = arch
    else:
        cfg = _config(arch, vocab_size=vocab_size, **config_overrides)
        name = f"random-{arch}"
    # sdpa and eager give the same numbers here; eager keeps float64 parity tests free of kernels
    # that pick different reduction orders by shape.
    cfg._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, **{dtype_keyword(): dtype})
    model.config._name_or_path = name
    return model.eval()
