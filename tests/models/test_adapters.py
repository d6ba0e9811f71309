"""Architecture adapters on small random-weight models of every supported family."""

import pytest
import torch

from fastedit.models import UnsupportedModelError, get_adapter, random_model, record
from fastedit.models.adapters import SUPPORTED_MODEL_TYPES

ARCHS = ["gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2"]


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    return random_model(request.param, dtype=torch.float64)


def test_picked_from_model_type(model):
    ad = get_adapter(model)
    assert model.config.model_type in SUPPORTED_MODEL_TYPES
    assert ad.num_layers(model) == 4
    assert ad.hidden_size(model) == 64


def test_weight_orientation(model):
    ad = get_adapter(model)
    w = ad.rewrite_weight(model, 2)
    d_ff, d = ad.key_size(model, 2), ad.hidden_size(model)
    assert d_ff == 176
    # GPT-2's Conv1D stores (in, out); nn.Linear (out, in)
    assert tuple(w.shape) == ((d_ff, d) if model.config.model_type == "gpt2" else (d, d_ff))
    upd = torch.randn(d_ff, d, dtype=w.dtype)
    assert ad.delta_to_weight(upd, w).shape == w.shape
    assert ad.weight_as_out_in(w).shape == (d, d_ff)
    with pytest.raises(ValueError, match="does not fit"):
        ad.delta_to_weight(torch.randn(d_ff + 1, d), w)


def test_keys_are_inputs_of_the_rewrite_module(model, gpt2_tok):
    """The key read by a hook on the rewrite module equals the MLP's hidden activation."""
    ad = get_adapter(model)
    batch = gpt2_tok(["The capital of France is"], return_tensors="pt")
    name = ad.rewrite_module_tmp.format(1)
    with record(model, inputs=[name], outputs=[name, ad.mlp_module_tmp.format(1)]) as rec:
        model(**batch, use_cache=False)
    k, out = rec.inputs[name], rec.outputs[name]
    w = ad.weight_as_out_in(ad.rewrite_weight(model, 1))
    bias = model.get_submodule(name).bias
    expect = k @ w.T + (bias if bias is not None else 0)
    assert torch.allclose(out, expect, atol=1e-12)


@pytest.mark.parametrize("start", [1, 3, 4])
def test_upper_layers_match_full_forward(model, gpt2_tok, start):
    """Running layers start.. on the stream after layer start-1 gives the full pass's output."""
    ad = get_adapter(model)
    batch = gpt2_tok(["The capital of France is", "Hello"], return_tensors="pt", padding=True)
    base = model.get_submodule(ad.base_model)
    prev = ad.layer_module_tmp.format(start - 1)
    with record(model, outputs=[prev]) as rec:
        full = base(**batch, use_cache=False).last_hidden_state
    upper = ad.run_upper_layers(model, rec.outputs[prev], batch["attention_mask"], start)
    valid = batch["attention_mask"].bool()
    assert (full - upper)[valid].abs().max() < 1e-12
    # the model is restored afterwards
    assert ad.num_layers(model) == 4
    again = base(**batch, use_cache=False).last_hidden_state
    assert torch.equal(again, full)


def test_record_stops_the_forward_pass(model, gpt2_tok):
    ad = get_adapter(model)
    seen = []
    hook = model.get_submodule(ad.layer_module_tmp.format(3)).register_forward_hook(lambda *a: seen.append(1))
    try:
        with record(model, inputs=[ad.rewrite_module_tmp.format(1)], stop_after=ad.rewrite_module_tmp.format(1)) as rec:
            model(**gpt2_tok(["Hello world"], return_tensors="pt"), use_cache=False)
    finally:
        hook.remove()
    assert not seen and ad.rewrite_module_tmp.format(1) in rec.inputs


def test_unsupported_model_names_the_families():
    with pytest.raises(UnsupportedModelError, match="GPT-2.*GPT-J.*GPT-NeoX.*Llama"):
        get_adapter("bert")
