"""AlphaEdit (Fang et al., ICLR 2025), as in jianghoucheng/AlphaEdit: MEMIT with the update projected
onto the null space of the preserved knowledge's keys.

1. P_l = U_r U_rᵀ per edit layer, U_r the singular vectors of the unscaled second moment C = E[kkᵀ]
   whose singular value is below ``nullspace_threshold`` (once per layer, on the unedited model);
2. z for every request, then for each layer l in order, K (d_ff × n) and R = (Z − z_current) /
   (layers left) exactly as MEMIT;
3. ΔW_l = X Rᵀ with X = (P(K_pK_pᵀ + KKᵀ) + L2·I)⁻¹ P K (the reference solves it densely in float32;
   no λC term: ``mom2_update_weight`` is read but unused);
4. after the whole batch, K_pK_pᵀ += KKᵀ at every layer with the keys recomputed on the edited model.

Because L2 > 0 the solution lies in span(U_r): X = U_r (U_rᵀ(K_pK_pᵀ + KKᵀ)U_r + L2·I_r)⁻¹ U_rᵀK, an
r × r system (fast mode).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import ops
from ..errors import NumericalError
from ..hparams import MEMITHyperParams, _name, _real
from ..linalg import GrowingCholesky
from ..profiling import region
from .base import MethodOutput
from .memit import MemitFamily, MemitKeyReader
from .registry import register

log = logging.getLogger(__name__)

__all__ = ["AlphaEditHyperParams", "AlphaEdit", "alphaedit_solve", "alphaedit_solve_reduced", "null_space_basis"]


@dataclass(frozen=True)
class AlphaEditHyperParams(MEMITHyperParams):
    """AlphaEdit's hyperparameters: MEMIT's plus ``nullspace_threshold`` (the absolute singular-value
    cut on C) and ``L2`` (the ridge on the update). Its files name neither the subject-index rule nor
    the target handling: its code always uses the ``concat`` rule and strips a BOS from targets, so
    those are the defaults here. ``P_loc`` (EasyEdit's files: where its code saves P with
    ``torch.save``) is accepted and not read: P is computed from the statistics, once per layer and
    session, and no pickle is loaded."""

    METHOD: ClassVar[str] = "alphaedit"
    PRESET_FOLDER: ClassVar[str] = "AlphaEdit"

    nullspace_threshold: float = 2e-2
    L2: float = 10.0
    subject_index_rule: str = "concat"
    strip_target_bos: bool = True
    P_loc: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        # L2 = 0 leaves P(KKᵀ + K_pK_pᵀ) singular (rank at most that of the keys), so the solve fails.
        self._check_rules({"nullspace_threshold": _real(0, True), "L2": _real(0, True), "P_loc": _name(True)})


def null_space_basis(c: torch.Tensor, threshold: float, by_svd: bool = True) -> torch.Tensor:
    """U_r (d_ff, r): the singular vectors of C = E[kkᵀ] (d_ff, d_ff) whose singular value is below
    ``threshold`` (absolute, on the unscaled C), in C's dtype and device; P = U_r U_rᵀ.

    ``by_svd``: the reference's ``get_project`` (``torch.linalg.svd``), which reproduces its P to the
    last bit on the same device; otherwise ``eigh`` (C is symmetric: singular values = |eigenvalues|),
    several times faster. Both span the same subspace; in float32, directions whose singular value
    lies within rounding of the threshold are only determined to rounding, so the two P differ by up
    to about 1e-4 where the spectrum is dense there."""
    if by_svd:
        u, s, _ = torch.linalg.svd(c, full_matrices=False)
    else:
        s, u = torch.linalg.eigh(c)
    return u[:, s.abs() < threshold].contiguous()


def alphaedit_solve(p: torch.Tensor, k: torch.Tensor, prev: torch.Tensor | None, l2: float) -> torch.Tensor:
    """X (d_ff, n) with ΔW = X Rᵀ: the reference's dense solve

        (P (K_pK_pᵀ + KKᵀ) + L2·I) X = P K,

    P (d_ff, d_ff) the null-space projection, K (d_ff, n) this batch's keys, ``prev`` = K_pK_pᵀ
    (d_ff, d_ff) of the earlier edits or None, all in K's dtype and device."""
    s = k @ k.T if prev is None else prev + k @ k.T
    a = p @ s
    a.diagonal().add_(l2)
    return torch.linalg.solve(a, p @ k)


def alphaedit_solve_reduced(u: torch.Tensor, k: torch.Tensor, core: GrowingCholesky) -> torch.Tensor:
    """The same X through the r × r system it lies in (L2 > 0 keeps X in span(U_r)):

        X = U_r (U_rᵀ(K_pK_pᵀ + KKᵀ)U_r + L2·I_r)⁻¹ U_rᵀ K,

    with ``core`` the factor of A_r = U_rᵀK_pK_pᵀU_r + L2·I_r and this batch's KKᵀ added through
    Woodbury: A_r⁻¹V (I + VᵀA_r⁻¹V)⁻¹ with V = U_rᵀK (r, n). O(r² n) per call."""
    v = u.T @ k
    y = core.solve(v)  # A_r⁻¹V (r, n)
    small = torch.eye(k.shape[1], dtype=k.dtype, device=k.device) + v.T @ y  # (n, n), SPD
    return u @ ops.spd_solve(small, y.T).T


