"""Experiment trackers for sequential runs: TensorBoard or Weights & Biases, beside the run's own
JSONL logs and plots (which are always written).

Both are optional dependencies (``pip install tensorboard`` / ``pip install wandb``); asking for one
that is not installed is an error before the run starts. Each edit logs its update norm, time and
whether it holds (step = edits so far); each checkpoint logs every number of its ``checkpoints.jsonl``
line under ``checkpoint/`` (scores, forgetting by age, GLUE, norm growth).

Offline-friendly: TensorBoard writes event files into ``RUN/tensorboard``; wandb runs in
``WANDB_MODE`` if set, else online only when ``WANDB_API_KEY`` is set and offline otherwise (sync
later with ``wandb sync RUN/wandb``). A resumed run continues the same TensorBoard log (events after
the resumed checkpoint are purged) and the same wandb run (its id is kept in ``RUN/wandb_id``).
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)

__all__ = ["REPORTERS", "ReporterUnavailableError", "Reporter", "make_reporter", "require_reporter", "flatten_numbers"]

REPORTERS = ("none", "tensorboard", "wandb")


class ReporterUnavailableError(RuntimeError):
    """The tracker asked for cannot be used (its package is not installed)."""


def flatten_numbers(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every int/float leaf of nested dicts and lists as ``{"a/b/0": value}`` (booleans and strings left out)."""
    out: dict[str, float] = {}
    items = record.items() if isinstance(record, Mapping) else enumerate(record)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            out[name] = float(value)
        elif isinstance(value, (Mapping, list, tuple)):
            out.update(flatten_numbers(value, name + "/"))
    return out


class Reporter:
    """Sends scalars to a tracker; :meth:`log` takes ``{name: number}`` and the step."""

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def log_edit(self, entry: Mapping[str, Any]) -> None:
        """One ``edits.jsonl`` line."""
        holds = entry.get("holds") or []
        self.log({"edit/update_norm": entry["update_norm"], "edit/seconds": entry["seconds"],
                  "edit/holds": sum(holds) / len(holds) if holds else 0.0}, entry["edit"])

    def log_checkpoint(self, point: Mapping[str, Any]) -> None:
        """One ``checkpoints.jsonl`` line (its per-edit ``holds`` list left out)."""
        numbers = flatten_numbers({k: v for k, v in point.items() if k not in ("holds", "edits")}, "checkpoint/")
        self.log(numbers, point["edits"])


class _TensorBoard(Reporter):
    def __init__(self, writer_cls, log_dir: Path, resume_step: int) -> None:
        # purge_step drops events a killed run wrote after the checkpoint it resumes from
        self.writer = writer_cls(log_dir=str(log_dir), purge_step=resume_step or None)

    def log(self, scalars, step):
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self):
        self.writer.close()


class _WandB(Reporter):
    def __init__(self, wandb, run_dir: Path, config: Mapping[str, Any]) -> None:
        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else wandb.util.generate_id()
        id_file.write_text(run_id + "\n")
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "fastedit"), name=run_dir.name, id=run_id,
                              resume="allow", dir=str(run_dir), config=dict(config), mode=mode)

    def log(self, scalars, step):
        self.run.log(dict(scalars), step=step)

    def close(self):
        self.run.finish()


def _import(module: str, package: str, kind: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ReporterUnavailableError(
            f"--report-to {kind} needs the optional package {package!r}, which is not installed "
            f"(pip install {package}); or use --report-to none: the run's JSONL logs and plots are written either way"
        ) from err


_MODULES = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def require_reporter(kind: str | None):
    """The module behind tracker ``kind`` (``None`` for ``none``); a clear error when it is unknown or
    its package is not installed."""
    kind = (kind or "none").lower()
    if kind not in REPORTERS:
        raise ValueError(f"unknown tracker {kind!r}; choose from {', '.join(REPORTERS)}")
    if kind == "none":
        return None
    module, package = _MODULES[kind]
    return _import(module, package, kind)


def make_reporter(kind: str | None, run_dir: str | Path, config: Mapping[str, Any], resume_step: int = 0) -> Reporter | None:
    """The tracker ``kind`` (``none``, ``tensorboard``, ``wandb``) for the run in ``run_dir``;
    ``None`` for ``none``. ``resume_step``: the edits already done (a resumed run)."""
    module = require_reporter(kind)
    if module is None:
        return None
    run_dir = Path(run_dir)
    if kind.lower() == "tensorboard":
        return _TensorBoard(module.SummaryWriter, run_dir / "tensorboard", resume_step)
    return _WandB(module, run_dir, config)
