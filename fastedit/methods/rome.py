"""ROME and r-ROME: one rank-one update per request and layer.

For each layer (in increasing order; the presets edit one):

1. keys: the input k of the edited projection at the lookup token of every context template filled
   with the request prompt; k̄ = their mean (``"{}"`` is template 0, the bare prompt);
2. u = C⁻¹k̄ / ‖C⁻¹k̄‖ (float32 inverse of the float32 C, as the reference; ``mom2_adjustment:
   false`` uses k̄ / ‖k̄‖);
3. v* = v_init + δ from the target-value optimisation with δ on the MLP output of the layer;
4. right vector (``key_variant``):

   * ``rome`` (original): (v* − (W k + b)) / (kᵀu) with k and W k + b from the bare prompt;
   * ``random_prefix`` (r-ROME): (v* − meanᵢ(W kᵢ + b)) / (k̄ᵀu), the template-averaged key and
     output in both places;
   * ``prompt``: the bare-prompt key in both places, target = current output + δ;

5. ΔW = u ⊗ right, in the weight's orientation.

The reference applies each layer's update before computing the next layer's and restores the model
at the end of a request; :func:`rome_updates` leaves the updates applied (the caller owns that).
"""

from __future__ import annotations

import torch

from ..errors import InputError, NumericalError
from ..hparams import ROMEHyperParams, RROMEHyperParams
from ..models.adapters import ModelAdapter
from ..profiling import region
from ..requests import EditRequest, check_requests_fit
from .base import LowRankUpdate, MethodOutput, apply_update, resolve_dtype
from .keys import lookup_index, read_at_positions
from .registry import EditMethod, register
from .target import compute_target_values

__all__ = ["rome_updates", "checked_inverse", "ROME", "RROME"]


def rome_updates(
    model,
    tok,
    adapter: ModelAdapter,
    request: EditRequest,
    hp,
    templates: list[str],
    inverse_second_moment,
    target_options: dict | None = None,
    apply=apply_update,
) -> MethodOutput:
    """Updates of one request at every layer of ``hp.layers``, each applied to ``model`` before the
    next layer is computed. ``inverse_second_moment(layer)`` returns C⁻¹ (d_ff, d_ff).
    ``target_options`` go to :func:`compute_target_values`; ``apply(model, adapter, update)`` writes
    an update into the weights. ``hp`` is resolved (:meth:`~fastedit.hparams.HyperParams.resolve`)."""
    hp = hp.resolve(adapter, model)  # a no-op for a session's hyperparameters
    check_requests_fit([request], tok, adapter.max_positions(model), templates)
    updates, info = [], {"target": [], "denominator": []}
    for layer in sorted(hp.layers):
        rewrite = hp.rewrite_module_tmp.format(layer)
        with region("keys"):
            texts = [t.format(request.prompt) for t in templates]
            pos = [lookup_index(tok, t, request.subject, hp.fact_token, hp.subject_index_rule) for t in texts]
            ins, outs = read_at_positions(
                model, tok, [t.format(request.subject) for t in texts], pos,
                inputs=[rewrite], outputs=[rewrite], stop_after=rewrite,
            )
            keys, values = ins[rewrite], outs[rewrite]  # (n_templates, d_ff), (n_templates, d_model)
            k_mean, k_bare, out_bare = keys.mean(0), keys[0], values[0]

        with region("solve"):
            dtype = resolve_dtype(hp, torch.float32)
            k_u = k_mean if (hp.original_implementation or hp.enable_random_prefix_keys) else k_bare
            if hp.mom2_adjustment:
                u = inverse_second_moment(layer).to(dtype) @ k_u.to(dtype)
            else:
                u = k_u.to(dtype)
            u = u / u.norm()

        target = compute_target_values(
            model, tok, adapter, [request], templates, hp, layer, delta_site="mlp", nll_from="logits",
            delta_dtype=torch.float64 if dtype == torch.float64 else None, **(target_options or {}),
        )

        with region("solve"):
            work = torch.promote_types(dtype, keys.dtype)
            delta = target.delta[0].to(work)
            if hp.key_variant == "random_prefix":
                key, current = k_mean.to(work), values.mean(0).to(work)
                goal = target.v_init[0].to(work) + delta
            elif hp.key_variant == "prompt":
                key, current = k_bare.to(work), out_bare.to(work)
                goal = current + delta
            else:
                key, current = k_bare.to(work), out_bare.to(work)
                goal = target.v_init[0].to(work) + delta
            denom = torch.dot(key, u.to(work))
            _check_denominator(denom, key, u, layer)
            right = (goal - current) / denom

        upd = LowRankUpdate(f"{rewrite}.weight", layer, u.to(work)[:, None], right[:, None])
        with region("apply"):
            apply(model, adapter, upd)
        updates.append(upd)
        info["target"].append(target)
        info["denominator"].append(float(denom))
    return MethodOutput(updates, info)


