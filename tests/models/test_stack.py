"""fastedit's own forward of the upper layers equals transformers' forward.

On float64 random-weight models of every family and variant: hidden states after the final norm,
logits and a captured layer's output agree to a relative Frobenius error of 1e-6, for a padded batch
and for packed prefixes cached then packed suffixes; so do the activations the owned forward reads
from the embeddings up (layer outputs, MLP inputs of the output projection, MLP outputs), against
hooks on transformers' modules; what the owned forward does not cover runs through transformers'
modules after one logged line.
"""

import logging

import pytest
import torch

from fastedit.models import get_adapter, random_model, record
from fastedit.models.stack import ModuleStack, OwnedStack, owned_reader, upper_stack

TOL = 1e-6
ROPE_THETA = 10000.0

VARIANTS = {
    "gpt2": ("gpt2", {}),
    "gptj": ("gptj", {}),
    "neox-parallel": ("gpt_neox", {"use_parallel_residual": True}),
    "neox-sequential": ("gpt_neox", {"use_parallel_residual": False, "rotary_pct": 0.5}),
    "llama": ("llama", {"num_key_value_heads": 4}),
    "llama-gqa": ("llama", {"num_key_value_heads": 2}),
    "llama-llama3": ("llama", {"rope_parameters": {
        "rope_type": "llama3", "rope_theta": ROPE_THETA, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8}}),
    "llama-linear": ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": ROPE_THETA, "factor": 2.0}}),
    # dynamic scaling only acts beyond max_position_embeddings: make the sequences longer than that
    "llama-dynamic": ("llama", {"max_position_embeddings": 8,
                                "rope_parameters": {"rope_type": "dynamic", "rope_theta": ROPE_THETA, "factor": 2.0}}),
    "llama-yarn": ("llama", {"rope_parameters": {"rope_type": "yarn", "rope_theta": ROPE_THETA, "factor": 4.0,
                                                 "original_max_position_embeddings": 8}}),
    "llama-biases": ("llama", {"attention_bias": True, "mlp_bias": True}),
    "mistral-window": ("mistral", {"sliding_window": 5}),
    "qwen2": ("qwen2", {}),
    "qwen2-window": ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 2}),
}


def rel(a, b):
    return float((a - b).norm() / b.norm())


def build(variant, attn="sdpa"):
    arch, over = VARIANTS[variant]
    model = random_model(arch, dtype=torch.float64, seed=1, **over)
    model.config._attn_implementation = attn
    with torch.no_grad():  # biases and norm weights start at 0 and 1: make every parameter count
        gen = torch.Generator().manual_seed(2)
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def batch(seed=0, lengths=(12, 11, 9)):
    """Random token ids (batch, 12), right-padded. Padding stays shorter than the sliding windows:
    transformers' eager attention gives NaN to a padded query whose window holds only padding."""
    gen = torch.Generator().manual_seed(seed)
    S = max(lengths)
    ids = torch.randint(0, 1000, (len(lengths), S), generator=gen)
    mask = (torch.arange(S)[None] < torch.tensor(lengths)[:, None]).long()
    return ids, mask


