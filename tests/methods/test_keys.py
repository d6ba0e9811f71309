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
