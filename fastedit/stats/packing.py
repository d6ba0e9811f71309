"""Documents packed into full rows of fixed length for the statistics pass.

Each document (its first ``max_len`` tokens: the references' truncation) goes whole into one row, and a
row holds several documents end to end, so the forward pass spends almost nothing on padding. Attention
never crosses a document: a row that holds several documents comes with a block-diagonal causal mask
``(rows, 1, S, S)`` and position ids that restart at 0 for each document, so every document's keys are
those of its own unpadded forward pass (to rounding; tests/stats/test_packing.py checks GPT-2, GPT-J,
GPT-NeoX and Llama). Rows are filled first-fit decreasing within a window of documents; the little
padding left (the tail of a row that no remaining document fits) is masked out of the statistics.

A batch whose rows each hold a single document needs no mask at all (plain causal attention and
positions 0..S-1 give the same keys), which keeps the fast causal attention kernels in play: long
documents, truncated to the row length, fill such rows exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["PackedBatch", "first_fit_decreasing", "pack_documents", "block_causal_mask", "mask_kind"]


@dataclass
class PackedBatch:
    """One forward pass worth of packed rows (CPU tensors).

    ``input_ids``, ``segments``: (rows, S). ``segments`` numbers the documents within each row
    1, 2, ...; 0 marks padding. ``single``: every row holds one document (then no mask is needed).
    """

    input_ids: torch.Tensor
    segments: torch.Tensor
    single: bool
    tokens: int
    documents: int

    @property
    def valid(self) -> torch.Tensor:
        """(rows, S) bool: the positions whose keys count."""
        return self.segments > 0

    @property
    def padding(self) -> int:
        return self.input_ids.numel() - self.tokens

    def position_ids(self) -> torch.Tensor:
        """(rows, S) long: 0, 1, ... within each document (and within each row's padding tail)."""
        seg = self.segments
        idx = torch.arange(seg.shape[1]).expand_as(seg)
        start = torch.ones_like(seg, dtype=torch.bool)
        start[:, 1:] = seg[:, 1:] != seg[:, :-1]
        # position = index - index of the segment's first token (a running max of the start indices)
        first = torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=1).values
        return idx - first


def first_fit_decreasing(lengths: Sequence[int], row_len: int) -> list[list[int]]:
    """Group the indices of ``lengths`` into rows of total length <= ``row_len``: longest first (ties in
    the given order), each into the first row with room. Deterministic. Rows come in creation order,
    so documents that fill a row alone come first."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    open_rows: list[int] = []  # rows with any room left, in creation order
    for i in order:
        n = lengths[i]
        if n > row_len:
            raise ValueError(f"document of {n} tokens does not fit a row of {row_len}")
        if n <= 0:
            continue
        for pos, r in enumerate(open_rows):
            if free[r] >= n:
                break
        else:
            r, pos = len(rows), len(open_rows)
            rows.append([])
            free.append(row_len)
            open_rows.append(r)
        rows[r].append(i)
        free[r] -= n
        if free[r] == 0:
            del open_rows[pos]
    return rows


def pack_documents(
    docs: Sequence[Sequence[int]], row_len: int, rows_per_batch: int, pad_id: int = 0
) -> list[PackedBatch]:
    """Pack token lists (each at most ``row_len`` long; empty ones are skipped) into batches of
    ``rows_per_batch`` rows of ``row_len`` tokens. Rows holding one document are batched apart from
    rows holding several, so that the former need no attention mask."""
    if rows_per_batch < 1:
        raise ValueError(f"rows_per_batch must be >= 1, got {rows_per_batch}")
    rows = first_fit_decreasing([len(d) for d in docs], row_len)
    singles = [r for r in rows if len(r) == 1]
    multis = [r for r in rows if len(r) > 1]
    batches = []
    for group, single in ((singles, True), (multis, False)):
        for b in range(0, len(group), rows_per_batch):
            chunk = group[b : b + rows_per_batch]
            ids = torch.full((len(chunk), row_len), pad_id, dtype=torch.long)
            seg = torch.zeros((len(chunk), row_len), dtype=torch.int32)
            tokens = 0
            for r, members in enumerate(chunk):
                at = 0
                for k, i in enumerate(members):
                    d = docs[i]
                    ids[r, at : at + len(d)] = torch.as_tensor(d, dtype=torch.long)
                    seg[r, at : at + len(d)] = k + 1
                    at += len(d)
                tokens += at
            batches.append(PackedBatch(ids, seg, single, tokens, sum(len(m) for m in chunk)))
    return batches


def mask_kind(model) -> str:
    """How a custom 4D mask must be given to this model's attention: ``"bool"`` (SDPA: True = attend)
    or ``"additive"`` (eager: 0 or the dtype's lowest value, added to the scores)."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl == "sdpa" and getattr(model, "_supports_sdpa", True):
        return "bool"
    if impl == "sdpa":
        # a family without SDPA in this transformers (GPT-J in 4.x) runs its eager attention, which
        # adds the mask to the scores
        return "additive"
    if impl == "eager":
        return "additive"
    raise ValueError(
        f"packed statistics need an attention implementation that takes a 4D mask (eager or sdpa); this "
        f"model uses {impl!r}: load it with attn_implementation='sdpa'"
    )


def block_causal_mask(segments: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """(rows, 1, S, S) mask from (rows, S) ``segments``: query i sees key j <= i of its own document.
    Padding positions see the earlier padding of their row (finite values, never read)."""
    s = segments.shape[1]
    causal = torch.ones((s, s), dtype=torch.bool, device=segments.device).tril_()
    allowed = (segments[:, :, None] == segments[:, None, :]) & causal
    allowed = allowed[:, None]
    if kind == "bool":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill_(~allowed, torch.finfo(dtype).min)
