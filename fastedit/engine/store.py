"""A session on disk: files written once, and a manifest, written last, that names them.

Folder layout (format ``fastedit-session/2``)::

    session.json                         the manifest: configuration, journal segments, undone edits, file names
    base-<token>.safetensors             the edited weights' originals (written once)
    journal-<first id>-<token>.safetensors   the factors of consecutive edits; their requests and times
                                         in its metadata (written once, never rewritten)
    weights-<token>.safetensors          the current edited weights bit for bit, and compensation buffers

A save writes new files only, under new names, then replaces ``session.json`` in one rename: that
rename swaps the new state in, so a save interrupted anywhere leaves the previous one whole (a
first save leaves no session). Saving again into the folder of this session's last save or load
writes only what changed since: the journal entries added since (one new segment), the current
weights, the manifest; files no manifest names any longer are then removed. Reading checks
everything (:func:`check_saved`) before :func:`restore` touches the model, which is put back if
anything fails after. Sessions of format ``fastedit-session/1`` (three whole files) still load.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import InputError
from ..methods.base import LowRankUpdate
from ..requests import EditRequest
from ..stats.cache import model_fingerprint
from .backup import restoring
from .checks import check_factors, check_names, check_tensor
from .files import fsync_dir, new_token, write_json, write_safetensors
from .journal import Journal, JournalEntry, factor_dtype, request_record

log = logging.getLogger(__name__)

__all__ = ["SESSION_FORMAT", "DiskState", "SavedSession", "save_session", "read_session", "check_saved", "restore"]

SESSION_FORMAT = "fastedit-session/2"
LEGACY_FORMAT = "fastedit-session/1"
MANIFEST = "session.json"
_COMP = "compensation/"
_REQUIRED = ("method", "mode", "options", "hparams", "templates", "seed", "model_fingerprint", "next_id", "journal")
_OWN_FILE = re.compile(r"^(base|weights|journal)-[0-9a-f-]+\.safetensors$|^\..+\.[0-9a-f]{12}\.tmp$")
_LEGACY_FILES = ("journal.safetensors", "weights.safetensors", "base.safetensors", "session.json.tmp",
                 "journal.safetensors.tmp", "weights.safetensors.tmp", "base.safetensors.tmp")


@dataclass
class DiskState:
    """What a session knows of the folder it last saved to or loaded from."""

    path: Path  # resolved
    generation: str  # the token of the manifest it wrote or read
    base_file: str | None
    base_names: tuple[str, ...]
    segments: list[dict]  # [{"file", "first", "last", "count"}], oldest first
    saved: int  # journal entries the segments hold


@dataclass
class SavedSession:
    """Everything a saved session holds, read into CPU memory and not yet checked."""

    path: Path
    manifest: dict
    weights: dict[str, torch.Tensor]
    compensation: dict[str, torch.Tensor]
    base: dict[str, torch.Tensor]
    entries: list[JournalEntry]
    files: dict[str, str] = field(default_factory=dict)  # role → file name, for messages
    disk: DiskState | None = None

    def session_arguments(self) -> dict:
        """The constructor arguments the session was saved with."""
        m = self.manifest
        return dict(method=m["method"], hparams=m["hparams"], mode=m["mode"], options=dict(m["options"]),
                    templates=m["templates"], seed=m["seed"], solver=m.get("solver", "cholesky"))


# ---------------------------------------------------------------------------------------- saving
def save_session(sess, path: str | Path) -> Path:
    """Write ``sess`` to folder ``path`` (see the module's docstring); returns the folder."""
    path = Path(path)
    sess._remember_base()
    disk = _continuation(sess, path)
    previous = _manifest_or_none(path)
    path.mkdir(parents=True, exist_ok=True)
    token, written = new_token(), []
    try:
        state = _write_files(sess, path, disk, token, written)
        manifest = _manifest(sess, token, state)
        write_json(path / MANIFEST, manifest)  # the swap
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    fsync_dir(path)
    sess._disk = state
    _remove_unreferenced(path, manifest, legacy=bool(previous) and previous.get("format") == LEGACY_FORMAT)
    return path


def _continuation(sess, path: Path) -> DiskState | None:
    """The state of ``path`` when it holds this session's last save or load, else None (write whole)."""
    disk = sess._disk
    if disk is None or disk.path != path.resolve():
        return None
    m = _manifest_or_none(path)
    if not m or m.get("session_id") != sess._session_id or m.get("generation") != disk.generation:
        return None
    names = [disk.base_file] + [s["file"] for s in disk.segments]
    if not all((path / n).is_file() for n in names if n) or disk.saved > len(sess.journal):
        return None
    return disk


def _write_files(sess, path: Path, disk: DiskState | None, token: str, written: list[Path]) -> DiskState:
    """Write the files this save adds (each once, under a new name); return the state they make."""
    base_names = tuple(sorted(sess._base))
    if disk and disk.base_file and disk.base_names == base_names:
        base_file = disk.base_file
    else:
        base_file = f"base-{token}.safetensors"
        write_safetensors(path / base_file, {n: b.contiguous() for n, b in sess._base.items()})
        written.append(path / base_file)
    segments, saved = (list(disk.segments), disk.saved) if disk else ([], 0)
    new = sess.journal.entries[saved:]
    if new:
        name = f"journal-{new[0].edit_id:06d}-{token}.safetensors"
        tensors, records = {}, []
        for e in new:
            for j, u in enumerate(e.updates):
                tensors[f"{e.edit_id}/{j}/keys"] = u.keys_side.contiguous()
                tensors[f"{e.edit_id}/{j}/values"] = u.values_side.contiguous()
            for layer, k in e.history.items():
                tensors[f"{e.edit_id}/history/{layer}"] = k.contiguous()
            records.append({"edit_id": e.edit_id, "requests": [request_record(r) for r in e.requests],
                            "updates": [{"weight": u.weight_name, "layer": u.layer} for u in e.updates],
                            "history": sorted(e.history), "times": e.times})
        write_safetensors(path / name, tensors, {"entries": json.dumps(records)})
        written.append(path / name)
        segments.append({"file": name, "first": new[0].edit_id, "last": new[-1].edit_id, "count": len(new)})
    weights = {n: w.detach().cpu().contiguous() for n, w in sess.edited_weights().items()}
    weights.update({f"{_COMP}{n}": c.cpu().contiguous() for n, c in sess._comp.items()})
    write_safetensors(path / f"weights-{token}.safetensors", weights)
    written.append(path / f"weights-{token}.safetensors")
    return DiskState(path.resolve(), token, base_file if sess._base else None, base_names, segments,
                     saved + len(new))


def _manifest(sess, token: str, state: DiskState) -> dict:
    from dataclasses import asdict

    return {
        "format": SESSION_FORMAT,
        "session_id": sess._session_id,
        "generation": token,
        "method": sess.method,
        "mode": sess.mode,
        "options": asdict(sess.options),
        "solver": sess.solver_kind,
        "hparams": sess.hp.to_dict(),
        "templates": sess._templates,
        "seed": sess.seed,
        "model": str(sess.model.config._name_or_path),
        "model_fingerprint": model_fingerprint(sess.model),
        "next_id": sess.journal.next_id,
        "edits": len(sess.journal),
        "undone": [e.edit_id for e in sess.journal if not e.active],
        "files": {"base": state.base_file, "weights": f"weights-{token}.safetensors"},
        "journal": state.segments,
    }


def _remove_unreferenced(path: Path, manifest: dict, legacy: bool) -> None:
    """Delete the files of earlier saves that the new manifest no longer names (never other files)."""
    keep = {MANIFEST, *[f for f in manifest["files"].values() if f], *[s["file"] for s in manifest["journal"]]}
    for p in path.iterdir():
        if p.name in keep or not (_OWN_FILE.match(p.name) or (legacy and p.name in _LEGACY_FILES)):
            continue
        try:
            p.unlink()
        except OSError as e:
            log.warning("could not remove %s, left from an earlier save: %s", p, e)


def _manifest_or_none(path: Path) -> dict | None:
    try:
        m = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


# ---------------------------------------------------------------------------------------- reading
def read_session(path: str | Path) -> SavedSession:
    """Read the whole session in folder ``path`` into CPU memory; ``ValueError`` names what is wrong
    with the files. Nothing is checked against a model yet (:func:`check_saved`)."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise InputError(f"{path}: no fastedit session here (no {MANIFEST})")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        fmt = manifest.get("format")
        if fmt not in (SESSION_FORMAT, LEGACY_FORMAT):
            raise InputError(f"{path}: not a fastedit session (format {fmt!r})")
        missing = [k for k in _REQUIRED if k not in manifest]
        if missing:
            raise InputError(f"{path / MANIFEST}: lacks {', '.join(missing)}")
        return (_read_v2 if fmt == SESSION_FORMAT else _read_v1)(path, manifest)
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: malformed session files ({type(e).__name__}: {e})") from None


def _read_v2(path: Path, manifest: dict) -> SavedSession:
    files = manifest["files"]
    base = _load(path, files["base"])[0] if files.get("base") else {}
    current = _load(path, files["weights"])[0]
    entries, segments = [], []
    for seg in manifest["journal"]:
        tensors, meta = _load(path, seg["file"])
        records = json.loads(meta.get("entries", "null"))
        if not isinstance(records, list) or len(records) != seg["count"]:
            raise InputError(f"{path / seg['file']}: holds {len(records or [])} journal entries, the manifest says {seg['count']}")
        entries += _entries(records, tensors, path / seg["file"])
        segments.append(dict(seg))
    undone = set(manifest["undone"])
    for e in entries:
        e.active = e.edit_id not in undone
    weights, comp = _split_compensation(current)
    disk = DiskState(path.resolve(), manifest["generation"], files.get("base"), tuple(sorted(base)), segments, len(entries))
    return SavedSession(path, manifest, weights, comp, base, entries,
                        {"base": files.get("base") or "", "weights": files["weights"]}, disk)


def _read_v1(path: Path, manifest: dict) -> SavedSession:
    base = _load(path, "base.safetensors")[0]
    weights, comp = _split_compensation(_load(path, "weights.safetensors")[0])
    factors = _load(path, "journal.safetensors")[0]
    entries = _entries(manifest["journal"], factors, path / "journal.safetensors")
    for e, rec in zip(entries, manifest["journal"]):
        e.active = bool(rec["active"])
    return SavedSession(path, manifest, weights, comp, base, entries,
                        {"base": "base.safetensors", "weights": "weights.safetensors"})


def _load(path: Path, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of one file and its metadata; ``ValueError`` when it is missing or unreadable."""
    file = path / name
    if Path(name).name != name or not file.is_file():
        raise InputError(f"{path}: {name!r} is missing")
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, RuntimeError) as e:
        raise InputError(f"{file}: unreadable ({e})") from None