def reference(model, ids, mask, start, capture):
    """transformers' whole forward: (stream entering layer ``start``, final hidden, logits, output of
    layer ``capture``)."""
    ad = get_adapter(model)
    names = [ad.layer_module_tmp.format(start - 1), ad.layer_module_tmp.format(capture)]
    with torch.no_grad(), record(model, outputs=names) as rec:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    return rec.outputs[names[0]], out.hidden_states[-1], out.logits, rec.outputs[names[1]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padded_forward_equals_transformers(variant, attn):
    model = build(variant, attn)
    ids, mask = batch()
    start, capture = 1, 2
    entering, hidden, logits, layer_out = reference(model, ids, mask, start, capture)
    stack = upper_stack(model, get_adapter(model), start)
    assert isinstance(stack, OwnedStack)
    with torch.no_grad():
        h, cap = stack.forward(entering, mask, capture=capture)
        lg = stack.logits(h)
    valid = mask.bool()
    assert rel(h[valid], hidden[valid]) < TOL
    assert rel(lg[valid], logits[valid]) < TOL
    assert rel(cap[valid], layer_out[valid]) < TOL


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_read_equals_hooks_on_transformers(variant, attn):
    """``embed`` + ``read`` from layer 0, and ``read`` from a stream entering a middle layer, give what
    hooks record on transformers' forward: layer outputs, the input of the MLP's output projection
    (MEMIT's keys) and the MLP's output."""
    model = build(variant, attn)
    ad = get_adapter(model)
    ids, mask = batch()
    names = {"block0": ad.layer_module_tmp.format(0), "block2": ad.layer_module_tmp.format(2),
             "mlp2": ad.mlp_module_tmp.format(2), "down1": ad.rewrite_module_tmp.format(1)}
    with torch.no_grad(), record(model, inputs=[names["down1"]],
                                 outputs=[names["block0"], names["block2"], names["mlp2"]]) as rec:
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    stack = owned_reader(model, ad, ad, [0, 1, 2])
    assert isinstance(stack, OwnedStack)
    with torch.no_grad():
        got = stack.read(stack.embed(ids), mask, 0, 3, blocks=(0, 2), mlp_inputs=(1,), mlps=(2,))
        mid = stack.read(rec.outputs[names["block0"]], mask, 1, 3, blocks=(2,), mlp_inputs=(1,))
    valid = mask.bool()
    assert set(got) == {("block", 0), ("block", 2), ("mlp_in", 1), ("mlp", 2)}
    for key, name in ((("block", 0), "block0"), (("block", 2), "block2"), (("mlp", 2), "mlp2")):
        assert rel(got[key][valid], rec.outputs[names[name]][valid]) < TOL, key
    assert rel(got["mlp_in", 1][valid], rec.inputs[names["down1"]][valid]) < TOL
    assert rel(mid["block", 2][valid], rec.outputs[names["block2"]][valid]) < TOL
    assert rel(mid["mlp_in", 1][valid], rec.inputs[names["down1"]][valid]) < TOL


def test_owned_reader_only_for_the_modules_it_reads():
    """Hyperparameters that name another module as the edited one (an attention projection) or a
    model it does not cover get None: their callers record with hooks instead."""
    from dataclasses import replace

    model = build("llama")
    ad = get_adapter(model)
    assert owned_reader(model, ad, ad, [1]) is not None
    assert owned_reader(model, ad, replace(ad, rewrite_module_tmp="model.layers.{}.self_attn.o_proj"), [1]) is None
    assert owned_reader(model, ad, replace(ad, mlp_module_tmp="model.layers.{}.nothing"), [1]) is None
    assert owned_reader(model.train(), ad, ad, [1]) is None


def pack(lengths, lookups):
    """All prompts in one packed row: prefixes [0, p) then suffixes [p, n), each attending to its own
    prompt only. Returns (prefix index, positions, mask), (suffix index, positions, mask) with
    indices into the flattened (batch·seq) padded batch."""
    S = max(lengths)
    pre, suf, pre_owner, suf_owner = [], [], [], []
    for i, (n, p) in enumerate(zip(lengths, lookups)):
        pre += [(i, t) for t in range(p)]
        suf += [(i, t) for t in range(p, n)]
    index = lambda items: torch.tensor([[i * S + t for i, t in items]])
    pos = lambda items: torch.tensor([[t for _, t in items]])
    owner = lambda items: torch.tensor([i for i, _ in items])
    po, so, pp, sp = owner(pre), owner(suf), pos(pre)[0], pos(suf)[0]
    pre_ok = (po[:, None] == po[None]) & (pp[None] <= pp[:, None])
    to_pre = so[:, None] == po[None]
    to_suf = (so[:, None] == so[None]) & (sp[None] <= sp[:, None])
    return (index(pre), pos(pre), pre_ok[None, None]), (index(suf), pos(suf), torch.cat([to_pre, to_suf], 1)[None, None])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_packed_prefix_and_suffix_equal_the_full_forward(variant):
    model = build(variant)
    lengths, lookups = (12, 9, 5), (4, 6, 2)
    ids, mask = batch(lengths=lengths)
    start, capture = 2, 3
    entering, hidden, _, layer_out = reference(model, ids, mask, start, capture)
    flat = entering.reshape(-1, entering.shape[-1])
    (p_idx, p_pos, p_mask), (s_idx, s_pos, s_mask) = pack(lengths, lookups)
    stack = upper_stack(model, get_adapter(model), start)
    cache = stack.prefix(flat[p_idx], p_pos, p_mask, n_positions=max(lengths))
    with torch.no_grad():
        h, cap = stack.suffix(flat[s_idx], s_pos, s_mask, cache, capture=capture)
    want = hidden.reshape(-1, hidden.shape[-1])[s_idx]
    assert rel(h, want) < TOL
    assert rel(cap, layer_out.reshape(-1, hidden.shape[-1])[s_idx]) < TOL
    # the cache is read, never extended: a second pass gives the same numbers
    with torch.no_grad():
        again, _ = stack.suffix(flat[s_idx], s_pos, s_mask, cache)
    assert torch.equal(again, h)


@pytest.mark.parametrize("variant", ["gpt2", "gptj", "neox-sequential", "llama-gqa", "qwen2"])
def test_gradient_equals_transformers(variant):
    """The gradient for a shift of the entering stream at one token, as the optimisation takes it."""
    model = build(variant)
    ids, mask = batch()
    entering, *_ = reference(model, ids, mask, 1, 2)
    ad = get_adapter(model)
    grads = []
    for stack in (upper_stack(model, ad, 1), ModuleStack(model, ad, 1)):
        delta = torch.zeros(entering.shape[-1], dtype=entering.dtype, requires_grad=True)
        shift = torch.zeros_like(entering)
        shift[:, 3] = 1.0
        h, _ = stack.forward(entering + shift * delta, mask)
        stack.logits(h)[mask.bool()].logsumexp(-1).sum().backward()
        grads.append(delta.grad)
    assert rel(grads[0], grads[1]) < TOL


def test_weights_are_read_at_call_time():
    model = build("llama")
    ids, mask = batch()
    stack = upper_stack(model, get_adapter(model), 1)
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight.mul_(1.5)
    entering, hidden, _, _ = reference(model, ids, mask, 1, 2)
    with torch.no_grad():
        h, _ = stack.forward(entering, mask)
    assert rel(h[mask.bool()], hidden[mask.bool()]) < TOL


@pytest.fixture
def custom_attention():
    """An attention implementation registered by name that the owned forward does not know."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register("custom_sdpa", sdpa_attention_forward)
    yield "custom_sdpa"


def test_fallback_is_logged_once_and_equal(custom_attention, caplog):
    model = build("llama-gqa", attn=custom_attention)
    ad = get_adapter(model)
    ids, mask = batch()
    entering, hidden, logits, layer_out = reference(model, ids, mask, 1, 2)
    with caplog.at_level(logging.WARNING, logger="fastedit.models.stack"):
        stacks = [upper_stack(model, ad, 1) for _ in range(3)]
    lines = [r.getMessage() for r in caplog.records if r.name == "fastedit.models.stack"]
    assert len(lines) == 1 and "custom_sdpa" in lines[0] and "transformers' modules" in lines[0]
    stack = stacks[0]
    assert isinstance(stack, ModuleStack) and not stack.packs
    with torch.no_grad():
        h, cap = stack.forward(entering, mask, capture=2)
        lg = stack.logits(h)
    valid = mask.bool()
    assert rel(h[valid], hidden[valid]) < TOL and rel(cap[valid], layer_out[valid]) < TOL
    assert rel(lg[valid], logits[valid]) < TOL


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_fallback_packed_equals_owned(attn):
    """The transformers-module path of packed prefixes and suffixes (taken for models the owned
    forward does not cover) gives the owned forward's numbers."""
    model = build("qwen2", attn)
    lengths, lookups = (12, 9, 5), (4, 6, 2)
    ids, mask = batch(lengths=lengths)
    entering, *_ = reference(model, ids, mask, 2, 3)
    flat = entering.reshape(-1, entering.shape[-1])
    (p_idx, p_pos, p_mask), (s_idx, s_pos, s_mask) = pack(lengths, lookups)
    out = []
    for stack in (upper_stack(model, get_adapter(model), 2), ModuleStack(model, get_adapter(model), 2)):
        cache = stack.prefix(flat[p_idx], p_pos, p_mask, n_positions=max(lengths))
        with torch.no_grad():
            out.append(stack.suffix(flat[s_idx], s_pos, s_mask, cache, capture=3))
    assert rel(out[0][0], out[1][0]) < TOL and rel(out[0][1], out[1][1]) < TOL


def test_training_mode_falls_back():
    model = build("gpt2").train()
    assert isinstance(upper_stack(model, get_adapter(model), 1), ModuleStack)


@pytest.mark.parametrize("variant", ["gpt2", "gptj", "neox-sequential", "llama-gqa", "qwen2-window"])
def test_suffix_pass_compiles_as_one_graph(variant):
    """torch.compile sees the packed suffix pass, the loss-layer capture included, as one graph."""
    model = build(variant)
    lengths, lookups = (12, 9, 5), (4, 6, 2)
    ids, mask = batch(lengths=lengths)
    entering, *_ = reference(model, ids, mask, 2, 3)
    flat = entering.reshape(-1, entering.shape[-1])
    (p_idx, p_pos, p_mask), (s_idx, s_pos, s_mask) = pack(lengths, lookups)
    stack = upper_stack(model, get_adapter(model), 2)
    cache = stack.prefix(flat[p_idx], p_pos, p_mask, n_positions=max(lengths))

    def suffix(h):
        return stack.suffix(h, s_pos, s_mask, cache, capture=3)

    explained = torch._dynamo.explain(suffix)(flat[s_idx])
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
