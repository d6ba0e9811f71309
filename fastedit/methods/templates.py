"""Context templates: short model-generated texts that prefix the edit prompt.

The references sample them once per process from the model as it is at the first edit and never
resample. ROME uses ``"{}"`` plus 10 texts of ``max_out_len`` 5 and 10 of ``max_out_len`` 10, sampled
top-k 5 from the literal prompt ``"<|endoftext|>"``; the MEMIT family uses two groups, ``["{}"]`` and
one text of ``max_out_len`` 10 per start word. Each text becomes ``text + ". {}"``.

fastedit samples with a seeded generator (so runs repeat) and with the attention mask over every
position (the reference's sampler, under transformers 5, passes a one-column mask and its templates
degenerate into punctuation). Templates can also be passed in directly, which is what parity tests do.
"""

from __future__ import annotations

import unicodedata

import torch

__all__ = ["sample_texts", "rome_templates", "memit_templates", "start_word_templates", "MEMIT_START_WORDS"]

MEMIT_START_WORDS = ("The", "Therefore", "Because", "I", "You")


@torch.no_grad()
def sample_texts(
    model,
    tok,
    prompt: str,
    n: int,
    max_out_len: int,
    top_k: int = 5,
    generator: torch.Generator | None = None,
) -> list[str]:
    """``n`` continuations of ``prompt`` by top-k sampling, each ``max_out_len`` tokens long in all
    (prompt tokens included, as the reference counts), decoded as the reference decodes them:
    ``"\\n\\n"`` → ``" "``, NFKD, ``<|endoftext|>`` removed. A BOS the tokenizer adds is not part of
    the returned text."""
    device = next(model.parameters()).device
    with_special = tok(prompt)["input_ids"]
    plain = tok(prompt, add_special_tokens=False)["input_ids"]
    n_added = len(with_special) - len(plain) if with_special[-len(plain):] == plain else 0
    ids = torch.tensor([with_special] * n, device=device)
    while ids.shape[1] < max_out_len:
        # No KV cache: at most a handful of steps over ~10 tokens, and it keeps the sampler
        # independent of the cache API, which changed between transformers versions.
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[:, -1]
        probs = torch.softmax(logits.float(), dim=-1)
        top = torch.topk(probs, top_k, dim=-1)
        p = (top.values / top.values.sum(-1, keepdim=True)).cpu()
        pick = torch.multinomial(p, 1, generator=generator).to(device)
        ids = torch.cat([ids, torch.gather(top.indices, 1, pick)], dim=1)
    out = []
    for row in ids.tolist():
        text = tok.decode(row[n_added:])
        text = unicodedata.normalize("NFKD", text).replace("\n\n", " ").replace("<|endoftext|>", "")
        out.append(text)
    return out


def _as_template(text: str) -> str:
    # A brace in a sampled text would break str.format; the MEMIT reference replaces them with
    # spaces, and fastedit does so for ROME too (where the reference would raise).
    return text.replace("{", " ").replace("}", " ") + ". {}"


def rome_templates(
    model, tok, length_params=((5, 10), (10, 10)), seed: int = 0, prompt: str = "<|endoftext|>"
) -> list[str]:
    """ROME's 21 templates: ``"{}"`` then ``n`` samples of each ``(max_out_len, n)``."""
    gen = torch.Generator().manual_seed(seed)
    out = ["{}"]
    for length, n in length_params:
        out += [_as_template(t) for t in sample_texts(model, tok, prompt, n, length, generator=gen)]
    return out


def memit_templates(model, tok, seed: int = 0, max_out_len: int = 10) -> list[list[str]]:
    """MEMIT's two groups: ``[["{}"], [one sample per start word]]``."""
    gen = torch.Generator().manual_seed(seed)
    group = []
    for word in MEMIT_START_WORDS:
        group += [_as_template(t) for t in sample_texts(model, tok, word, 1, max_out_len, generator=gen)]
    return [["{}"], group]


def start_word_templates(model, tok, length_params=((5, 10), (10, 10)), seed: int = 0) -> list[str]:
    """EasyEdit's ROME templates: ``"{}"`` then, for each ``(max_out_len, n)``, ``n // 5`` samples from
    each MEMIT start word (EasyEdit samples ROME's templates as MEMIT does, not from ``"<|endoftext|>"``)."""
    gen = torch.Generator().manual_seed(seed)
    out = ["{}"]
    for length, n in length_params:
        for word in MEMIT_START_WORDS:
            out += [_as_template(t) for t in sample_texts(model, tok, word, n // len(MEMIT_START_WORDS), length, generator=gen)]
    return out