def _split_compensation(tensors: dict) -> tuple[dict, dict]:
    weights = {n: t for n, t in tensors.items() if not n.startswith(_COMP)}
    comp = {n[len(_COMP):]: t for n, t in tensors.items() if n.startswith(_COMP)}
    return weights, comp


def _entries(records: list, tensors: dict, file: Path) -> list[JournalEntry]:
    """Journal entries from their records and the factor tensors ``{id}/{j}/keys|values``."""
    entries, used = [], set()
    for rec in records:
        eid, updates = int(rec["edit_id"]), []
        for j, u in enumerate(rec["updates"]):
            keys = (f"{eid}/{j}/keys", f"{eid}/{j}/values")
            if not all(k in tensors for k in keys):
                raise InputError(f"{file}: the factors of update {j} of edit #{eid} are missing")
            used.update(keys)
            updates.append(LowRankUpdate(str(u["weight"]), int(u["layer"]), tensors[keys[0]], tensors[keys[1]]))
        history = {}
        for layer in rec.get("history", []):
            name = f"{eid}/history/{int(layer)}"
            if name not in tensors:
                raise InputError(f"{file}: the edit-history keys of edit #{eid} at layer {layer} are missing")
            used.add(name)
            history[int(layer)] = tensors[name]
        try:
            reqs = [EditRequest.from_dict(r) for r in rec["requests"]]
        except ValueError as e:
            raise InputError(f"{file}: edit #{eid}: {e}") from None
        entries.append(JournalEntry(eid, reqs, updates, True, dict(rec.get("times", {})), history))
    other = sorted(set(tensors) - used)
    if other:
        raise InputError(f"{file}: tensors no journal entry names: {', '.join(other[:5])}")
    return entries


