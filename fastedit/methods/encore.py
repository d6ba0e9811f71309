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

from ..hparams import HyperParamsError, MEMITHyperParams, _bool, _int, _is_int, _is_real, _real

__all__ = ["ENCOREHyperParams"]


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
        if _is_int(self.prob_cutoff) is False and self.prob_cutoff < 0:
            object.__setattr__(self, "prob_cutoff", int(self.prob_cutoff))  # -4.0 counts as -4

    @property
    def uses_history(self) -> bool:
        """Whether the earlier edits' keys enter the solve (the reference's ``sequential and add_prev_edits``)."""
        return self.sequential and self.add_prev_edits
