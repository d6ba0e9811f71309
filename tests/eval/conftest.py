"""Fixtures for the evaluation tests: a tiny random GPT-2 and a bigram model whose logits the test
sets, with a word-level tokenizer, for hand-computed cases."""

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast


class WordTokenizer:
    """Splits on spaces; id 0 is padding. Enough of the tokenizer interface for fastedit.eval."""

    def __init__(self, words):
        self.vocab = ["<pad>"] + list(words)
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.pad_token_id = 0
        self.eos_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [self.ids[w] for w in text.split()]}

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(self.vocab[i] for i in ids if not (skip_special_tokens and i == 0))


class BigramLM(torch.nn.Module):
    """Next-token logits depend only on the current token: ``logits[b, t] = table[input_ids[b, t]]``."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table.clone(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0, use_cache=False, **kwargs):
        logits = self.table[input_ids]
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return CausalLMOutputWithPast(logits=logits)


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """These tests run tiny models, whose ops are too small to split across threads; on a shared
    machine a second thread mostly waits for a busy core. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


WORDS = ["Alice", "Bob", "lives", "resides", "stays", "in", "at", "near", "by", "Paris", "Rome", "New", "York"]


@pytest.fixture
def word_tok():
    return WordTokenizer(WORDS)


@pytest.fixture
def bigram(word_tok):
    """After "in" Rome beats Paris; after "at" Paris beats Rome; after "near" Rome beats Paris; after
    "by" Paris beats Rome; "New" is followed by "York"; otherwise small seeded noise."""
    gen = torch.Generator().manual_seed(0)
    table = 0.1 * torch.randn(len(word_tok.vocab), len(word_tok.vocab), generator=gen)
    ids = word_tok.ids
    for prev, favourite, second in (("in", "Rome", "Paris"), ("at", "Paris", "Rome"), ("near", "Rome", "Paris"),
                                    ("by", "Paris", "Rome"), ("New", "York", "Paris")):
        table[ids[prev], ids[favourite]] = 3.0
        table[ids[prev], ids[second]] = 1.5
    return BigramLM(table)


@pytest.fixture(scope="module")
def tiny_gpt2():
    from fastedit.models import random_model

    return random_model("gpt2", n_positions=1024)