# ---------------------------------------------------------------------------------------- checking
def check_saved(saved: SavedSession, sess) -> None:
    """Judge everything read against ``sess`` (built from the saved configuration on the target
    model) before the model is touched: names, shapes, dtypes, finiteness, the originals."""
    weights = sess.edited_weights()
    where = {role: f"{saved.path / name}" for role, name in saved.files.items()}
    check_names(saved.weights, weights, where["weights"], "current weights")
    for name, w in weights.items():
        check_tensor(saved.weights[name], f"{where['weights']}: {name}", w.shape, (w.dtype,))
    if saved.base or saved.entries:
        check_names(saved.base, weights, where["base"], "original weights")
        for name, w in weights.items():
            check_tensor(saved.base[name], f"{where['base']}: {name}", w.shape, (w.dtype,))
            if not torch.equal(w.detach().cpu(), saved.base[name]):
                raise InputError(f"{saved.path}: {name} of this model differs from the session's original weights")
    for name, c in saved.compensation.items():
        w = weights.get(name)
        if w is None or w.dtype not in (torch.bfloat16, torch.float16):
            raise InputError(f"{where['weights']}: a compensation buffer for {name}, which is no bf16/fp16 edited weight")
        check_tensor(c, f"{where['weights']}: compensation of {name}", w.shape, (torch.float32, w.dtype))
    _check_entries(saved, sess, weights)


