"""The edit history: the keys earlier edits added, per layer, for the methods whose solve uses them
(AlphaEdit's K_pK_pᵀ, ENCORE's Σ_prev KKᵀ).

It is a view of the journal (the active entries' ``history`` keys), so undo removes an edit's keys
and a loaded session has them back; the Gram sums a caller asks to keep are held on the CPU in
float64 and updated as edits are recorded.
"""

from __future__ import annotations

import torch

from .journal import Journal, JournalEntry

__all__ = ["EditHistory"]


class EditHistory:
    """Σ K Kᵀ per layer over the active journal entries' history keys."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._gram: dict[int, torch.Tensor] = {}
        self._version: dict[int, int] = {}

    def keys(self, layer: int) -> list[torch.Tensor]:
        """The active edits' keys at ``layer``, oldest first, each (d_ff, n) float32 on the CPU."""
        return [e.history[layer] for e in self.journal if e.active and layer in e.history]

    def gram(self, layer: int, keep: bool = True) -> torch.Tensor | None:
        """Σ K Kᵀ (d_ff, d_ff) float64 on the CPU over the active edits, or None when there are none.

        ``keep``: hold the sum and add each later edit's keys to it (for a caller that reads it every
        edit). A caller that keeps its own state from it passes False: nothing is held for it, so no
        d_ff² float64 copy per layer and no update per edit (Llama-3-8B: 1.6 GB a layer)."""
        if layer in self._gram:
            return self._gram[layer]
        keys = self.keys(layer)
        if not keys:
            return None
        k = torch.cat(keys, 1).double()
        gram = k @ k.T
        if keep:
            self._gram[layer] = gram
        return gram

    def columns(self, layer: int) -> int:
        """How many key vectors the history of ``layer`` holds."""
        return sum(k.shape[1] for k in self.keys(layer))

    def version(self, layer: int) -> int:
        """A number that changes whenever ``layer``'s history changes."""
        return self._version.get(layer, 0)

    def added(self, entry: JournalEntry) -> None:
        """``entry`` was just recorded: add its keys to the sums that exist."""
        for layer, k in entry.history.items():
            if layer in self._gram:
                kd = k.double()
                self._gram[layer].addmm_(kd, kd.T)
            self._version[layer] = self.version(layer) + 1

    def changed(self, layers=None) -> list[int]:
        """The history of ``layers`` (default: every layer) changed otherwise (undo, load): drop the
        sums. Returns the layers affected."""
        touched = sorted({l for e in self.journal for l in e.history} if layers is None else set(layers))
        for layer in touched:
            self._gram.pop(layer, None)
            self._version[layer] = self.version(layer) + 1
        return touched
