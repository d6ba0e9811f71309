"""Checkpoints of a statistics pass in progress: partial sums plus the position in the corpus.

A checkpoint is one ``.npz`` file beside the cache of the pass's first layer,

    {cache without .npz}.partial.npz                 (one process)
    {cache without .npz}.partial.rank{r}of{w}.npz    (rank r of w under torchrun)

holding every layer's running sum (``acc.0``, ``acc.1``, ... in the order of the state's ``layers``)
and a JSON ``state``: the configuration that fixes the result (model fingerprint, layers, dtypes,
corpus, sample, row layout, rank and world size), the cursor (window and batch), the counts and the
convergence curve so far. It is written to a temporary file and renamed into place, and the one before
it is kept as ``….prev.npz``, so a process killed at any moment leaves at least one complete
checkpoint; a ``.json`` copy of the state sits beside it for people. Checkpoints are taken between
batches only, and the batches after a checkpoint are the same on resume, so a resumed pass adds the
same numbers in the same order as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import StatsMismatchError, _public_mode

__all__ = ["PartialState", "CheckpointFiles", "checkpoint_files", "config_mismatch"]

VERSION = 1


@dataclass
class PartialState:
    """Where a pass stood after ``step`` batches of this rank."""

    config: dict[str, Any]
    step: int
    window: int  # position in this rank's list of windows
    batch: int  # batches of that window already added
    count: int  # key vectors (tokens) added by this rank
    documents: int
    rows: int
    padding: int
    seconds: float  # compute time spent so far, over all earlier runs
    curve: list[dict[str, Any]] = field(default_factory=list)
    last_check_count: int = 0
    accs: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "config": self.config,
            "step": self.step,
            "window": self.window,
            "batch": self.batch,
            "count": self.count,
            "documents": self.documents,
            "rows": self.rows,
            "padding": self.padding,
            "seconds": self.seconds,
            "curve": self.curve,
            "last_check_count": self.last_check_count,
        }


def config_mismatch(saved: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """Human-readable differences between two configurations (empty when they agree)."""
    out = []
    for key in sorted(set(saved) | set(want)):
        a, b = saved.get(key, "<absent>"), want.get(key, "<absent>")
        if a != b:
            out.append(f"{key}: checkpoint has {a!r}, this run {b!r}")
    return out


@dataclass(frozen=True)
class CheckpointFiles:
    """The files of one rank's checkpoints."""

    current: Path
    previous: Path
    summary: Path

    def existing(self) -> list[Path]:
        return [p for p in (self.current, self.previous) if p.exists()]

    def read_state(self, path: Path) -> dict[str, Any]:
        """The JSON state of a checkpoint file, without reading its arrays."""
        with np.load(path, allow_pickle=False) as data:
            return json.loads(str(data["state"]))

    def load(self, path: Path, layers: list[str], device_of: dict[str, torch.device]) -> PartialState:
        with np.load(path, allow_pickle=False) as data:
            st = json.loads(str(data["state"]))
            accs = {
                name: torch.from_numpy(np.array(data[f"acc.{i}"])).to(device_of[name]) for i, name in enumerate(layers)
            }
        return PartialState(
            config=st["config"], step=st["step"], window=st["window"], batch=st["batch"], count=st["count"],
            documents=st["documents"], rows=st["rows"], padding=st["padding"], seconds=st["seconds"],
            curve=st["curve"], last_check_count=st["last_check_count"], accs=accs,
        )

    def save(self, state: PartialState, layers: list[str]) -> None:
        """Write atomically; the checkpoint it replaces becomes ``previous``."""
        folder = self.current.parent
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {f"acc.{i}": state.accs[name].detach().cpu().numpy() for i, name in enumerate(layers)}
        arrays["state"] = np.array(json.dumps(state.to_json()))
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
        os.close(fd)
        try:
            np.savez(tmp, **arrays)
            _public_mode(tmp)
            if self.current.exists():
                os.replace(self.current, self.previous)
            os.replace(tmp, self.current)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump(state.to_json(), f, indent=1)
        _public_mode(tmp)
        os.replace(tmp, self.summary)

    def remove(self) -> None:
        for p in (self.current, self.previous, self.summary):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def check(self, path: Path, want: dict[str, Any]) -> dict[str, Any]:
        """The state of ``path`` if its configuration is ``want``; else StatsMismatchError naming why."""
        st = self.read_state(path)
        if st.get("version") != VERSION:
            raise StatsMismatchError(f"{path}: checkpoint format {st.get('version')!r}, expected {VERSION}")
        diff = config_mismatch(st["config"], want)
        if diff:
            raise StatsMismatchError(
                f"{path}: this checkpoint belongs to another statistics run ({'; '.join(diff)}); "
                "resume with the same settings, or start afresh (--no-resume / resume=False) to replace it"
            )
        return st


def checkpoint_files(cache_path: str | os.PathLike, rank: int = 0, world: int = 1) -> CheckpointFiles:
    """The checkpoint files that belong beside ``cache_path`` (a ``….npz`` statistics cache)."""
    cache_path = Path(cache_path)
    stem = cache_path.name[: -len(".npz")] if cache_path.name.endswith(".npz") else cache_path.name
    tag = "" if world == 1 else f".rank{rank}of{world}"
    base = cache_path.with_name(f"{stem}.partial{tag}")
    return CheckpointFiles(
        current=base.with_name(base.name + ".npz"),
        previous=base.with_name(base.name + ".prev.npz"),
        summary=base.with_name(base.name + ".json"),
    )
