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

from dataclasses import dataclass
from typing import ClassVar

from ..hparams import MEMITHyperParams, _name, _real

__all__ = ["AlphaEditHyperParams"]


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
