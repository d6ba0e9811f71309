"""Solves with a symmetric positive-definite system that grows by low-rank terms, edit after edit.

The sequential editing methods (ENCORE, AlphaEdit, MEMIT with an edit history) solve with
``A_t = A_0 + Σ_{i<=t} K_i K_iᵀ`` after every edit t, K_i (d, k_i) the edit's keys. Refactorising
costs d³/3 flops per edit (d = d_ff: 14,336 for Llama-3-8B); :class:`GrowingCholesky` keeps the factor
and updates it by each edit's keys in O(d² k) (:func:`fastedit.ops.cholesky_update_`), checking
every ``check_every`` updates that it still factors A_t and refactorising when it has drifted.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from . import ops

logger = logging.getLogger(__name__)


class GrowingCholesky:
    """The lower Cholesky factor ``L`` of ``A = A_0 + Σ K Kᵀ``, kept up to date by rank-k updates.

    A0: (d, d) symmetric positive definite, float32 or float64 (``dtype`` converts it); the factor,
    the matrix and every result live on A0's device in that dtype. ``copy=False`` lets the helper
    take A0 over and add folded keys to it in place (saves one d × d copy).

    Drift control: every ``check_every`` updates (0: never; :meth:`check` at any time) the relative
    residual ``‖L Lᵀ z − A z‖ / ‖A z‖`` on a fixed random probe z is measured (O(d²)); when it
    exceeds ``tol`` (default: ``growth`` times the residual of a fresh factorisation, at least
    64 ulps), A is refactorised from the accumulated matrix. A is kept as A_0 plus the keys since the
    last refactorisation, folded into A_0 once they reach ``fold_columns`` columns (default d / 8), so
    an update costs one pass over L and not another over A.
    """

    def __init__(
        self,
        A0: Tensor,
        *,
        dtype: torch.dtype | None = None,
        copy: bool = True,
        check_every: int = 100,
        tol: float | None = None,
        growth: float = 10.0,
        fold_columns: int | None = None,
        seed: int = 0,
    ):
        if A0.dim() != 2 or A0.shape[0] != A0.shape[1]:
            raise ValueError(f"A0 must be a square (d, d) matrix, got shape {tuple(A0.shape)}")
        dtype = dtype or A0.dtype
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"GrowingCholesky works in float32 or float64, got {dtype}")
        if check_every < 0:
            raise ValueError(f"check_every must be >= 0, got {check_every}")
        if tol is not None and not tol > 0:
            raise ValueError(f"tol must be positive, got {tol}")
        self.d = A0.shape[0]
        converted = A0.to(dtype)
        self._base = converted.clone() if (copy and converted is A0) else converted
        self._keys: list[Tensor] = []
        self._key_columns = 0
        self.check_every = check_every
        self.tol = tol
        self.growth = growth
        self.fold_columns = fold_columns if fold_columns is not None else max(64, self.d // 8)
        g = torch.Generator().manual_seed(seed)
        probe = torch.randn(self.d, generator=g, dtype=torch.float64)
        self._probe = (probe / probe.norm().clamp_min(1e-300)).to(dtype).to(A0.device)
        self.updates = 0
        self.refactorizations = 0
        self._since_check = 0
        self.L = ops.cholesky(self._base).contiguous()  # row-major: the layout every update kernel streams best
        self.fresh_residual = self.residual()
        self.last_residual = self.fresh_residual

    @property
    def dtype(self) -> torch.dtype:
        return self._base.dtype

    @property
    def device(self) -> torch.device:
        return self._base.device

    @property
    def threshold(self) -> float:
        """The residual above which :meth:`check` refactorises."""
        if self.tol is not None:
            return self.tol
        floor = 64 * torch.finfo(self.dtype).eps
        return max(self.growth * self.fresh_residual, floor)

    def update(self, K: Tensor) -> None:
        """Add ``K Kᵀ`` to A and update the factor. K: (d, k) or (d,), any float dtype."""
        K = K.unsqueeze(1) if K.dim() == 1 else K
        if K.dim() != 2 or K.shape[0] != self.d:
            raise ValueError(f"K must be (d, k) or (d,) with d = {self.d}, got shape {tuple(K.shape)}")
        if K.device != self.device:
            raise ValueError(f"K is on {K.device}, the factor on {self.device}")
        K = K.to(self.dtype, copy=True)
        ops.cholesky_update_(self.L, K)
        self._keys.append(K)
        self._key_columns += K.shape[1]
        if self._key_columns >= self.fold_columns:
            self._fold()
        self.updates += 1
        self._since_check += 1
        if self.check_every and self._since_check >= self.check_every:
            self.check()

    def solve(self, B: Tensor) -> Tensor:
        """X with A X = B. B: (d, m) or (d,) in the factor's dtype and device; X shaped like B."""
        return ops.cholesky_solve(self.L, B)

    def matvec(self, x: Tensor) -> Tensor:
        """A x for x (d,) or (d, m), without forming A."""
        out = self._base @ x
        for K in self._keys:
            out = out + K @ (K.mT @ x)
        return out

    def matrix(self) -> Tensor:
        """A as a new (d, d) tensor."""
        A = self._base.clone()
        for K in self._keys:
            A.addmm_(K, K.mT)
        return A

    def residual(self) -> float:
        """‖L Lᵀ z − A z‖ / ‖A z‖ on the probe z: how far the factor is from A (one host sync)."""
        z = self._probe
        Az = self.matvec(z)
        LLz = self.L @ (self.L.mT @ z)
        return float(torch.linalg.vector_norm(LLz - Az) / torch.linalg.vector_norm(Az).clamp_min(1e-300))

    def check(self) -> bool:
        """Measure the residual; refactorise when it exceeds :attr:`threshold` (or is not finite).

        Returns whether it refactorised.
        """
        self._since_check = 0
        self.last_residual = self.residual()
        if self.last_residual <= self.threshold:  # False for NaN
            return False
        logger.info(
            "GrowingCholesky: residual %.3g after %d updates exceeds %.3g: refactorising",
            self.last_residual,
            self.updates,
            self.threshold,
        )
        self.refactorize()
        return True

    def refactorize(self) -> None:
        """Factor the accumulated A afresh (O(d³)); raises NotPositiveDefiniteError if it is not SPD."""
        self._fold()
        self.L = ops.cholesky(self._base).contiguous()  # row-major: the layout every update kernel streams best
        self.refactorizations += 1
        self.fresh_residual = self.residual()
        self.last_residual = self.fresh_residual
        self._since_check = 0

    def _fold(self) -> None:
        """A_0 += the keys kept since the last fold (one d × d × n product)."""
        if not self._keys:
            return
        K = torch.cat(self._keys, dim=1)
        self._base.addmm_(K, K.mT)
        self._keys = []
        self._key_columns = 0


__all__ = ["GrowingCholesky"]