@register
class AlphaEdit(MemitFamily):
    """AlphaEdit (Fang et al., ICLR 2025), jianghoucheng/AlphaEdit: adj = X of :func:`alphaedit_solve`;
    each batch's keys, read again at every layer once the batch is written, join the edit history.

    Exact mode solves the d_ff × d_ff system in float32 (``solve_dtype`` changes it) as the reference
    does, P cached per layer; fast mode solves the r × r system of :func:`alphaedit_solve_reduced`
    through a Cholesky factor kept per layer and grown by each edit's keys."""

    name = "alphaedit"
    hparams_class = AlphaEditHyperParams
    easyedit_name = "AlphaEdit"
    reference_dtype = torch.float32  # the reference solves in float32

    def __init__(self, session) -> None:
        super().__init__(session)
        self._basis: dict[int, torch.Tensor] = {}  # layer → U_r (d_ff, r), on the layer's device
        self._projection: dict[int, torch.Tensor] = {}  # layer → P (d_ff, d_ff), exact mode
        self._core: dict[int, GrowingCholesky] = {}  # layer → factor of U_rᵀK_pK_pᵀU_r + L2·I_r, fast mode
        self._prev: dict[int, tuple[int, torch.Tensor | None]] = {}  # layer → (history version, K_pK_pᵀ), exact

    @property
    def reduced(self) -> bool:
        """Whether to solve the r × r system (fast mode) instead of the reference's d_ff × d_ff one."""
        return self.session.mode == "fast"

    def basis(self, layer: int, device) -> torch.Tensor:
        """U_r of ``layer`` (one SVD per layer and session, on the unedited model's statistics)."""
        if layer not in self._basis:
            c = self.session.stats.second_moment(layer)
            # exact mode: the reference's SVD where the statistics are (the reference: on the CPU)
            u = null_space_basis(c.to(self.dtype), self.session.hp.nullspace_threshold, by_svd=not self.reduced)
            u = u.to(device)
            if u.shape[1] == 0:
                raise NumericalError(
                    f"layer {layer}: no singular value of the second moment is below nullspace_threshold "
                    f"{self.session.hp.nullspace_threshold:g}: the null space is empty and AlphaEdit cannot edit"
                )
            log.info("layer %d: null space of rank %d of %d", layer, u.shape[1], u.shape[0])
            self._basis[layer] = u
        return self._basis[layer]

    def solve(self, layer: int, k: torch.Tensor) -> torch.Tensor:
        if self.reduced:
            u = self.basis(layer, k.device)
            return alphaedit_solve_reduced(u, k, self.core(layer, u))
        if layer not in self._projection:
            u = self.basis(layer, k.device)
            self._projection[layer] = u @ u.T
        p = self._projection[layer].to(k.device, k.dtype)
        return alphaedit_solve(p, k, self.previous_gram(layer, p), self.session.hp.L2)

    def use_reference_state(self, projections: torch.Tensor | None, cache_c: torch.Tensor | None) -> None:
        """Solve the next edits with the reference's own state (its entry point passes both each call):
        ``projections`` P (n_layers, d_ff, d_ff) and ``cache_c`` = K_pK_pᵀ (n_layers, d_ff, d_ff), in the
        order of ``hp.layers``; None keeps fastedit's. Exact mode only: fast mode's r × r factor is
        built from the session's own history."""
        for i, layer in enumerate(self.session.hp.layers):
            if projections is not None:
                self._projection[layer] = projections[i]
            if cache_c is not None:
                self._prev[layer] = (self.session.edit_history.version(layer), cache_c[i].to(self.dtype).clone())

    def previous_gram(self, layer: int, like: torch.Tensor) -> torch.Tensor | None:
        """K_pK_pᵀ (d_ff, d_ff) of the active earlier edits in ``like``'s dtype and device (None before
        the first), kept across edits and grown by each edit's keys."""
        version = self.session.edit_history.version(layer)
        if layer not in self._prev or self._prev[layer][0] != version:
            gram = self.session.edit_history.gram(layer, keep=False)  # kept here, grown by history_added
            self._prev[layer] = (version, None if gram is None else gram.to(like.device, like.dtype))
        gram = self._prev[layer][1]
        return None if gram is None else gram.to(like.device, like.dtype)

    def core(self, layer: int, u: torch.Tensor) -> GrowingCholesky:
        """The factor of U_rᵀK_pK_pᵀU_r + L2·I_r, built from the history's Gram sum when missing."""
        if layer not in self._core:
            a = torch.eye(u.shape[1], dtype=u.dtype, device=u.device) * self.session.hp.L2
            prev = self.session.edit_history.gram(layer, keep=False)  # the factor is grown by history_added
            if prev is not None:
                a += u.T @ prev.to(u.device, u.dtype) @ u
            self._core[layer] = GrowingCholesky(a, copy=False)
        return self._core[layer]

    def compute(self, requests, precomputed_z=None) -> MethodOutput:
        out = super().compute(requests, precomputed_z)
        s = self.session
        with region("keys"):
            out.history = MemitKeyReader(s.model, s.tok, s.adapter, requests, s.hp, s.templates).read_all()
        return out

    def history_added(self, layer: int, keys: torch.Tensor) -> None:
        u = self._basis.get(layer)
        if u is None:
            return
        k = keys.to(u.device, u.dtype)
        if layer in self._core:
            self._core[layer].update(u.T @ k)
        if layer in self._prev:
            gram = self._prev[layer][1]
            gram = k @ k.T if gram is None else gram.addmm_(k, k.T)
            self._prev[layer] = (self.session.edit_history.version(layer), gram)

    def history_changed(self, layer: int) -> None:
        self._core.pop(layer, None)
        self._prev.pop(layer, None)
