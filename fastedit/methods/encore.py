"""ENCORE (Gupta et al. 2025, scalable-model-editing/knowledge-editing-regularization): MEMIT with
a norm penalty, the earlier edits' keys in the preserved set, and an early stop of the z optimisation.

Per layer, with K_E the batch's keys and R its residuals as in MEMIT:

    Δ = R K_Eᵀ (λ_p C₀ + λ_n I + Σ_prev K Kᵀ + K_E K_Eᵀ)⁻¹

λ_p = ``mom2_update_weight``, λ_n = ``update_norm_lambda``, C₀ the unscaled second moment and
Σ_prev the sum of K Kᵀ over the earlier edits' keys as they were computed at those edits (unscaled;
used when ``sequential`` and ``add_prev_edits``). The reference solves in float64 with LU. z stops
early by ``prob_cutoff`` (:class:`fastedit.methods.target.StopRule`, ENCORE's rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import ops
from ..errors import NumericalError
from ..hparams import HyperParamsError, MEMITHyperParams, _bool, _int, _is_int, _is_real, _real
from ..linalg import GrowingCholesky
from .base import MethodOutput
from .memit import RESIDUAL_TOL, MemitFamily
from .registry import register
from .target import StopRule

__all__ = ["ENCOREHyperParams", "ENCORE", "encore_adj"]


def _cutoff(x) -> str | None:
    """prob_cutoff: 0 (off), a negative whole number (−n: n passes with every target the argmax) or a
    probability strictly between 0 and 1 (the mean target probability to exceed)."""
    if not _is_real(x):
        return "a finite number"
    if x < 0 and float(x) != int(x):
        return "a negative whole number (−n stops after n passes with every target token the argmax), 0 or a probability"
    if x > 0 and not x < 1:
        return "below 1 when positive (a mean target probability to exceed)"
    return None


@dataclass(frozen=True)
class ENCOREHyperParams(MEMITHyperParams):
    """ENCORE's hparams files (``hparams/ENCORE/*.json``) read unchanged.

    Used: MEMIT's fields, ``update_norm_lambda`` (λ_n), ``prob_cutoff``, ``add_prev_edits`` and
    ``sequential`` (not in the files: the reference's experiment script sets it, True by default).
    Read, checked and unused (diagnostics, or the gradient-descent variant, which fastedit does not
    implement): ``calculate_objective_value``, ``emmet_lambda``, ``norm_control``,
    ``dynamic_multiplier``, ``random_vector_preservation``, ``grad_desc_lr``, ``grad_desc_steps``,
    ``gd_lambda``, ``spectral_norm``, ``condition_num``, ``calculate_norms``; ``use_gd`` must be false.
    Defaults are those of ENCORE's GPT-2 XL file; the subject index uses the concat rule and a BOS
    the tokenizer puts before the target is dropped, as ENCORE's code does.
    """

    METHOD: ClassVar[str] = "encore"
    PRESET_FOLDER: ClassVar[str] = "ENCORE"

    subject_index_rule: str = "concat"
    strip_target_bos: bool = True

    update_norm_lambda: float = 10.0
    prob_cutoff: float = -4
    add_prev_edits: bool = True
    sequential: bool = True

    calculate_objective_value: bool = False
    emmet_lambda: float = 0.1
    norm_control: float = 0.0
    use_gd: bool = False
    dynamic_multiplier: int = 5
    random_vector_preservation: bool = False
    grad_desc_lr: float = 0.005
    grad_desc_steps: int = 100
    gd_lambda: float = 50.0
    spectral_norm: float = 2.0
    condition_num: float = 50.0
    calculate_norms: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        flags = ("add_prev_edits", "sequential", "calculate_objective_value", "use_gd",
                 "random_vector_preservation", "calculate_norms")
        rules = {name: _bool for name in flags}
        rules.update({name: _real(0, False) for name in ("update_norm_lambda", "emmet_lambda", "gd_lambda",
                                                         "spectral_norm", "condition_num")})
        rules.update(prob_cutoff=_cutoff, norm_control=lambda x: None if _is_real(x) else "a finite number",
                     dynamic_multiplier=_int(0), grad_desc_lr=_real(0, True), grad_desc_steps=_int(1))
        self._check_rules(rules)
        if self.use_gd:
            raise HyperParamsError("ENCOREHyperParams: use_gd=true (ENCORE's gradient-descent variant) is not "
                                   "supported; fastedit computes ENCORE's closed-form update")
        if self.prob_cutoff < 0 and not _is_int(self.prob_cutoff):
            object.__setattr__(self, "prob_cutoff", int(self.prob_cutoff))  # -4.0 counts as -4

    @property
    def uses_history(self) -> bool:
        """Whether the earlier edits' keys enter the solve (the reference's ``sequential and add_prev_edits``)."""
        return self.sequential and self.add_prev_edits


def encore_adj(preserved: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """ENCORE's update ΔW = R K_Eᵀ (A + K_E K_Eᵀ)⁻¹ = R adjᵀ, with adj = (A + K_E K_Eᵀ)⁻¹ K_E (d_ff, n)
    and A = λ_p C₀ + λ_n I + Σ_prev K Kᵀ (:meth:`ENCORE.preserved`): the reference's dense solve."""
    return torch.linalg.solve(preserved + k @ k.T, k)


