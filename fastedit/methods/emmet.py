"""EMMET: equality-constrained mass model editing (Gupta, Sajnani, Anumanchipalli 2024, "A Unified
Framework for Model Editing"; scalable-model-editing/unified-model-editing).

MEMIT's target values and keys, with a different update per layer: the edited keys are *equal*
constraints (W K = V exactly) instead of a least-squares term, the preserved keys a least-squares term,

    C = mom2_update_weight · E[kkᵀ] + update_norm_lambda · I
    D = Kᵀ C⁻¹ K  (+ emmet_lambda · I when the batch holds more than one edit)
    ΔW_l = R D⁻¹ Kᵀ C⁻¹,  R = (Z − z_current) / (layers left)

in float64. With one edit D is a scalar and the weight of C cancels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from .. import ops
from ..errors import NumericalError
from ..hparams import MEMITHyperParams, _bool, _real
from .base import MethodOutput
from .memit import RESIDUAL_TOL, MemitFamily, _check_conditioning
from .registry import register

log = logging.getLogger(__name__)

__all__ = ["EMMETHyperParams", "EMMET", "emmet_keys_side", "EmmetSolver", "invert_d"]


@dataclass(frozen=True)
class EMMETHyperParams(MEMITHyperParams):
    """EMMET's hparams files (``hparams/EMMET/*.json``) read unchanged.

    ``emmet_lambda``: added to D's diagonal for batches of more than one edit (EMMET's guard against
    an ill-conditioned D). ``update_norm_lambda``: added to C's diagonal (a penalty on ‖ΔW‖).
    ``calculate_objective_value``: the reference then recomputes the statistics and reports distances
    of preserved and edited keys; fastedit reads it and computes neither.
    The subject index and target tokenisation default to EMMET's (``concat``, BOS stripped; on a model
    whose name contains ``llama-2``, the first two target tokens dropped: see :class:`EMMET`).
    """

    METHOD: ClassVar[str] = "emmet"
    PRESET_FOLDER: ClassVar[str] = "EMMET"
    MODEL_TARGET_SKIP: ClassVar[tuple[tuple[str, int], ...]] = (("llama-2", 2),)

    mom2_update_weight: float = 1.0
    emmet_lambda: float = 0.1
    update_norm_lambda: float = 0.0
    calculate_objective_value: bool = False
    subject_index_rule: str = "concat"
    strip_target_bos: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_rules({
            "emmet_lambda": _real(0, False),
            "update_norm_lambda": _real(0, False),
            "calculate_objective_value": _bool,
        })
        if self.mom2_update_weight == 0 and self.update_norm_lambda == 0:
            self._fail("update_norm_lambda", self.update_norm_lambda,
                       "> 0 when mom2_update_weight is 0 (C would be zero and have no inverse)")


def emmet_keys_side(solve_c: Callable[[torch.Tensor], torch.Tensor], invert: Callable[[torch.Tensor], torch.Tensor],
                    k: torch.Tensor, emmet_lambda: float) -> torch.Tensor:
    """EMMET's update ΔW = R D⁻¹ KᵀC⁻¹ in MEMIT's form ΔW = R adjᵀ: returns adj = C⁻¹K D⁻ᵀ (d_ff, n).

    K (d_ff, n): the edited keys; ``solve_c(K)`` → C⁻¹K; ``invert(D)`` → D⁻¹ (n, n).
    """
    c_inv_k = solve_c(k)  # C⁻¹K (d_ff, n)
    d = k.T @ c_inv_k  # D = KᵀC⁻¹K (n, n)
    if k.shape[1] > 1:  # EMMET regularises D for batches only
        d = d + emmet_lambda * torch.eye(d.shape[0], dtype=d.dtype, device=d.device)
    return c_inv_k @ invert(d).T  # (D⁻¹ KᵀC⁻¹)ᵀ


def invert_d(d: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(D⁻¹, False) as the reference's ``torch.inverse(D)``, or (pinv(D), True) where that fails (an
    exactly zero pivot, which the reference catches) or gives an inverse that does not invert D
    (non-finite, or ‖D D⁻¹ − I‖_F / (‖D‖_F ‖D⁻¹‖_F) above RESIDUAL_TOL)."""
    inv, info = torch.linalg.inv_ex(d)
    if int(info) == 0 and bool(torch.isfinite(inv).all()):
        eye = torch.eye(d.shape[0], dtype=d.dtype, device=d.device)
        err = float((d @ inv - eye).norm()) / (float(d.norm()) * float(inv.norm()))
        if err <= RESIDUAL_TOL:
            return inv, False
    return torch.linalg.pinv(d), True


