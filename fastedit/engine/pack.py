"""Edit packs: a session's active edits as low-rank factors, applied to the base model elsewhere.

A pack is one safetensors file: per edited weight ``{name}/keys`` (d_ff, R) and ``{name}/values``
(d_model, R), float32, and metadata with the model's fingerprint. :func:`apply_edit_pack` checks the
whole pack before it changes a weight and puts every weight back if applying fails half way.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import InputError
from ..models.adapters import get_adapter, get_module
from ..stats.cache import model_fingerprint
from .backup import restoring
from .checks import check_factors
from .files import write_safetensors

__all__ = ["PACK_FORMAT", "export_pack", "apply_edit_pack"]

PACK_FORMAT = "fastedit-edit-pack/1"


def export_pack(sess, path: str | Path) -> Path:
    """Write the active edits of session ``sess`` as an edit pack at ``path``."""
    tensors = {}
    for name in sess.edited_weights():
        factors = sess.journal.active_factors(name)
        if factors is not None:
            tensors[f"{name}/keys"], tensors[f"{name}/values"] = (f.contiguous() for f in factors)
    meta = {
        "format": PACK_FORMAT,
        "method": sess.method,
        "model": str(sess.model.config._name_or_path),
        "model_fingerprint": model_fingerprint(sess.model),
        "edits": json.dumps([e.edit_id for e in sess.journal if e.active]),
        "weight_layout": "in_out" if sess.adapter.weight_is_in_out else "out_in",
        "rewrite_module_tmp": sess.rewrite_module_tmp,
    }
    path = Path(path)
    write_safetensors(path, tensors, meta)
    return path


def apply_edit_pack(model, path: str | Path, rewrite_module_tmp: str | None = None) -> list[str]:
    """Apply an edit pack written by :meth:`EditSession.export_pack` to ``model`` (its base model):
    W += keys @ valuesᵀ in float64, rounded once to W's dtype. Returns the edited weight names.

    Only the projections the editing methods change may be named: the architecture's edited module
    (``rewrite_module_tmp`` names another, for sessions whose hparams chose one) at any layer. The
    whole pack is checked first (format, fingerprint, names, shapes, dtypes, finite values); if
    applying still fails (a weight would become non-finite), every weight is put back and
    :class:`~fastedit.errors.InputError` says why."""
    path = Path(path)
    tensors, meta = _read(path)
    if meta.get("format") != PACK_FORMAT:
        raise InputError(f"{path}: not a fastedit edit pack (format {meta.get('format')!r})")
    if meta.get("model_fingerprint") != model_fingerprint(model):
        raise InputError(f"{path}: the pack was made for model {meta.get('model')!r}, not this one")
    adapter = get_adapter(model)
    layout = "in_out" if adapter.weight_is_in_out else "out_in"
    if meta.get("weight_layout", layout) != layout:
        raise InputError(f"{path}: factors for the {meta['weight_layout']} weight layout; this model's is {layout}")
    factors = _checked_factors(path, tensors, model, adapter, rewrite_module_tmp or adapter.rewrite_module_tmp)
    weights = {name: get_module(model, name.rsplit(".", 1)[0]).weight for name in factors}
    with restoring(weights), torch.no_grad():
        for name, (keys, values) in factors.items():
            w = weights[name]
            k, v = (f.to(device=w.device, dtype=torch.float64) for f in (keys, values))
            new = (w.double() + adapter.delta_to_weight(k @ v.T, w)).to(w.dtype)
            if not torch.isfinite(new).all():
                raise InputError(f"{path}: applying it would make {name} non-finite (in {w.dtype}); model unchanged")
            w.copy_(new)
    return sorted(factors)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise InputError(f"{path}: no such edit pack")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, RuntimeError) as e:
        raise InputError(f"{path}: unreadable edit pack ({e})") from None


def _checked_factors(path: Path, tensors: dict, model, adapter, tmp: str) -> dict[str, tuple]:
    """name → (keys, values) of a pack, every name an edited projection of ``model``, every pair
    checked against its weight."""
    allowed = {f"{tmp.format(l)}.weight" for l in range(adapter.num_layers(model))}
    names = sorted({k.rsplit("/", 1)[0] for k in tensors})
    out = {}
    for name in names:
        if set(k for k in tensors if k.rsplit("/", 1)[0] == name) != {f"{name}/keys", f"{name}/values"}:
            raise InputError(f"{path}: {name} needs exactly the tensors {name}/keys and {name}/values")
        if name not in allowed:
            raise InputError(f"{path}: names {name}, which is not a weight the editing methods change "
                             f"(the {tmp} projections of this model)")
        try:
            w = get_module(model, name.rsplit(".", 1)[0]).weight
        except LookupError as e:
            raise InputError(f"{path}: {name}: {e}") from None
        check_factors(tensors[f"{name}/keys"], tensors[f"{name}/values"], w, adapter, f"{path}: {name}")
        out[name] = (tensors[f"{name}/keys"], tensors[f"{name}/values"])
    return out