@register
class ENCORE(MemitFamily):
    """ENCORE: MEMIT's keys and residuals, adj = (λ_p C₀ + λ_n I + Σ_prev KKᵀ + K_E K_Eᵀ)⁻¹ K_E.

    The session's ``solver="cholesky"`` (default) keeps per layer a :class:`~fastedit.linalg.GrowingCholesky`
    factor of A = λ_p C₀ + λ_n I + Σ_prev KKᵀ, updated by each recorded edit's keys
    (:meth:`history_added`) and rebuilt after an undo or a load (:meth:`history_changed`); the batch's
    own K_E enters through Woodbury, A⁻¹K_E (I + K_EᵀA⁻¹K_E)⁻¹. ``solver="lu"`` builds A + K_E K_Eᵀ and
    solves it densely every edit, as the reference does. Each edit's keys are its history
    (``MethodOutput.history``) when ``hp.sequential`` and ``hp.add_prev_edits``.
    """

    name = "encore"
    hparams_class = ENCOREHyperParams
    easyedit_name = None  # EasyEdit has no ENCORE

    def __init__(self, session) -> None:
        super().__init__(session)
        self._factors: dict[int, GrowingCholesky] = {}
        self._norms: dict[int, float] = {}  # ‖A‖_F bound per layer, for the residual check
        self._keys: dict[int, torch.Tensor] = {}  # this call's keys per layer

    def target_options(self) -> dict:
        """The session's options, with ENCORE's own early stop (its ``prob_cutoff``; 0: none) in every mode."""
        opts = {k: v for k, v in super().target_options().items() if not k.startswith("early_stop")}
        return {**opts, "early_stop": StopRule.of(self.session.hp.prob_cutoff)}

    def compute(self, requests, precomputed_z=None) -> MethodOutput:
        self._keys = {}
        out = super().compute(requests, precomputed_z)
        if self.session.hp.uses_history:
            out.history = dict(self._keys)
        return out

    def preserved(self, layer: int, keep: bool = True) -> torch.Tensor:
        """A = λ_p C₀ + λ_n I + Σ_prev K Kᵀ (d_ff, d_ff) in the solve dtype, on C₀'s device, summed in
        the reference's order. ``keep``: the history holds its Gram sum for the next call (see
        :meth:`~fastedit.engine.history.EditHistory.gram`)."""
        hp = self.session.hp
        c = self.session.stats.second_moment(layer)
        a = c.to(self.dtype) * hp.mom2_update_weight
        a = a + hp.update_norm_lambda * torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        gram = self.session.edit_history.gram(layer, keep=keep) if hp.uses_history else None
        if gram is not None:
            a = a + gram.to(a)
        return a

    def solve(self, layer: int, k: torch.Tensor) -> torch.Tensor:
        self._keys[layer] = k
        if self.session.solver_kind == "lu":
            a = self.preserved(layer)
            adj = encore_adj(a, k.to(a))
            self._check(layer, lambda x: a @ x, float(a.norm()), k.to(a), adj)
            return adj
        factor = self._factor(layer)
        k = k.to(factor.dtype).to(factor.device)
        x = factor.solve(k)  # A⁻¹K_E (d_ff, n)
        core = torch.eye(k.shape[1], dtype=k.dtype, device=k.device) + k.T @ x  # (n, n), SPD
        adj = ops.spd_solve(core, x.T).T
        self._check(layer, factor.matvec, self._norms[layer], k, adj)
        return adj

    def _factor(self, layer: int) -> GrowingCholesky:
        if layer not in self._factors:
            a = self.preserved(layer, keep=False)  # the factor is grown by history_added
            self._norms[layer] = float(a.norm())
            try:
                self._factors[layer] = GrowingCholesky(a, copy=False)
            except ops.NotPositiveDefiniteError as e:
                raise NumericalError(f"layer {layer}: λ_p C + λ_n I + Σ_prev KKᵀ is not positive definite ({e}); "
                                     "the statistics are degenerate: recompute them from more text") from None
        return self._factors[layer]

    def history_added(self, layer: int, keys: torch.Tensor) -> None:
        if layer in self._factors:
            f = self._factors[layer]
            f.update(keys.to(f.device))
            self._norms[layer] += float(keys.double().norm()) ** 2

    def history_changed(self, layer: int) -> None:
        self._factors.pop(layer, None)
        self._norms.pop(layer, None)

    @staticmethod
    def _check(layer: int, matvec, a_norm: float, k: torch.Tensor, x: torch.Tensor) -> None:
        """:class:`NumericalError` unless X solves (A + KKᵀ) X = K to a normwise backward error of at
        most ``RESIDUAL_TOL`` (``a_norm`` bounds ‖A‖)."""
        if not bool(torch.isfinite(x).all()):
            raise NumericalError(f"layer {layer}: the solve gave non-finite values")
        resid = matvec(x) + k @ (k.T @ x) - k
        err = float(resid.norm()) / ((a_norm + float(k.norm()) ** 2) * float(x.norm()) + float(k.norm()))
        if not err <= RESIDUAL_TOL:
            raise NumericalError(f"layer {layer}: the solve of (λ_p C + λ_n I + Σ_prev KKᵀ + KKᵀ) X = K is "
                                 f"inaccurate (backward error {err:.2e} > {RESIDUAL_TOL:g})")