class EmmetSolver:
    """C⁻¹K for C = ``weight`` · E[kkᵀ] + ``norm_lambda`` · I, through a factor of C computed once per
    layer and kept (C does not change between edits): ``kind`` ``"cholesky"`` keeps its Cholesky factor
    (O(d_ff² n) per edit), ``"lu"`` its dense inverse as the reference computes it (``torch.inverse``,
    i.e. an LU solve against I). C singular to the precision of its statistics, or not positive
    definite (Cholesky), fails the edit with :class:`NumericalError`: the reference has no fallback
    there.

    ``second_moment(layer)`` → E[kkᵀ] (d_ff, d_ff) as stored (float32); ``dtype``: the solve's.
    """

    def __init__(self, second_moment, weight: float, norm_lambda: float, dtype: torch.dtype, kind: str) -> None:
        if kind not in ("cholesky", "lu"):
            raise ValueError(f"solver kind must be 'cholesky' or 'lu', got {kind!r}")
        self.second_moment, self.weight, self.norm_lambda = second_moment, weight, norm_lambda
        self.dtype, self.kind = dtype, kind
        self.factors: dict[int, torch.Tensor] = {}

    def covariance(self, layer: int) -> torch.Tensor:
        """C = weight · E[kkᵀ] + norm_lambda · I (d_ff, d_ff) in the solve's dtype."""
        stored = self.second_moment(layer)
        c = self.weight * stored.to(self.dtype)
        return c + self.norm_lambda * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)

    def factor(self, layer: int) -> torch.Tensor:
        """The kept factor of ``layer``'s C: lower Cholesky factor, or C⁻¹ (d_ff, d_ff)."""
        if layer not in self.factors:
            c, data_dtype = self.covariance(layer), self.second_moment(layer).dtype
            if self.kind == "cholesky":
                try:
                    f = ops.cholesky(c)
                except ops.NotPositiveDefiniteError as e:
                    raise NumericalError(f"layer {layer}: C is not positive definite ({e}); the statistics are "
                                         "degenerate: recompute them from more text") from None
                _check_conditioning(f.diagonal(), 2, layer, "C", data_dtype)
            else:
                lu, piv, info = torch.linalg.lu_factor_ex(c)
                if int(info) != 0:
                    raise NumericalError(f"layer {layer}: C is singular (zero pivot {int(info)}); the statistics "
                                         "are degenerate: recompute them from more text")
                _check_conditioning(lu.diagonal(), 1, layer, "C", data_dtype)
                eye = torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
                f = torch.linalg.lu_solve(lu, piv, eye).contiguous()  # column-major out; rows read faster
            self.factors[layer] = f
        return self.factors[layer]

    def __call__(self, layer: int, k: torch.Tensor) -> torch.Tensor:
        """C⁻¹K (d_ff, n) for K (d_ff, n), checked (:meth:`check`)."""
        f = self.factor(layer)
        x = ops.cholesky_solve(f, k) if self.kind == "cholesky" else f @ k
        self.check(layer, k, x)
        return x

    def check(self, layer: int, k: torch.Tensor, x: torch.Tensor) -> None:
        """Raise :class:`NumericalError` unless X (d_ff, n) solves C X = K to a normwise backward error of
        at most RESIDUAL_TOL (in E[kkᵀ]'s stored dtype: the check needs no second float64 copy of C)."""
        if not bool(torch.isfinite(x).all()):
            raise NumericalError(f"layer {layer}: the solve with C gave non-finite values")
        stored = self.second_moment(layer)
        xc, kc = x.to(stored), k.to(stored)
        resid = self.weight * (stored @ xc) + self.norm_lambda * xc - kc
        c_norm = self.weight * float(stored.norm()) + self.norm_lambda * stored.shape[0] ** 0.5
        err = float(resid.norm()) / (c_norm * float(xc.norm()) + float(kc.norm()))
        if not err <= RESIDUAL_TOL:
            raise NumericalError(f"layer {layer}: the solve of C X = K is inaccurate (backward error {err:.2e} "
                                 f"> {RESIDUAL_TOL:g})")


@register
class EMMET(MemitFamily):
    """EMMET (scalable-model-editing/unified-model-editing): MEMIT's keys, target values and spread of
    R over the layers, with adj = C⁻¹K D⁻ᵀ (:func:`emmet_keys_side`) solved in float64.

    The session's ``solver="cholesky"`` (default) keeps a Cholesky factor of C per layer;
    ``solver="lu"`` keeps C⁻¹ as the reference computes it. D (n × n) is inverted as the reference does,
    with the pseudo-inverse where that fails; ``info["pseudo_inverse"]`` says, per layer, whether it
    did. EMMET keeps no edit history: each batch is solved on the model the earlier ones left.

    Target tokens, as EMMET's compute_z: ``" " + target_new`` tokenised, then on a model whose
    ``name_or_path`` contains ``llama-2`` (any case) its first two ids dropped (BOS and SentencePiece's
    lone "▁" that the leading space becomes), elsewhere a leading BOS/UNK. The hyperparameters carry it
    as ``target_skip_tokens`` (2 there, resolved once from the model's name; set it to override).
    """

    name = "emmet"
    hparams_class = EMMETHyperParams
    easyedit_name = "EMMET"

    def __init__(self, session) -> None:
        super().__init__(session)
        hp = session.hp
        self._solver = EmmetSolver(session.stats.second_moment, hp.mom2_update_weight, hp.update_norm_lambda,
                                   self.dtype, session.solver_kind)
        self._pseudo_inverse: dict[int, bool] = {}
        if hp.calculate_objective_value:
            log.info("EMMET: calculate_objective_value is read but fastedit computes no objective distances")

    def solve(self, layer: int, k: torch.Tensor) -> torch.Tensor:
        def invert(d: torch.Tensor) -> torch.Tensor:
            inv, pseudo = invert_d(d)
            if pseudo:
                log.warning("layer %d: D = KᵀC⁻¹K (%d × %d) has no inverse; using its pseudo-inverse", layer, *d.shape)
            self._pseudo_inverse[layer] = pseudo
            return inv

        return emmet_keys_side(lambda keys: self._solver(layer, keys), invert, k, self.session.hp.emmet_lambda)

    def compute(self, requests, precomputed_z=None) -> MethodOutput:
        self._pseudo_inverse = {}
        out = super().compute(requests, precomputed_z)
        out.info["pseudo_inverse"] = dict(self._pseudo_inverse)
        return out
