"""Where the fact is looked up, and the keys there.

The key k is the input of the edited projection (the MLP's output projection) at the subject's
lookup token. Two rules locate that token:

* ``additive`` (kmeng01): split the template at ``{}`` into prefix and suffix; a non-empty prefix
  must end in a space, which is stripped, and the subject becomes ``" " + subject.strip()``;
  tokenise the three pieces separately (special tokens included) and add the lengths:
  last = len(prefix) + len(subject) − 1, first = len(prefix),
  first_after_last = len(prefix) + len(subject) − (1 if the suffix is empty else 0).
* ``concat`` (AlphaEdit): lengths of ``encode(prefix)``, ``encode(prefix + subject)`` and
  ``encode(prefix + subject + suffix)``; right for tokenizers that prepend BOS to every piece, where
  the additive rule counts one BOS per piece. (A space ending the prefix is moved onto the subject
  first; ``last`` is unchanged by that and ``first`` no longer lands on a lone space token.)

``fact_token="last"`` takes the last token of the filled prompt.

Batches are right-padded and run with their attention mask, so positions are those of the unpadded
sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..models.tracing import record
from ..requests import RequestError

__all__ = ["lookup_index", "TokenBatch", "tokenize_batch", "pad_batch", "read_at_positions"]


def lookup_index(tok, template: str, subject: str, fact_token: str, rule: str = "additive") -> int:
    """Index of the lookup token of ``template.format(subject)`` (``template`` has one ``{}``)."""
    if template.count("{}") != 1:
        raise RequestError(f"template {template!r} must contain exactly one '{{}}'")
    if fact_token == "last":
        return len(tok(template.format(subject))["input_ids"]) - 1
    if not fact_token.startswith("subject_"):
        raise ValueError(f"fact_token={fact_token!r} not recognized")
    subtoken = fact_token[len("subject_") :]
    prefix, suffix = template.split("{}")
    if rule == "additive":
        word = subject
        if prefix:
            if prefix[-1] != " ":
                raise RequestError(
                    f"in {template!r} the subject does not follow a space; the additive subject-index rule "
                    "needs one (use subject_index_rule='concat')"
                )
            prefix = prefix[:-1]
            word = " " + subject.strip()
        n_prefix, n_word, n_suffix = (len(ids) for ids in tok([prefix, word, suffix])["input_ids"])
    elif rule == "concat":
        # The prefix's trailing space belongs to the subject's first token; moving it there leaves
        # prefix + subject (and so "last") unchanged and keeps "first" off a lone space token.
        word = subject
        if prefix.endswith(" "):
            prefix, word = prefix[:-1], " " + subject
        n_prefix = len(tok(prefix)["input_ids"])
        n_prompt = len(tok(prefix + word)["input_ids"])
        n_input = len(tok(prefix + word + suffix)["input_ids"])
        n_word, n_suffix = n_prompt - n_prefix, n_input - n_prompt
    else:
        raise ValueError(f"unknown subject_index_rule {rule!r}")
    if n_word <= 0:
        raise RequestError(f"subject {subject!r} takes no tokens in {template!r}")
    if subtoken == "last":
        return n_prefix + n_word - 1
    if subtoken == "first_after_last":
        return n_prefix + n_word - (1 if n_suffix == 0 else 0)
    if subtoken == "first":
        return n_prefix
    raise ValueError(f"unknown subtoken {subtoken!r} in fact_token={fact_token!r}")


@dataclass
class TokenBatch:
    """Right-padded token ids and mask on a device, with each row's length."""

    input_ids: torch.Tensor  # (batch, seq)
    attention_mask: torch.Tensor  # (batch, seq)
    lengths: torch.Tensor  # (batch,), on the CPU

    def model_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def tokenize_batch(tok, texts: Sequence[str], device) -> TokenBatch:
    """Tokenise (special tokens included, as ``tok(text)`` does) and right-pad with the pad id."""
    return pad_batch(tok, tok(list(texts))["input_ids"], device)


def pad_batch(tok, rows: Sequence[Sequence[int]], device) -> TokenBatch:
    """Right-pad token id lists with the tokenizer's pad id (EOS, or 0, when it has none)."""
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    lengths = mask.sum(1)
    return TokenBatch(ids.to(device), mask.to(device), lengths)


@torch.no_grad()
def read_at_positions(
    model,
    tok,
    texts: Sequence[str],
    positions: Sequence[int],
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
    stop_after: str | None = None,
    batch_size: int = 512,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Run ``texts`` through the model and return, for each named module, its input (``inputs``) or
    output (``outputs``) at ``positions[i]`` of text ``i``: dicts name → (len(texts), width).
    The pass stops after ``stop_after`` when given."""
    device = next(model.parameters()).device
    got_in: dict[str, list[torch.Tensor]] = {n: [] for n in inputs}
    got_out: dict[str, list[torch.Tensor]] = {n: [] for n in outputs}
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        pos = torch.tensor(positions[start : start + batch_size], device=device)
        batch = tokenize_batch(tok, chunk, device)
        if (pos >= batch.lengths.to(device)).any():
            raise RequestError("a lookup position falls outside its prompt")
        rows = torch.arange(len(chunk), device=device)
        with record(model, inputs=inputs, outputs=outputs, stop_after=stop_after) as rec:
            model(**batch.model_inputs(), use_cache=False)
        for n in inputs:
            got_in[n].append(rec.inputs[n][rows, pos])
        for n in outputs:
            got_out[n].append(rec.outputs[n][rows, pos])
    return (
        {n: torch.cat(v) for n, v in got_in.items()},
        {n: torch.cat(v) for n, v in got_out.items()},
    )
