"""Running only what δ can change: packed suffixes over a cached prefix.

In the target-value optimisation δ is added at the lookup token p of each prompt, after the edit
layer. Every position before p in that prompt is unaffected by δ at every layer (causal attention),
so it is computed once: the layers above the edit layer run over all prompts' prefixes
``[0, p)``, packed into a few rows with a block-diagonal causal mask and per-prompt position ids, and
keep their keys and values in a cache. Each iteration then runs only the suffixes ``[p, len)``,
packed the same way, attending to their own prompt's cached prefix and to their own earlier suffix
tokens. Nothing is padded and nothing is recomputed; the result at every suffix position equals
the full forward pass of that prompt, up to rounding.

The upper stack (:mod:`fastedit.models.stack`) does the work, given a 4D mask (boolean for the owned
stack and ``sdpa``, additive for ``eager``), explicit position ids and its cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SuffixLayout"]


def _pack(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Greedy bins of item indices whose lengths sum to at most ``max_tokens`` (an item longer than
    that gets a bin of its own)."""
    bins, cur, used = [], [], 0
    for i, n in enumerate(lengths):
        if cur and used + n > max_tokens:
            bins.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += n
    if cur:
        bins.append(cur)
    return bins


@dataclass
class SuffixLayout:
    """Where each prompt's prefix and suffix tokens sit in the packed rows.

    Built from the prompts' lengths and lookup positions (δ goes on the first suffix token).
    ``pre_index`` / ``suf_index``: (rows, P) / (rows, Q) indices into the flattened (batch·seq)
    hidden states of the padded prompts (padding slots point at index 0 and are masked).
    """

    pre_index: torch.Tensor
    pre_pos: torch.Tensor
    pre_mask: torch.Tensor
    suf_index: torch.Tensor
    suf_pos: torch.Tensor
    suf_mask: torch.Tensor
    slot_row: torch.Tensor  # (B,) packed row of each prompt's suffix
    slot_start: torch.Tensor  # (B,) column of each prompt's first suffix token (its lookup token)
    lookup: torch.Tensor  # (B,) lookup position of each prompt

    @classmethod
    def build(
        cls,
        lengths: list[int],
        lookup: list[int],
        seq_len: int,
        device,
        dtype: torch.dtype,
        boolean_mask: bool,
        max_tokens: int = 2048,
        bins: list[list[int]] | None = None,
        size=None,
    ) -> "SuffixLayout":
        """``bins``: the prompts of each packed row (default: greedy rows of up to ``max_tokens``).
        Each suffix token attends over its whole row, masked, so rows should hold what belongs
        together (one request's prompts), not a whole batch. ``size`` (n → columns ≥ n): pads the
        prefix and suffix columns to ``size(P)`` and ``size(Q)`` masked slots, so that prompts of
        similar lengths share one shape (:func:`fastedit.methods.stepping.bucket`)."""
        bins = bins if bins is not None else _pack(list(lengths), max_tokens)
        n_rows = len(bins)
        P = max(1, max(sum(lookup[i] for i in b) for b in bins))
        Q = max(sum(lengths[i] - lookup[i] for i in b) for b in bins)
        if size is not None:
            P, Q = size(P), size(Q)
        pre_index = torch.zeros(n_rows, P, dtype=torch.long)
        pre_pos = torch.zeros(n_rows, P, dtype=torch.long)
        pre_owner = torch.full((n_rows, P), -1, dtype=torch.long)
        suf_index = torch.zeros(n_rows, Q, dtype=torch.long)
        suf_pos = torch.zeros(n_rows, Q, dtype=torch.long)
        suf_owner = torch.full((n_rows, Q), -1, dtype=torch.long)
        slot_row = torch.zeros(len(lengths), dtype=torch.long)
        slot_start = torch.zeros(len(lengths), dtype=torch.long)
        for r, items in enumerate(bins):
            a = s = 0
            for i in items:
                p, n = lookup[i], lengths[i]
                pre_index[r, a : a + p] = i * seq_len + torch.arange(p)
                pre_pos[r, a : a + p] = torch.arange(p)
                pre_owner[r, a : a + p] = i
                suf_index[r, s : s + n - p] = i * seq_len + torch.arange(p, n)
                suf_pos[r, s : s + n - p] = torch.arange(p, n)
                suf_owner[r, s : s + n - p] = i
                slot_row[i], slot_start[i] = r, s
                a += p
                s += n - p
        # who may attend to whom: same prompt and not later; padding slots only to themselves, so
        # no row of the softmax is empty
        pre_ok = (pre_owner[:, :, None] == pre_owner[:, None, :]) & (pre_pos[:, None, :] <= pre_pos[:, :, None])
        pre_ok &= pre_owner[:, :, None] >= 0
        pre_ok |= torch.eye(P, dtype=torch.bool)[None]
        to_pre = (suf_owner[:, :, None] == pre_owner[:, None, :]) & (suf_owner[:, :, None] >= 0)
        to_suf = (suf_owner[:, :, None] == suf_owner[:, None, :]) & (suf_pos[:, None, :] <= suf_pos[:, :, None])
        to_suf &= suf_owner[:, :, None] >= 0
        to_suf |= torch.eye(Q, dtype=torch.bool)[None]
        suf_ok = torch.cat([to_pre, to_suf], dim=2)
        return cls(
            pre_index=pre_index.to(device),
            pre_pos=pre_pos.to(device),
            pre_mask=_mask(pre_ok, dtype, boolean_mask).to(device),
            suf_index=suf_index.to(device),
            suf_pos=suf_pos.to(device),
            suf_mask=_mask(suf_ok, dtype, boolean_mask).to(device),
            slot_row=slot_row.to(device),
            slot_start=slot_start.to(device),
            lookup=torch.tensor(lookup, device=device),
        )

    def rows(self, keep: torch.Tensor) -> "SuffixLayout":
        """The layout of the packed rows where ``keep`` (rows,) is true, with their prompts renumbered
        in order (the prefix and suffix columns are unchanged)."""
        prompt_keep = keep[self.slot_row]
        new_row = torch.cumsum(keep.long(), 0) - 1
        return SuffixLayout(
            pre_index=self.pre_index[keep], pre_pos=self.pre_pos[keep], pre_mask=self.pre_mask[keep],
            suf_index=self.suf_index[keep], suf_pos=self.suf_pos[keep], suf_mask=self.suf_mask[keep],
            slot_row=new_row[self.slot_row[prompt_keep]], slot_start=self.slot_start[prompt_keep],
            lookup=self.lookup[prompt_keep],
        )

    def slots(self, rows: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(packed row, column) of token ``positions`` of prompts ``rows`` (positions ≥ their lookup)."""
        return self.slot_row[rows], self.slot_start[rows] + positions - self.lookup[rows]

    def prefix_cache(self, stack, hidden_flat: torch.Tensor):
        """Run the layers of ``stack`` (:func:`fastedit.models.stack.upper_stack`) over the packed
        prefixes once, without gradients; returns the cache of their keys and values."""
        # rotary tables cover every position of the prompts, as one padded pass over them would
        n_positions = int(torch.maximum(self.pre_pos.max(), self.suf_pos.max())) + 1
        return stack.prefix(hidden_flat[self.pre_index], self.pre_pos, self.pre_mask, n_positions=n_positions)

    def run_suffix(self, stack, suffix_hidden: torch.Tensor, cache, capture: int | None = None):
        """The layers of ``stack`` over the packed suffixes (rows, Q, d) on top of ``cache`` (left
        unchanged); returns the hidden state after the final norm (rows, Q, d) and the output of layer
        ``capture`` (rows, Q, d), or None."""
        return stack.suffix(suffix_hidden, self.suf_pos, self.suf_mask, cache, capture=capture)


def _mask(ok: torch.Tensor, dtype: torch.dtype, boolean: bool) -> torch.Tensor:
    """(rows, q, k) permissions → (rows, 1, q, k) mask: boolean (True = attend) or additive."""
    ok = ok[:, None]
    if boolean:
        return ok
    out = torch.zeros(ok.shape, dtype=dtype)
    return out.masked_fill_(~ok, torch.finfo(dtype).min)
