"""What every method returns: per-weight low-rank updates, and the helpers to apply them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..models.adapters import ModelAdapter, get_module

__all__ = ["LowRankUpdate", "MethodOutput", "apply_update", "resolve_dtype"]


@dataclass
class LowRankUpdate:
    """ΔW = keys_side @ values_sideᵀ for one edited projection, in the (d_ff, d_model) orientation
    (key side first); :meth:`dense` turns it into the weight's own layout.

    ROME: keys_side = u (d_ff, 1), values_side = right vector (d_model, 1).
    MEMIT: keys_side = adj_k = (λC + KKᵀ)⁻¹K (d_ff, n), values_side = resid (d_model, n).
    """

    weight_name: str
    layer: int
    keys_side: torch.Tensor  # (d_ff, r)
    values_side: torch.Tensor  # (d_model, r)

    def dense(self, adapter: ModelAdapter, weight: torch.Tensor) -> torch.Tensor:
        """ΔW shaped like ``weight``, in the factors' dtype."""
        return adapter.delta_to_weight(self.keys_side @ self.values_side.T, weight)

    @property
    def rank(self) -> int:
        return int(self.keys_side.shape[1])


@dataclass
class MethodOutput:
    """A method's result for one call: the updates, the keys it adds to its edit history
    (``{layer: (d_ff, n)}``, for the methods whose later solves use earlier edits' keys; recorded by
    the session with the edit) and diagnostics (loss curves, norms, ...)."""

    updates: list[LowRankUpdate]
    info: dict[str, Any] = field(default_factory=dict)
    history: dict[int, torch.Tensor] = field(default_factory=dict)


def apply_update(model, adapter: ModelAdapter, upd: LowRankUpdate, sign: float = 1.0) -> None:
    """W += sign · ΔW, cast to the weight's dtype (as the references add ``upd_matrix.float()``)."""
    w = get_module(model, upd.weight_name.rsplit(".", 1)[0]).weight
    with torch.no_grad():
        delta = upd.dense(adapter, w).to(device=w.device)
        w.add_(delta.to(w.dtype), alpha=sign)


def resolve_dtype(hp, reference: torch.dtype) -> torch.dtype:
    """The solve precision: the hparams' ``solve_dtype`` or the method's reference precision."""
    return getattr(torch, hp.solve_dtype) if hp.solve_dtype else reference
