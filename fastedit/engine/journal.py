"""The journal: every applied edit as its requests and low-rank factors, kept off the device.

What undo needs and no more: per edit its requests (for saving), its updates as factors
``keys (d_ff, r)``, ``values (d_model, r)`` on the CPU, the keys it adds to its method's edit
history (``{layer: (d_ff, n)}``, for the methods that keep one), whether it is still active,
and its phase times. Factors are stored in float32, or float64 for float64 weights: rounding them to float32
changes ΔW by about 1e-7 of ΔW, far below the rounding of a float32/bf16/fp16 weight itself, and
halves the memory of MEMIT's float64 factors (a 10,000-edit run of a 7B model keeps gigabytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..methods.base import LowRankUpdate
from ..requests import EditRequest

__all__ = ["JournalEntry", "Journal", "factor_dtype", "request_record"]

# ranks summed per matmul when rebuilding a weight: bounds the temporary factors of a long journal
_CHUNK_RANK = 1024


def factor_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """The journal's dtype for the factors of a weight of ``weight_dtype``."""
    return torch.float64 if weight_dtype == torch.float64 else torch.float32


@dataclass
class JournalEntry:
    """One applied edit: its requests, its updates as factors and its edit-history keys, on the CPU."""

    edit_id: int
    requests: list[EditRequest]
    updates: list[LowRankUpdate]
    active: bool = True
    times: dict[str, float] = field(default_factory=dict)
    history: dict[int, torch.Tensor] = field(default_factory=dict)  # layer → keys (d_ff, n)


class Journal:
    """The applied edits in order, with the ids to give the next one."""

    def __init__(self) -> None:
        self.entries: list[JournalEntry] = []
        self.next_id = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[JournalEntry]:
        return iter(self.entries)

    def __getitem__(self, i: int) -> JournalEntry:
        return self.entries[i]

    def record(self, requests: list[EditRequest], updates: list[LowRankUpdate], weight_dtypes: dict,
               times: dict[str, float], history: dict[int, torch.Tensor] | None = None) -> JournalEntry:
        """Append an edit, its factors and its history keys copied to the CPU in :func:`factor_dtype` of
        each weight (float32 keys lose nothing: they were read from float32 activations)."""
        stored = []
        for u in updates:
            dtype = factor_dtype(weight_dtypes[u.weight_name])
            stored.append(LowRankUpdate(
                u.weight_name, u.layer, u.keys_side.detach().to("cpu", dtype).contiguous(),
                u.values_side.detach().to("cpu", dtype).contiguous(),
            ))
        layer_dtype = {u.layer: factor_dtype(weight_dtypes[u.weight_name]) for u in updates}
        kept = {int(l): k.detach().to("cpu", layer_dtype.get(int(l), torch.float32)).contiguous()
                for l, k in (history or {}).items()}
        entry = JournalEntry(self.next_id, list(requests), stored, True, dict(times), kept)
        self.entries.append(entry)
        self.next_id += 1
        return entry

    def entry(self, edit_id: int) -> JournalEntry:
        for e in self.entries:
            if e.edit_id == edit_id:
                return e
        raise KeyError(f"no edit #{edit_id} in this session's journal")

    def active_updates(self, name: str) -> list[LowRankUpdate]:
        """The updates of weight ``name`` made by the edits still active, oldest first."""
        return [u for e in self.entries if e.active for u in e.updates if u.weight_name == name]

    def active_factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The active updates of ``name`` as one pair ``keys (d_ff, R)``, ``values (d_model, R)``
        (float32, as edit packs carry them), or None when there are none."""
        ups = self.active_updates(name)
        if not ups:
            return None
        return (torch.cat([u.keys_side for u in ups], 1).float(), torch.cat([u.values_side for u in ups], 1).float())

    def active_delta(self, name: str, device) -> torch.Tensor | None:
        """Σ keys @ valuesᵀ over the active updates of ``name`` in the (d_ff, d_model) orientation,
        float64 on ``device``, or None when there are none. Summed in chunks of ranks, so no
        temporary grows with the journal."""
        ups = self.active_updates(name)
        if not ups:
            return None
        total = torch.zeros(ups[0].keys_side.shape[0], ups[0].values_side.shape[0], dtype=torch.float64, device=device)
        start = 0
        while start < len(ups):
            end, rank = start, 0
            while end < len(ups) and (rank == 0 or rank + ups[end].rank <= _CHUNK_RANK):
                rank += ups[end].rank
                end += 1
            k = torch.cat([u.keys_side for u in ups[start:end]], 1).to(device=device, dtype=torch.float64)
            v = torch.cat([u.values_side for u in ups[start:end]], 1).to(device=device, dtype=torch.float64)
            total.addmm_(k, v.T)
            start = end
        return total


def request_record(r: EditRequest) -> dict:
    """A request as saved in a session: the reference layout plus the evaluation prompts it carries."""
    out = r.to_reference_dict()
    if r.paraphrase_prompts:
        out["paraphrase_prompts"] = list(r.paraphrase_prompts)
    if r.neighborhood_prompts:
        out["neighborhood_prompts"] = list(r.neighborhood_prompts)
    if r.neighborhood_answer:
        out["neighborhood_answer"] = r.neighborhood_answer
    return out
