"""Subject lookup index rules and context templates."""

import pytest
import torch

from fastedit.methods.keys import lookup_index
from fastedit.methods.templates import memit_templates, rome_templates, sample_texts
from fastedit.models import gpt2_tokenizer, random_model
from fastedit.requests import RequestError


def token_at(tok, text, i):
    return tok.decode([tok(text)["input_ids"][i]])


@pytest.mark.parametrize(
    "template,fact,want",
    [
        ("{} plays the sport of", "subject_last", " James"),
        ("{} plays the sport of", "subject_first", "Le"),
        ("{} plays the sport of", "subject_first_after_last", " plays"),
        ("Some context here. {} plays the sport of", "subject_last", " James"),
        ("Some context here. {} plays the sport of", "subject_first", " LeBron"),
        ("The sport of {}", "subject_first_after_last", " James"),  # empty suffix: stays on the last token
        ("The sport of {}", "last", " James"),
    ],
)
def test_additive_rule(gpt2_tok, template, fact, want):
    i = lookup_index(gpt2_tok, template, "LeBron James", fact)
    assert token_at(gpt2_tok, template.format("LeBron James"), i) == want


def test_bos_tokenizer_needs_the_concat_rule():
    """With a BOS prepended to every piece, the additive rule counts the subject's extra BOS too."""
    tok = gpt2_tokenizer(add_bos_token=True)
    t = "Some context here. {} plays the sport of"
    text = t.format("LeBron James")
    good = lookup_index(tok, t, "LeBron James", "subject_last", rule="concat")
    assert token_at(tok, text, good) == " James"
    assert lookup_index(tok, t, "LeBron James", "subject_last", rule="additive") == good + 1
    assert token_at(tok, text, lookup_index(tok, t, "LeBron James", "subject_first", rule="concat")) == " LeBron"


def test_additive_rule_needs_a_space(gpt2_tok):
    with pytest.raises(RequestError, match="does not follow a space"):
        lookup_index(gpt2_tok, "({})", "LeBron James", "subject_last")
    i = lookup_index(gpt2_tok, "({})", "LeBron James", "subject_last", rule="concat")
    assert token_at(gpt2_tok, "(LeBron James)", i) == " James"