def _check_entries(saved: SavedSession, sess, weights: dict) -> None:
    tmp = sess.rewrite_module_tmp
    last = -1
    for e in saved.entries:
        if e.edit_id <= last:
            raise InputError(f"{saved.path}: journal edit ids out of order at #{e.edit_id}")
        last = e.edit_id
        for u in e.updates:
            if u.weight_name not in weights or u.weight_name != f"{tmp.format(u.layer)}.weight":
                raise InputError(f"{saved.path}: edit #{e.edit_id} updates {u.weight_name} (layer {u.layer}), "
                                 f"which this session does not edit")
            check_factors(u.keys_side, u.values_side, weights[u.weight_name], sess.adapter,
                          f"{saved.path}: edit #{e.edit_id} {u.weight_name}")
        for layer, k in e.history.items():
            w = weights.get(f"{tmp.format(layer)}.weight")
            if w is None:
                raise InputError(f"{saved.path}: edit #{e.edit_id} keeps edit-history keys at layer {layer}, "
                                 "which this session does not edit")
            rows = sess.adapter.key_size(sess.model, layer)
            check_tensor(k, f"{saved.path}: edit #{e.edit_id} history keys at layer {layer}",
                         (rows, k.shape[1] if k.dim() == 2 else -1), (factor_dtype(w.dtype),))
    next_id = saved.manifest["next_id"]
    if not isinstance(next_id, int) or next_id <= last:
        raise InputError(f"{saved.path}: next edit id {next_id!r} is not above the journal's last, #{last}")
    undone = set(saved.manifest.get("undone", [])) - {e.edit_id for e in saved.entries}
    if undone:
        raise InputError(f"{saved.path}: undone edits {sorted(undone)} are not in the journal")


def restore(saved: SavedSession, sess) -> None:
    """Set ``sess`` and its model to the checked saved state; the model is put back if this fails."""
    weights = sess.edited_weights()
    with restoring(weights), torch.no_grad():
        comp = {n: c.to(weights[n].device) for n, c in saved.compensation.items()}
        for name, w in weights.items():
            w.copy_(saved.weights[name].to(w.device))
    journal = Journal()
    for e in saved.entries:
        for u in e.updates:
            dtype = factor_dtype(weights[u.weight_name].dtype)
            u.keys_side, u.values_side = u.keys_side.to(dtype), u.values_side.to(dtype)
    journal.entries = list(saved.entries)
    journal.next_id = saved.manifest["next_id"]
    sess.journal, sess._base, sess._comp = journal, dict(saved.base), comp
    sess._session_id = saved.manifest.get("session_id", sess._session_id)
    sess._disk = saved.disk
