"""EditSession: the state that lives across thousands of edits of one model.

A session owns the model's method state: the method (a registered
:class:`~fastedit.methods.registry.EditMethod` bound to the session, which keeps what it derives from
the statistics: ROME's C⁻¹, MEMIT's Cholesky factor of λC per layer, ...), the hyperparameters
resolved against the model, the context templates (sampled once, at the first edit, from the model as
it is then, or supplied), the second-moment statistics, compensation buffers for low-precision
weights, the journal of applied edits (:mod:`fastedit.engine.journal`) and the edit history some
methods solve with (:mod:`fastedit.engine.history`). Each :meth:`EditSession.apply` edits the model in place, as a
transaction, and returns an :class:`EditResult`; the session keeps no result.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from .. import ops
from ..errors import InputError
from ..hparams import HyperParams, HyperParamsError, load_hparams
from ..methods.base import LowRankUpdate, MethodOutput, apply_update
from ..methods.registry import get_method
from ..methods.stepping import StepPrograms
from ..models.adapters import get_adapter, get_module
from ..models.precision import LowPrecisionWeights, cpu_has_native_bf16
from ..profiling import PhaseTimer, region
from ..requests import EditRequest, as_requests
from ..stats.cache import model_fingerprint
from ..stats.store import SecondMomentStore
from . import pack, store
from .backup import WeightBackup, restoring
from .history import EditHistory
from .journal import Journal

log = logging.getLogger(__name__)

__all__ = ["EditSession", "EditResult", "EditFailedError", "FastOptions"]


class EditFailedError(RuntimeError):
    """An edit could not be completed; the model is unchanged."""


@dataclass(frozen=True)
class FastOptions:
    """What fast mode changes. ``EditSession(mode="fast")`` switches all on; in exact mode all are
    off. Either mode takes overrides by name: ``EditSession(..., options={"early_stop": False})``.

    * ``early_stop``: ENCORE's most-probable early stopping of the target optimisation: a request
      stops before the backward of the ``early_stop_patience``-th pass (counted, not necessarily
      consecutive) at which every target token of its rewrite prompts is the argmax
      (:class:`fastedit.methods.target.StopRule`). ``early_stop_rule`` says which rewrite prompts are
      read: ``"encore"`` (default, ENCORE's code) every one but the first, bare ``"{}"`` one;
      ``"all_prompts"`` every one. ENCORE itself always stops by its own ``prob_cutoff``, in either mode.
    * ``low_precision``: the layers above the edit layer run in ``low_precision_dtype`` during the
      optimisation: under autocast on GPUs; on CPUs with native bf16 instructions (AVX512-BF16, AMX)
      on bf16 copies of their weights kept across edits (:mod:`fastedit.models.precision`), since
      CPU autocast re-casts every weight at every call; ignored on other CPUs, where bf16 is emulated
      and slower.
    * ``compensated_update``: bf16/fp16 edited weights get a float32 compensation buffer, so small
      updates are not lost to rounding over thousands of edits.
    * ``cuda_graph``: on GPUs the optimisation step (forward, loss, backward, Adam) is captured as a
      CUDA graph and replayed, the stop flag read every few steps
      (:func:`fastedit.methods.target.compute_target_values`). The session keeps each graph and
      replays it for every later edit of the same shapes (prompt lengths are padded, masked, to a
      few sizes), so it is captured once per shape, not per edit. It changes only rounding (Adam's
      capturable form); exact mode keeps the eager loop unless asked (``options={"cuda_graph": True}``).
      Ignored on CPUs.
    * ``compile_step``: the same static step with the layers above the edit layer, the final norm and
      the heads through ``torch.compile``, compiled once per shape and kept by the session (the first
      edit of each shape pays the compile, timed as ``target/compile``). Off by default: on the CPUs
      measured it gains little against the compile time (see the README's Performance section).
    """

    early_stop: bool = False
    early_stop_patience: int = 2
    early_stop_rule: str = "encore"
    low_precision: bool = False
    low_precision_dtype: str = "bfloat16"
    compensated_update: bool = False
    cuda_graph: bool = False
    compile_step: bool = False

    def __post_init__(self) -> None:
        from ..methods.target import STOP_RULES

        if self.early_stop_rule not in STOP_RULES:
            raise InputError(f"early_stop_rule must be one of {STOP_RULES}, got {self.early_stop_rule!r}")

    @classmethod
    def for_mode(cls, mode: str, overrides: Mapping[str, Any] | None = None) -> "FastOptions":
        if mode not in ("exact", "fast"):
            raise InputError(f"mode must be 'exact' or 'fast', got {mode!r}")
        base = (
            cls(early_stop=True, low_precision=True, compensated_update=True, cuda_graph=True)
            if mode == "fast"
            else cls()
        )
        unknown = set(overrides or {}) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise InputError(f"unknown fast-mode option(s) {sorted(unknown)}; options: {sorted(cls.__dataclass_fields__)}")
        return replace(base, **(overrides or {}))


@dataclass
class EditResult:
    """What one :meth:`EditSession.apply` call did.

    ``edit_id`` names the edit in the journal (for :meth:`EditSession.undo`). ``update_norms``:
    Frobenius norm of ΔW per edited weight. ``times``: seconds per phase (``target/forward``,
    ``keys``, ``solve``, ...; ``total`` is the wall time of the call). ``loss_curves``: per request,
    the total loss at each iteration of its target optimisation. ``info``: the method's diagnostics
    (MEMIT family: ``z`` (d_model, n) on the CPU, the target values; ``z_error``, ...).
    """

    edit_id: int
    ids: list[Any]
    method: str
    updates: list[LowRankUpdate]
    update_norms: dict[str, float]
    times: dict[str, float]
    loss_curves: list[list[float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        norms = ", ".join(f"{k}: {v:.3g}" for k, v in self.update_norms.items())
        return f"{self.method} edit #{self.edit_id} of {len(self.ids)} request(s) in {self.times.get('total', 0):.2f} s; ‖ΔW‖ {norms}"


class EditSession:
    """Edits one model again and again.

    ``method``: a registered method's name (:func:`fastedit.methods.method_names`: ``"rome"``,
    ``"r-rome"``, ``"memit"``, ...). ``hparams``: a preset name
    (``"smollm2-135m"``), a reference hparams JSON path, a dict or a hyperparameter object.
    ``mode``: ``"exact"`` or ``"fast"``; ``options``: :class:`FastOptions` overrides by name.
    ``templates``: context templates to use instead of sampling them (ROME: a flat list starting with
    ``"{}"``; MEMIT: a list of groups, ``[["{}"], [...]]``). ``stats_dir`` / ``stats_source``: where
    statistics caches live and what text to compute missing ones from (``stats_max_len`` truncates its
    documents). ``solver``: ``"cholesky"`` (the default: solves through factors kept across edits, e.g.
    MEMIT's Woodbury solve with a cached factor of λC) or ``"lu"`` (the reference's dense solve per
    edit).
    """

    def __init__(
        self,
        model,
        tok,
        method: str = "memit",
        hparams: str | Mapping | HyperParams | None = None,
        *,
        mode: str = "exact",
        options: Mapping[str, Any] | None = None,
        templates: Sequence | None = None,
        seed: int = 0,
        stats_dir=None,
        stats_source=None,
        stats_max_len: int | None = None,
        model_name: str | None = None,
        solver: str = "cholesky",
        progress: bool = True,
    ) -> None:
        self.model, self.tok = model, tok
        self.adapter = get_adapter(model)
        self.method_class = get_method(method)
        self.method = self.method_class.name
        if hparams is None:
            hparams = _default_preset(model, self.method_class.hparams_class)
        self.hp = load_hparams(self.method, hparams).resolve(self.adapter, model)
        self._validate_hparams()
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.mode = mode
        self.options = FastOptions.for_mode(mode, options)
        if solver not in ("cholesky", "lu"):
            raise InputError(f"solver must be 'cholesky' or 'lu', got {solver!r}")
        self.solver_kind = solver
        self.seed = seed
        self._templates = self.method_class.check_templates(templates) if templates is not None else None
        self.stats = SecondMomentStore(
            model, tok, self.adapter, self.hp, stats_dir=stats_dir, source=stats_source,
            model_name=model_name, max_len=stats_max_len, progress=progress,
        )
        self._base: dict[str, torch.Tensor] = {}  # original edited weights, on the CPU
        self._comp: dict[str, torch.Tensor] = {}  # compensation buffers of low-precision weights
        self._low_precision: LowPrecisionWeights | None = None  # bf16 weight copies (fast mode, CPU)
        self._programs = StepPrograms()  # compiled or captured optimisation steps, kept across edits
        self.journal = Journal()
        self.edit_history = EditHistory(self.journal)
        self.editor = self.method_class(self)  # the method's state in this session
        self._session_id = uuid.uuid4().hex  # names this session in its saved folders
        self._disk: store.DiskState | None = None  # the folder of the last save or load

    # ------------------------------------------------------------------ templates and statistics
    @property
    def templates(self):
        """The context templates, sampled at first use (seeded) unless supplied."""
        if self._templates is None:
            with region("templates"), torch.no_grad():
                self._templates = self.method_class.sample_templates(self.model, self.tok, self.hp, self.seed)
            log.info("context templates: %s", self._templates)
        return self._templates

    # ------------------------------------------------------------------ weights
    @property
    def rewrite_module_tmp(self) -> str:
        """The edited module's name template, ``{}`` for the layer."""
        return self.hp.rewrite_module_tmp

    def edited_weights(self) -> dict[str, torch.nn.Parameter]:
        """Weight name → parameter of every weight the method edits, in the order of ``hp.layers``."""
        tmp = self.rewrite_module_tmp
        return {f"{tmp.format(l)}.weight": get_module(self.model, tmp.format(l)).weight for l in self.hp.layers}

    def _edit_state(self, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """The tensors an edit changes in place: the edited weights (``names`` of them, default all)
        and their compensation buffers."""
        weights = {n: w for n, w in self.edited_weights().items() if names is None or n in names}
        return {**weights, **{f"compensation/{n}": c for n, c in self._comp.items() if n in weights}}

    def _remember_base(self) -> None:
        for name, w in self.edited_weights().items():
            if name not in self._base:
                self._base[name] = w.detach().to("cpu", copy=True)
            if (
                self.options.compensated_update
                and w.dtype in (torch.bfloat16, torch.float16)
                and name not in self._comp
            ):
                self._comp[name] = ops.new_compensation(w)

    def apply_update(self, model, adapter, upd: LowRankUpdate) -> None:
        """Write one update: the reference's dense cast-and-add, or the fused compensated update for
        bf16/fp16 weights in fast mode."""
        comp = self._comp.get(upd.weight_name)
        if comp is None:
            apply_update(model, adapter, upd)
            return
        w = get_module(model, upd.weight_name.rsplit(".", 1)[0]).weight
        with torch.no_grad():
            ops.lowrank_update_(
                w,
                upd.values_side.to(device=w.device, dtype=torch.float32),
                upd.keys_side.to(device=w.device, dtype=torch.float32),
                transpose=adapter.weight_is_in_out,
                compensation=comp,
            )

    # ------------------------------------------------------------------ editing
    def apply(self, requests: Iterable[EditRequest | Mapping] | EditRequest | Mapping,
              precomputed_z: dict[int, torch.Tensor] | None = None) -> EditResult:
        """Edit the model with ``requests``: as one batch for the methods that edit batches (MEMIT and
        its successors), one request after another otherwise (ROME; one journal entry for the call).
        Raises :class:`EditFailedError`, with the model unchanged, when the edit cannot be made
        (Ctrl-C also restores it, and is re-raised). MEMIT family: ``precomputed_z`` maps request
        index → target value computed earlier (the reference's ``cache_template``)."""
        reqs = as_requests(requests)
        for r in reqs:
            r.check_tokens(self.tok)
        self._remember_base()
        weights = self.edited_weights()
        t0 = time.perf_counter()
        try:
            with restoring(self._edit_state()) as backup:
                with PhaseTimer() as timer:
                    out = self.editor.compute(reqs, precomputed_z)
                for name, w in weights.items():
                    if not torch.isfinite(w).all():
                        raise EditFailedError(f"the edit made {name} non-finite")
                norms = {k: float((w.detach().double() - backup.original(k).double()).norm()) for k, w in weights.items()}
                times = {**timer.as_dict(), "total": time.perf_counter() - t0}
                # last, so that an edit that fails anywhere leaves no journal entry
                entry = self.journal.record(reqs, out.updates, {k: w.dtype for k, w in weights.items()}, times,
                                            out.history)
        except (EditFailedError, KeyboardInterrupt):
            raise
        except BaseException as e:
            raise EditFailedError(f"edit of {[r.name for r in reqs]} failed, model restored: {e}") from e
        self._history_added(entry)
        return EditResult(
            edit_id=entry.edit_id,
            ids=[r.case_id for r in reqs],
            method=self.method,
            updates=out.updates,
            update_norms=norms,
            times=times,
            loss_curves=_loss_curves(out),
            info={k: (v.detach().cpu() if k == "z" else v) for k, v in out.info.items() if k != "target"},
        )

    def _history_added(self, entry) -> None:
        """Tell the history and the method about the keys ``entry`` adds; a method that fails to update
        what it derived from them drops it instead (it is rebuilt at the next edit)."""
        self.edit_history.added(entry)
        for layer, keys in entry.history.items():
            try:
                self.editor.history_added(layer, keys)
            except Exception as e:  # noqa: BLE001  (the edit stands; the derived state is rebuilt)
                log.warning("layer %d: updating the edit-history solve failed (%s); it is refactorised", layer, e)
                self.editor.history_changed(layer)

    def _history_changed(self, layers=None) -> None:
        for layer in self.edit_history.changed(layers):
            self.editor.history_changed(layer)

    def compute(self, requests, precomputed_z: dict[int, torch.Tensor] | None = None) -> MethodOutput:
        """The updates ``apply`` would make, leaving the model as it was (the reference's
        ``execute_*`` contract). MEMIT family: ``precomputed_z`` maps request index → z computed earlier."""
        reqs = as_requests(requests)
        if not self.method_class.batched and len(reqs) != 1:
            raise InputError(f"{self.method} computes one request at a time")
        backup = WeightBackup(self._edit_state())
        try:
            return self.editor.compute(reqs, precomputed_z)
        finally:
            backup.restore()

    def target_options(self) -> dict:
        """The fast-mode options of the target-value optimisation
        (:func:`~fastedit.methods.target.compute_target_values`) for this session's device."""
        opts = {}
        if self.options.early_stop:
            opts["early_stop_patience"] = self.options.early_stop_patience
            opts["early_stop_rule"] = self.options.early_stop_rule
        device = next(self.model.parameters()).device
        if self.options.low_precision:
            dtype = getattr(torch, self.options.low_precision_dtype)
            if device.type == "cuda":
                opts["autocast_dtype"] = dtype
            elif device.type == "cpu" and cpu_has_native_bf16() and dtype == torch.bfloat16:
                if self._low_precision is None:
                    self._low_precision = LowPrecisionWeights(dtype)
                opts["low_precision_weights"] = self._low_precision
        if self.options.cuda_graph and device.type == "cuda":
            opts["cuda_graph"] = True
        if self.options.compile_step:
            opts["compile_step"] = True
        if opts.get("cuda_graph") or opts.get("compile_step"):
            opts["programs"] = self._programs
        return opts

    # ------------------------------------------------------------------ journal
    def undo(self, edit_id: int) -> None:
        """Remove edit ``edit_id``: every weight it changed becomes its original value plus the float64
        sum of the journaled updates of the edits still active, rounded once to the weight's dtype."""
        entry = self.journal.entry(edit_id)
        if not entry.active:
            raise InputError(f"edit #{edit_id} was already undone")
        names = {u.weight_name for u in entry.updates}
        weights = {n: w for n, w in self.edited_weights().items() if n in names}
        with restoring(self._edit_state(names)), torch.no_grad():
            entry.active = False
            try:
                for name, w in weights.items():
                    total = self._active_sum(name, w)  # float64, on w's device
                    w.copy_(total.to(w.dtype))
                    if name in self._comp:
                        self._comp[name].copy_((total - w.double()).to(self._comp[name].dtype))
            except BaseException:
                entry.active = True
                raise
        self._history_changed(entry.history)

    def _active_sum(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """Original weight + Σ of the active edits' ΔW for ``name``, in float64 on w's device."""
        total = self._base[name].to(device=w.device, dtype=torch.float64, copy=True)
        delta = self.journal.active_delta(name, w.device)
        if delta is not None:
            total += self.adapter.delta_to_weight(delta, w)
        return total

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the session to folder ``path`` (:mod:`fastedit.engine.store`): the configuration, the
        journal, the current edited weights bit for bit, their originals and any compensation
        buffers; safetensors and JSON, no pickle. Saving again into the folder of this session's last
        save or load writes only what changed since; an interrupted save leaves the previous one whole."""
        return store.save_session(self, path)

    @classmethod
    def load(cls, path: str | Path, model, tok, **session_options) -> "EditSession":
        """Restore a session saved with :meth:`save` onto ``model``, which must be the session's base
        model (unedited). Everything is read and checked first (format, fingerprint, names, shapes,
        dtypes, finite values, the originals against the model); then the edited weights are set to
        the saved ones bit for bit, and put back if that fails. ``session_options`` (``stats_dir``,
        ``stats_source``, ...) go to the constructor."""
        saved = store.read_session(path)
        fp = model_fingerprint(model)
        if saved.manifest["model_fingerprint"] != fp:
            raise InputError(
                f"{path}: the session was saved for model {saved.manifest.get('model')!r} "
                f"({saved.manifest['model_fingerprint']}), not this one ({fp})"
            )
        sess = cls(model, tok, **saved.session_arguments(), **session_options)
        store.check_saved(saved, sess)
        store.restore(saved, sess)
        sess.edit_history = EditHistory(sess.journal)
        sess._history_changed()
        return sess

    def export_pack(self, path: str | Path) -> Path:
        """Write the active edits as an edit pack: per edited weight, the concatenated factors
        (keys (d_ff, R), values (d_model, R), float32) with the model's fingerprint. Applied to the
        base model by :func:`~fastedit.engine.apply_edit_pack`."""
        return pack.export_pack(self, path)

    # ------------------------------------------------------------------ checks
    def _validate_hparams(self) -> None:
        n = self.adapter.num_layers(self.model)
        bad = [l for l in self.hp.layers if not 0 <= l < n]
        if bad:
            raise HyperParamsError(f"layers {bad} out of range: the model has {n} layers (0..{n - 1})")
        for attr in ("rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp"):
            tmp = getattr(self.hp, attr)
            try:
                get_module(self.model, tmp.format(self.hp.layers[0]))
            except LookupError as e:
                raise HyperParamsError(f"{attr} {tmp!r} does not name a module of this model: {e}") from None
        for attr in ("ln_f_module", "lm_head_module"):
            name = getattr(self.hp, attr)
            try:
                get_module(self.model, name)
            except LookupError as e:
                raise HyperParamsError(f"{attr} {name!r} does not name a module of this model: {e}") from None


def _loss_curves(out: MethodOutput) -> list[list[float]]:
    """Per request, the total loss at each iteration of its target optimisation."""
    curves = []
    for t in out.info.get("target", []):
        for j in range(t.losses.shape[1] if t.losses.ndim == 2 else 0):
            col = t.losses[:, j]
            curves.append([float(x) for x in col[~torch.isnan(col)]])
    return curves


def _default_preset(model, hparams_class) -> str:
    name = str(getattr(model.config, "_name_or_path", "") or "").lower()
    preset = hparams_class.preset_for(name)
    if preset is not None:
        return preset
    raise HyperParamsError(
        f"no hparams given and no preset matches model {name!r}; pass hparams= (a preset name or a JSON file)"
    )
