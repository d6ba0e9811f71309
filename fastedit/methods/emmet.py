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

from dataclasses import dataclass
from typing import ClassVar

from ..hparams import MEMITHyperParams, _bool, _real

__all__ = ["EMMETHyperParams"]


@dataclass(frozen=True)
class EMMETHyperParams(MEMITHyperParams):
    """EMMET's hparams files (``hparams/EMMET/*.json``) read unchanged.

    ``emmet_lambda``: added to D's diagonal for batches of more than one edit (EMMET's guard against
    an ill-conditioned D). ``update_norm_lambda``: added to C's diagonal (a penalty on ‖ΔW‖).
    ``calculate_objective_value``: the reference then recomputes the statistics and reports distances
    of preserved and edited keys; fastedit reads it and computes neither.
    The subject index and target tokenisation default to EMMET's (``concat``, BOS stripped).
    """

    METHOD: ClassVar[str] = "emmet"
    PRESET_FOLDER: ClassVar[str] = "EMMET"

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
