"""Second-moment statistics files in the reference layout, so caches move both ways.

kmeng01 (ROME, MEMIT) stores C's raw sum as

    {stats_dir}/{model name, "/" → "_"}/{dataset}_stats/{layer module}_{dtype}_mom2_{n}.npz

with keys ``mom2.mom2`` (Σ k kᵀ), ``mom2.count`` (tokens), ``mom2.constructor`` and ``sample_size``;
C = mom2 / count. AlphaEdit names the model folder by the last path component instead. Both are
read; fastedit writes kmeng01's (``np.savez``, no pickled objects, so the reference loads it).

Beside each file fastedit writes a sidecar ``….meta.json`` (model, fingerprint, layer, width, dtype,
tokens, corpus) that is checked on load; reference files have none and are checked by size only.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, confined, safe_component

__all__ = [
    "SecondMoment",
    "StatsMismatchError",
    "stats_paths",
    "save_second_moment",
    "load_second_moment",
    "model_fingerprint",
    "reference_model_names",
]

CONSTRUCTOR = "util.runningstats.SecondMoment()"


class StatsMismatchError(InputError):
    """Statistics that do not belong to this model or layer."""


@dataclass
class SecondMoment:
    """Σ k kᵀ over ``count`` key vectors of one layer. ``mom2``: (d_ff, d_ff)."""

    mom2: torch.Tensor
    count: int
    sample_size: int | None = None
    meta: dict[str, Any] | None = None
    path: Path | None = None

    def moment(self) -> torch.Tensor:
        """C = E[k kᵀ] (the reference's ``stat.mom2.moment()``), in the stored dtype."""
        return self.mom2 / self.count


def reference_model_names(name_or_path: str) -> tuple[str, str]:
    """(kmeng01's folder name, AlphaEdit's folder name) for a model's ``name_or_path``."""
    return name_or_path.replace("/", "_"), name_or_path.rstrip("/").rsplit("/")[-1]


def stats_paths(
    stats_dir: str | os.PathLike, name_or_path: str, dataset: str, layer_name: str, dtype: str, n: int | None
) -> list[Path]:
    """Candidate cache files, kmeng01's naming first, then AlphaEdit's (deduplicated). Every name
    that comes from hyperparameters or a model becomes one path component under ``stats_dir``
    (:class:`~fastedit.errors.PathEscapeError` otherwise)."""
    suffix = "" if n is None else f"_{n}"
    rel = safe_component(f"{safe_component(dataset, 'mom2_dataset')}_stats", "mom2_dataset")
    file = safe_component(f"{layer_name}_{dtype}_mom2{suffix}.npz", "layer module name")
    out = []
    for folder in reference_model_names(name_or_path):
        p = confined(stats_dir, Path(safe_component(folder, "model name"), rel, file), "statistics cache")
        if p not in out:
            out.append(p)
    return out


def meta_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(".npz")] + ".meta.json")


def model_fingerprint(model) -> str:
    """A cheap identity for a model's statistics: shapes and a strided checksum of the input
    embedding (which edits of MLP projections never change)."""
    emb = model.get_input_embeddings().weight
    step = max(1, emb.shape[0] // 64)
    sample = emb[::step].detach().to("cpu", torch.float64)
    return f"{tuple(emb.shape)}:{float(sample.sum()):.10e}:{float(sample.abs().sum()):.10e}"


def _public_mode(path: str) -> None:
    """mkstemp creates files readable by the owner only; give them the usual umask-based mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_second_moment(path: Path, stat: SecondMoment, meta: dict[str, Any] | None = None) -> None:
    """Write the reference npz layout (atomically) plus the sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "mom2.constructor": np.array(CONSTRUCTOR),
        "mom2.count": np.array(int(stat.count)),
        "mom2.mom2": stat.mom2.detach().cpu().numpy(),
    }
    if stat.sample_size is not None:
        arrays["sample_size"] = np.array(int(stat.sample_size))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        _public_mode(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if meta is not None:
        meta_path(path).write_text(json.dumps(meta, indent=2) + "\n")


def load_second_moment(path: Path) -> SecondMoment:
    """Read a reference-layout npz (no pickle) and its sidecar if there is one."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("mom2.mom2", "mom2.count") if k not in data]
            if missing:
                raise StatsMismatchError(f"{path}: not a second-moment cache (missing {', '.join(missing)})")
            mom2 = torch.from_numpy(np.array(data["mom2.mom2"]))
            count = int(data["mom2.count"])
            sample_size = int(data["sample_size"]) if "sample_size" in data and data["sample_size"].shape == () else None
    except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, StatsMismatchError):
            raise
        # pickled objects are refused (allow_pickle=False) like any other unreadable content
        raise StatsMismatchError(f"{path}: not a readable statistics file ({e}); delete it to recompute") from None
    meta = None
    mp = meta_path(path)
    if mp.exists():
        meta = json.loads(mp.read_text())
    if mom2.ndim != 2 or mom2.shape[0] != mom2.shape[1]:
        raise StatsMismatchError(f"{path}: mom2 has shape {tuple(mom2.shape)}, expected a square matrix")
    if count <= 0:
        raise StatsMismatchError(f"{path}: mom2.count is {count}")
    return SecondMoment(mom2=mom2, count=count, sample_size=sample_size, meta=meta, path=path)