def _check_denominator(denom: torch.Tensor, key: torch.Tensor, u: torch.Tensor, layer: int) -> None:
    """kᵀu must be finite and not lost to rounding against ‖k‖ (u is a unit vector): otherwise the
    right vector is noise divided by noise, from a C⁻¹ that is singular in practice."""
    eps = torch.finfo(denom.dtype).eps
    if not (bool(torch.isfinite(u).all()) and abs(float(denom)) > eps * float(key.norm()) * key.numel() ** 0.5):
        raise NumericalError(
            f"layer {layer}: the ROME solve is degenerate (kᵀC⁻¹k ≈ {float(denom):.3g}); the statistics are "
            "singular in practice: recompute them from more text"
        )


def checked_inverse(c: torch.Tensor, dtype: torch.dtype, layer: int) -> torch.Tensor:
    """C⁻¹ (d_ff, d_ff) as the reference computes it (``torch.inverse`` in ``dtype``), refused with
    :class:`NumericalError` when it is not finite, when C is singular to the precision of its
    statistics (‖C‖_F‖C⁻¹‖_F / d, a lower bound of the condition number, × C's epsilon above 1), or
    when ‖C C⁻¹ − I‖_F / √d is above 1e-2."""
    inv = torch.inverse(c.to(dtype))
    if not bool(torch.isfinite(inv).all()):
        raise NumericalError(f"layer {layer}: the second moment is singular; cannot invert it")
    d = c.shape[0]
    cond = float(c.double().norm()) * float(inv.double().norm()) / d
    eps = max(torch.finfo(c.dtype).eps, torch.finfo(dtype).eps)
    err = float((c.to(dtype) @ inv - torch.eye(d, dtype=dtype, device=inv.device)).norm()) / d**0.5
    if cond * eps > 1.0 or not err <= 1e-2:
        raise NumericalError(
            f"layer {layer}: the second moment is singular to the precision of its statistics (condition number at "
            f"least {cond:.3g}, inverse residual {err:.2e}): recompute them from more text"
        )
    return inv


class _RomeFamily(EditMethod):
    """ROME's rank-one edit, one request after another, with C⁻¹ per layer computed once."""

    templates = "flat"
    batched = False

    def __init__(self, session) -> None:
        super().__init__(session)
        self._inverse: dict[int, torch.Tensor] = {}

    def inverse_second_moment(self, layer: int) -> torch.Tensor:
        """C⁻¹ (d_ff, d_ff): float32 ``torch.inverse`` as the reference, or float64 when ``solve_dtype``
        asks; refused when C is singular to its precision (:func:`checked_inverse`)."""
        if layer not in self._inverse:
            hp = self.session.hp
            dtype = getattr(torch, hp.solve_dtype) if hp.solve_dtype else torch.float32
            self._inverse[layer] = checked_inverse(self.session.stats.second_moment(layer), dtype, layer)
        return self._inverse[layer]

    def compute(self, requests, precomputed_z=None) -> MethodOutput:
        if precomputed_z:
            raise InputError(f"{self.name} takes no precomputed target values")
        s = self.session
        if s.hp.mom2_adjustment:
            s.stats.ensure(s.hp.layers)
        outs = [
            rome_updates(s.model, s.tok, s.adapter, r, s.hp, s.templates, self.inverse_second_moment,
                         target_options=s.target_options(), apply=s.apply_update)
            for r in requests
        ]
        return MethodOutput([u for o in outs for u in o.updates], {"target": [t for o in outs for t in o.info["target"]]})


@register
class ROME(_RomeFamily):
    """ROME (Meng et al. 2022), kmeng01/rome."""

    name = "rome"
    hparams_class = ROMEHyperParams
    easyedit_name = "ROME"


@register
class RROME(_RomeFamily):
    """r-ROME (Gupta et al. 2024): ROME with the template-averaged keys in both places."""

    name = "r-rome"
    hparams_class = RROMEHyperParams
    easyedit_name = "R-ROME"