def test_templates_are_seeded_and_well_formed(gpt2_tok):
    model = random_model("gpt2")
    a = rome_templates(model, gpt2_tok, seed=3)
    b = rome_templates(model, gpt2_tok, seed=3)
    c = rome_templates(model, gpt2_tok, seed=4)
    assert a == b and a != c
    assert len(a) == 21 and a[0] == "{}"
    assert all(t.endswith(". {}") and t.count("{}") == 1 for t in a[1:])
    # max_out_len counts the prompt token: 4 sampling steps for length 5
    calls = []
    h = model.register_forward_hook(lambda m, a, o: calls.append(1))
    sample_texts(model, gpt2_tok, "<|endoftext|>", 2, 5)
    h.remove()
    assert len(calls) == 4
    groups = memit_templates(model, gpt2_tok, seed=0)
    assert groups[0] == ["{}"] and len(groups[1]) == 5
    assert [t.split()[0] if t.split() else "" for t in groups[1]][0].startswith("The")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_key_reader_in_length_sorted_chunks(arch, gpt2_tok):
    """MEMIT's keys and z_current read in many small length-sorted chunks (each text padded only to
    its neighbours) equal one padded batch of all texts at every layer pass, with a weight changed
    between passes as an edit does: to float64 rounding on GPT-2 (1e-16 measured), to 1e-6 where
    transformers' eager attention takes its softmax in float32 (Llama: 1e-7 measured)."""
    from fastedit.hparams import MEMITHyperParams
    from fastedit.methods.memit import MemitKeyReader, _length_chunks
    from fastedit.models import get_adapter
    from fastedit.requests import EditRequest

    assert _length_chunks([5, 1, 3, 9], 10) == [[1, 2], [0], [3]]
    model = random_model(arch, dtype=torch.float64)
    ad = get_adapter(model)
    hp = MEMITHyperParams.from_dict({"layers": [1, 2], "v_loss_layer": 3}).resolve(ad, model)
    reqs = [EditRequest.from_dict({"prompt": p, "subject": s, "target_new": "x"}) for p, s in [
        ("{} plays the sport of", "LeBron James"), ("The mother tongue of {} is", "Danielle Darrieux"),
        ("{} is", "Paris"), ("In the end, the capital city of {} turned out to be", "the Kingdom of Denmark")]]
    groups = [["{}"], ["The weather was cold. {}", "Because of this, we know. {}"]]
    one = MemitKeyReader(model, gpt2_tok, ad, reqs, hp, groups, chunk_tokens=10**6)
    many = MemitKeyReader(model, gpt2_tok, ad, reqs, hp, groups, chunk_tokens=40)
    assert len(one.chunks) == 1 and len(many.chunks) > 3
    w = model.get_parameter(f"{hp.rewrite_module_tmp.format(1)}.weight")
    for i in range(2):
        (k1, z1), (k2, z2) = one.read(i), many.read(i)
        assert float((k1 - k2).norm() / k1.norm()) < 1e-6 and float((z1 - z2).norm() / z1.norm()) < 1e-6
        with torch.no_grad():
            w.mul_(1.5)  # the edit of layer 1 changes what layer 2's pass reads


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2"])
def test_key_reader_owned_forward_equals_hooks(arch, gpt2_tok):
    """The key reader on fastedit's own forward gives the keys and z_current that hooks on the
    model's modules record, at every layer pass, with the edited weight changed between passes (float64)."""
    from fastedit.hparams import MEMITHyperParams
    from fastedit.methods.memit import MemitKeyReader
    from fastedit.models import get_adapter
    from fastedit.requests import EditRequest

    model = random_model(arch, dtype=torch.float64)
    ad = get_adapter(model)
    hp = MEMITHyperParams.from_dict({"layers": [0, 1, 2], "v_loss_layer": 3}).resolve(ad, model)
    reqs = [EditRequest.from_dict({"prompt": p, "subject": s, "target_new": "x"}) for p, s in [
        ("{} plays the sport of", "LeBron James"), ("The mother tongue of {} is", "Danielle Darrieux")]]
    groups = [["{}"], ["The weather was cold. {}", "Because of this, we know. {}"]]
    owned = MemitKeyReader(model, gpt2_tok, ad, reqs, hp, groups, chunk_tokens=40)
    hooked = MemitKeyReader(model, gpt2_tok, ad, reqs, hp, groups, chunk_tokens=40)
    assert owned.owned is not None
    hooked.owned = None
    for i, layer in enumerate(hp.layers):
        (k1, z1), (k2, z2) = owned.read(i), hooked.read(i)
        assert float((k1 - k2).norm() / k2.norm()) < 1e-6 and float((z1 - z2).norm() / z2.norm()) < 1e-6
        with torch.no_grad():
            model.get_parameter(f"{hp.rewrite_module_tmp.format(layer)}.weight").mul_(1.5)


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "llama"])
@pytest.mark.parametrize("delta_site", ["block", "mlp"])
def test_prefix_pass_owned_forward_equals_hooks(arch, delta_site, gpt2_tok, monkeypatch):
    """The pass below the edit layer (the residual stream after it and the δ site's output) on
    fastedit's own forward equals the hooked pass through the model's modules (float64)."""
    from fastedit.hparams import MEMITHyperParams
    from fastedit.methods import stepping
    from fastedit.methods.keys import tokenize_batch
    from fastedit.models import get_adapter

    model = random_model(arch, dtype=torch.float64)
    ad = get_adapter(model)
    hp = MEMITHyperParams.from_dict({"layers": [1], "v_loss_layer": 3}).resolve(ad, model)
    batch = tokenize_batch(gpt2_tok, ["LeBron James plays the sport of", "The mother tongue of Danielle is"], "cpu")
    with torch.no_grad():
        owned = stepping._below(model, ad, hp, batch, 1, delta_site)
        monkeypatch.setattr(stepping, "owned_reader", lambda *a: None)
        hooked = stepping._below(model, ad, hp, batch, 1, delta_site)
    valid = batch.attention_mask.bool()
    for a, b in zip(owned, hooked):
        assert float((a[valid] - b[valid]).norm() / b[valid].norm()) < 1e-6


@pytest.mark.parametrize("owned", [True, False])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_read_all_equals_the_layer_passes(arch, owned, gpt2_tok):
    """The keys of every edit layer from one pass (a written batch's, for an edit history) equal the
    layer-by-layer passes on an unchanged model, on fastedit's own forward and with hooks (float64)."""
    from fastedit.hparams import MEMITHyperParams
    from fastedit.methods.memit import MemitKeyReader
    from fastedit.models import get_adapter
    from fastedit.requests import EditRequest

    model = random_model(arch, dtype=torch.float64)
    ad = get_adapter(model)
    hp = MEMITHyperParams.from_dict({"layers": [0, 2], "v_loss_layer": 3}).resolve(ad, model)
    reqs = [EditRequest.from_dict({"prompt": p, "subject": s, "target_new": "x"}) for p, s in [
        ("{} plays the sport of", "LeBron James"), ("The mother tongue of {} is", "Danielle Darrieux")]]
    groups = [["{}"], ["The weather was cold. {}", "Because of this, we know. {}"]]
    one, each = (MemitKeyReader(model, gpt2_tok, ad, reqs, hp, groups, chunk_tokens=40) for _ in range(2))
    if not owned:
        one.owned = each.owned = None
    got = one.read_all()
    assert list(got) == list(hp.layers)
    for i, layer in enumerate(hp.layers):
        want = each.read(i)[0]
        assert got[layer].shape == want.shape and want.shape[1] == len(reqs)
        assert float((got[layer] - want).norm() / want.norm()) < 1e-12
