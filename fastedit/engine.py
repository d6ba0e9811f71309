"""EditSession: the state that lives across many edits of one model.

A session owns the model's method state: the hyperparameters, the context templates (sampled once,
at the first edit, from the model as it is then, or supplied), the second-moment statistics and what
is derived from them (ROME's inverse per layer), and the history of applied edits. Each call to
:meth:`EditSession.apply` edits the model in place and returns an :class:`EditResult`.

An edit is a transaction: if anything fails (an exception, a non-finite update, Ctrl-C) the edited
weights are put back exactly as they were before it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch

from .hparams import HyperParams, HyperParamsError, load_hparams
from .methods.base import LowRankUpdate, MethodOutput
from .methods.memit import memit_updates
from .methods.rome import rome_updates
from .methods.templates import memit_templates, rome_templates
from .models.adapters import get_adapter, get_module
from .profiling import PhaseTimer, region
from .requests import EditRequest, as_requests
from .stats.store import SecondMomentStore

log = logging.getLogger(__name__)

__all__ = ["EditSession", "EditResult", "EditFailedError"]


class EditFailedError(RuntimeError):
    """An edit could not be completed; the model is unchanged."""


@dataclass
class EditResult:
    """What one :meth:`EditSession.apply` call did.

    ``update_norms``: Frobenius norm of ΔW per edited weight. ``times``: seconds per phase
    (``target/forward``, ``keys``, ``solve``, ...; ``total`` is the wall time of the call).
    ``loss_curves``: per request, the total loss at each iteration of its target optimisation.
    """

    ids: list[Any]
    method: str
    updates: list[LowRankUpdate]
    update_norms: dict[str, float]
    times: dict[str, float]
    loss_curves: list[list[float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        norms = ", ".join(f"{k}: {v:.3g}" for k, v in self.update_norms.items())
        return f"{self.method} edit of {len(self.ids)} request(s) in {self.times.get('total', 0):.2f} s; ‖ΔW‖ {norms}"


class EditSession:
    """Edits one model again and again.

    ``method``: ``"rome"``, ``"r-rome"`` or ``"memit"``. ``hparams``: a preset name
    (``"smollm2-135m"``), a reference hparams JSON path, a dict or a hyperparameter object.
    ``templates``: context templates to use instead of sampling them (ROME: a flat list starting with
    ``"{}"``; MEMIT: a list of groups, ``[["{}"], [...]]``). ``stats_dir`` / ``stats_source``: where
    statistics caches live and what text to compute missing ones from (``stats_max_len`` truncates its
    documents).
    """

    def __init__(
        self,
        model,
        tok,
        method: str = "memit",
        hparams: str | Mapping | HyperParams | None = None,
        *,
        templates: Sequence | None = None,
        seed: int = 0,
        stats_dir=None,
        stats_source=None,
        stats_max_len: int | None = None,
        model_name: str | None = None,
        progress: bool = True,
    ) -> None:
        self.model, self.tok = model, tok
        self.adapter = get_adapter(model)
        self.method = method.lower()
        if hparams is None:
            hparams = _default_preset(model)
        self.hp = load_hparams(self.method, hparams)
        self._validate_hparams()
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.seed = seed
        self._templates = _check_templates(self.method, templates) if templates is not None else None
        self.stats = SecondMomentStore(
            model, tok, self.adapter, self.hp, stats_dir=stats_dir, source=stats_source,
            model_name=model_name, max_len=stats_max_len, progress=progress,
        )
        self._inverse: dict[int, torch.Tensor] = {}
        self.history: list[EditResult] = []

    # ------------------------------------------------------------------ templates and statistics
    @property
    def templates(self):
        """The context templates, sampled at first use (seeded) unless supplied."""
        if self._templates is None:
            with region("templates"), torch.no_grad():
                if self.method in ("rome", "r-rome"):
                    self._templates = rome_templates(
                        self.model, self.tok, self.hp.context_template_length_params, seed=self.seed
                    )
                else:
                    self._templates = memit_templates(self.model, self.tok, seed=self.seed)
            log.info("context templates: %s", self._templates)
        return self._templates

    def inverse_second_moment(self, layer: int) -> torch.Tensor:
        """C⁻¹ for ROME, computed once per layer (float32 ``torch.inverse`` as the reference, or float64
        when ``solve_dtype`` asks)."""
        if layer not in self._inverse:
            c = self.stats.second_moment(layer)
            dtype = getattr(torch, self.hp.solve_dtype) if self.hp.solve_dtype else torch.float32
            inv = torch.inverse(c.to(dtype))
            if not torch.isfinite(inv).all():
                raise EditFailedError(f"the second moment of layer {layer} is singular; cannot invert it")
            self._inverse[layer] = inv
        return self._inverse[layer]

    # ------------------------------------------------------------------ editing
    def edited_weights(self) -> dict[str, torch.nn.Parameter]:
        tmp = self.hp.rewrite_module_tmp or self.adapter.rewrite_module_tmp
        return {f"{tmp.format(l)}.weight": get_module(self.model, tmp.format(l)).weight for l in self.hp.layers}

    def apply(self, requests: Iterable[EditRequest | Mapping] | EditRequest | Mapping) -> EditResult:
        """Edit the model with ``requests``: ROME-family methods one request after another, MEMIT as
        one batch. Returns an :class:`EditResult`; raises :class:`EditFailedError` (model unchanged)
        when the edit cannot be made."""
        reqs = as_requests(requests)
        for r in reqs:
            r.check_tokens(self.tok)
        weights = self.edited_weights()
        backup = {k: w.detach().clone() for k, w in weights.items()}
        t0 = time.perf_counter()
        try:
            with PhaseTimer() as timer:
                if self.method in ("rome", "r-rome"):
                    outs = [self._rome(r) for r in reqs]
                    out = MethodOutput(
                        [u for o in outs for u in o.updates],
                        {"target": [t for o in outs for t in o.info["target"]]},
                    )
                else:
                    out = self._memit(reqs)
            for name, w in weights.items():
                if not torch.isfinite(w).all():
                    raise EditFailedError(f"the edit made {name} non-finite")
        except BaseException as e:
            with torch.no_grad():
                for k, w in weights.items():
                    w.copy_(backup[k])
            if isinstance(e, (EditFailedError, KeyboardInterrupt)):
                raise
            raise EditFailedError(f"edit of {[r.name for r in reqs]} failed, model restored: {e}") from e
        times = timer.as_dict()
        times["total"] = time.perf_counter() - t0
        norms: dict[str, float] = {}
        for k, w in weights.items():
            d = (w.detach().double() - backup[k].double()).norm().item()
            norms[k] = d
        curves = []
        for t in out.info.get("target", []):
            for j in range(t.losses.shape[1] if t.losses.ndim == 2 else 0):
                col = t.losses[:, j]
                curves.append([float(x) for x in col[~torch.isnan(col)]])
        result = EditResult(
            ids=[r.case_id for r in reqs],
            method=self.method,
            updates=out.updates,
            update_norms=norms,
            times=times,
            loss_curves=curves,
            info={k: v for k, v in out.info.items() if k != "target"},
        )
        self.history.append(result)
        return result

    def compute(self, requests, precomputed_z: dict[int, torch.Tensor] | None = None) -> MethodOutput:
        """The updates ``apply`` would make, leaving the model as it was (the reference's
        ``execute_*`` contract). MEMIT: ``precomputed_z`` maps request index → z computed earlier."""
        reqs = as_requests(requests)
        weights = self.edited_weights()
        backup = {k: w.detach().clone() for k, w in weights.items()}
        try:
            if self.method in ("rome", "r-rome"):
                if len(reqs) != 1:
                    raise ValueError("ROME computes one request at a time")
                return self._rome(reqs[0])
            return self._memit(reqs, precomputed_z)
        finally:
            with torch.no_grad():
                for k, w in weights.items():
                    w.copy_(backup[k])

    # ------------------------------------------------------------------ methods
    def _rome(self, request: EditRequest) -> MethodOutput:
        templates = self.templates
        if self.hp.mom2_adjustment:
            self.stats.ensure(self.hp.layers)
        return rome_updates(self.model, self.tok, self.adapter, request, self.hp, templates, self.inverse_second_moment)

    def _memit(self, requests: list[EditRequest], precomputed_z=None) -> MethodOutput:
        groups = self.templates
        self.stats.ensure(self.hp.layers)
        return memit_updates(
            self.model, self.tok, self.adapter, requests, self.hp, groups, self.stats.second_moment,
            precomputed_z=precomputed_z,
        )

    def _validate_hparams(self) -> None:
        n = self.adapter.num_layers(self.model)
        bad = [l for l in self.hp.layers if not 0 <= l < n]
        if bad:
            raise HyperParamsError(f"layers {bad} out of range: the model has {n} layers (0..{n - 1})")
        for attr in ("rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp"):
            tmp = getattr(self.hp, attr) or getattr(self.adapter, attr)
            try:
                get_module(self.model, tmp.format(self.hp.layers[0]))
            except LookupError as e:
                raise HyperParamsError(f"{attr} {tmp!r} does not name a module of this model: {e}") from None
        for attr in ("ln_f_module", "lm_head_module"):
            name = getattr(self.hp, attr) or (
                self.adapter.lm_head_name(self.model) if attr == "lm_head_module" else self.adapter.ln_f_module
            )
            try:
                get_module(self.model, name)
            except LookupError as e:
                raise HyperParamsError(f"{attr} {name!r} does not name a module of this model: {e}") from None


def _default_preset(model) -> str:
    name = str(getattr(model.config, "_name_or_path", "") or "").lower()
    for preset in ("smollm2-135m", "gpt2-xl", "gpt-j-6b", "llama-3-8b"):
        if preset in name.replace("_", "-"):
            return preset
    raise HyperParamsError(
        f"no hparams given and no preset matches model {name!r}; pass hparams= (a preset name or a JSON file)"
    )


def _check_templates(method: str, templates):
    if method in ("rome", "r-rome"):
        out = list(templates)
        if not out or not all(isinstance(t, str) and t.count("{}") == 1 for t in out):
            raise ValueError("ROME templates must be a list of strings, each with exactly one '{}'")
    else:
        out = [list(g) for g in templates]
        if not out or not all(g and all(isinstance(t, str) and t.count("{}") == 1 for t in g) for g in out):
            raise ValueError("MEMIT templates must be a list of groups of strings, each with exactly one '{}'")
        if "{}" not in [t for g in out for t in g]:
            raise ValueError("MEMIT templates must include the bare template '{}'")
    return out
