"""Statistics for the layers of an edit: found in a cache, or computed once for all layers and cached.

:class:`SecondMomentStore` answers ``second_moment(layer)`` with C = E[k kᵀ] (float32, as the
references round it) for the model's edited projection at that layer. It looks for kmeng01's and
AlphaEdit's cache files, checks them against the model (size, and the sidecar when there is one),
and otherwise computes every missing layer in a single pass over the text source and writes the
reference layout (with a sidecar that records the model, layers, dtypes, token count, corpus and the
convergence curve of the pass). The pass can checkpoint, resume, stop early once C has converged, and
run data-parallel under torchrun (see :mod:`.collect`).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Iterable

import torch

from ..errors import InputError
from ..models.adapters import ModelAdapter
from .cache import (
    SecondMoment,
    StatsMismatchError,
    load_second_moment,
    model_fingerprint,
    save_second_moment,
    stats_paths,
)
from .collect import CollectionReport, auto_checkpoint_every, collect
from .health import check_second_moment
from .distributed import DistContext, current
from .sources import open_source

log = logging.getLogger(__name__)

__all__ = ["SecondMomentStore", "default_stats_dir", "StatsMissingError"]


class StatsMissingError(InputError, FileNotFoundError):
    """No cache and no way to compute one."""


def default_stats_dir() -> Path:
    """``$FASTEDIT_STATS_DIR``, else the references' ``data/stats`` (relative to the working directory)."""
    return Path(os.environ.get("FASTEDIT_STATS_DIR", "data/stats"))


class SecondMomentStore:
    """C per edited layer for one model.

    ``source``: where to compute missing statistics from (a path or a dataset name streamed through
    ``datasets``, see :mod:`fastedit.stats.sources`; default ``$FASTEDIT_STATS_SOURCE``; with neither,
    missing statistics raise :class:`StatsMissingError`).
    ``stats_dir``: the cache folder (default ``$FASTEDIT_STATS_DIR``, else the hparams' ``stats_dir``
    from an EasyEdit file, else ``data/stats``).
    ``model_name``: the cache folder name (default: the model's ``name_or_path``). ``max_len``:
    truncate documents to this many tokens when computing (default: the model's context length, as
    the references do; recorded in the sidecar).

    Options of the pass (all keyword, see :func:`fastedit.stats.collect.collect`): ``rows`` /
    ``batch_tokens`` (rows per forward pass), ``checkpoint_every`` (tokens between checkpoints beside
    the first layer's cache; "auto" scales with the size of the sums; None: no checkpoints),
    ``resume`` (continue from a checkpoint), ``check_every`` (tokens between convergence checks),
    ``converge`` (stop once every layer's relative change of C is below it), ``max_vectors_factor``
    (stop after this many multiples of d_ff key vectors), ``max_tokens``, ``window_docs``, ``dist``
    (default: the initialised process group; only rank 0 writes caches). After a computation,
    ``report`` holds the :class:`CollectionReport`.
    """

    def __init__(
        self,
        model,
        tok,
        adapter: ModelAdapter,
        hp,
        stats_dir: str | os.PathLike | None = None,
        source: str | os.PathLike | None = None,
        model_name: str | None = None,
        max_len: int | None = None,
        progress: bool = True,
        *,
        rows: int | None = None,
        batch_tokens: int | None = None,
        checkpoint_every: int | str | None = "auto",
        resume: bool = True,
        check_every: int | str | None = "auto",
        converge: float | None = None,
        max_vectors_factor: float | None = None,
        max_tokens: int | None = None,
        window_docs: int | None = None,
        dist: DistContext | None = None,
    ) -> None:
        self.model, self.tok, self.adapter, self.hp = model, tok, adapter, hp.resolve(adapter, model)
        if stats_dir is None and "FASTEDIT_STATS_DIR" not in os.environ:
            # an EasyEdit hparams file names its statistics folder
            stats_dir = getattr(hp, "stats_dir", None)
        self.stats_dir = Path(stats_dir) if stats_dir is not None else default_stats_dir()
        self.source = source or os.environ.get("FASTEDIT_STATS_SOURCE")
        self.model_name = model_name or model.config._name_or_path or type(model).__name__
        self.max_len = max_len
        self.progress = progress
        self.options = dict(
            rows=rows, batch_tokens=batch_tokens, window_docs=window_docs, check_every=check_every,
            converge=converge, resume=resume,
        )
        self.checkpoint_every = checkpoint_every
        self.max_vectors_factor = max_vectors_factor
        self.max_tokens = max_tokens
        self.dist = dist
        self.report: CollectionReport | None = None
        self._moments: dict[int, torch.Tensor] = {}
        self.loaded_from: dict[int, Path] = {}

    # ------------------------------------------------------------------ public
    def layer_name(self, layer: int) -> str:
        return self.hp.rewrite_module_tmp.format(layer)

    def paths(self, layer: int) -> list[Path]:
        hp = self.hp
        return stats_paths(
            self.stats_dir, self.model_name, hp.mom2_dataset, self.layer_name(layer), hp.mom2_dtype, hp.mom2_n_samples
        )

    def second_moment(self, layer: int) -> torch.Tensor:
        """C (d_ff, d_ff), float32, on the device of the layer's weight."""
        if layer not in self._moments:
            self.ensure([layer])
        return self._moments[layer]

    def ensure(self, layers: Iterable[int]) -> None:
        """Load or compute C for every layer in ``layers`` (missing ones in one pass)."""
        dist = self.dist or current()
        todo = []
        for layer in layers:
            if layer in self._moments:
                continue
            stat = self._load(layer)
            if stat is None:
                todo.append(layer)
            else:
                self._keep(layer, stat)
        # every rank must take part in the same pass: rank 0's view of the caches decides
        todo = dist.broadcast_object(todo)
        for layer in todo:
            self._moments.pop(layer, None)
            self.loaded_from.pop(layer, None)
        if todo:
            self._compute(todo, dist)

    # ------------------------------------------------------------------ internals
    def _expected_width(self, layer: int) -> int:
        return self.adapter.key_size(self.model, layer)

    def _check(self, layer: int, stat: SecondMoment) -> None:
        name, want = self.layer_name(layer), self._expected_width(layer)
        got = stat.mom2.shape[0]
        if got != want:
            raise StatsMismatchError(
                f"{stat.path}: statistics of size {got}×{got} do not match {name}, whose keys have size {want}"
            )
        meta = stat.meta or {}
        if meta.get("layer") not in (None, name):
            raise StatsMismatchError(f"{stat.path}: statistics are for layer {meta['layer']!r}, not {name!r}")
        if meta.get("dtype") not in (None, self.hp.mom2_dtype):
            raise StatsMismatchError(f"{stat.path}: statistics were accumulated in {meta['dtype']}, not {self.hp.mom2_dtype}")
        fp = meta.get("model_fingerprint")
        if fp is not None and fp != model_fingerprint(self.model):
            raise StatsMismatchError(
                f"{stat.path}: statistics were computed for model {meta.get('model')!r} "
                f"(fingerprint {fp}), which is not this model ({self.model_name!r}, {model_fingerprint(self.model)})"
            )

    def _load(self, layer: int) -> SecondMoment | None:
        for path in self.paths(layer):
            if not path.exists():
                continue
            stat = load_second_moment(path)
            if stat.sample_size is not None and stat.sample_size != self.hp.mom2_n_samples:
                log.warning("%s: sample_size %s != mom2_n_samples %s, recomputing", path, stat.sample_size, self.hp.mom2_n_samples)
                continue
            self._check(layer, stat)
            check_second_moment(stat, self._expected_width(layer), self.hp.mom2_min_count)
            log.info("statistics for %s from %s", self.layer_name(layer), path)
            self.loaded_from[layer] = path
            return stat
        return None

    def _keep(self, layer: int, stat: SecondMoment) -> None:
        device = self.adapter.rewrite_weight(self.model, layer).device
        # The references divide the stored sum by the count and use C in float32.
        self._moments[layer] = stat.moment().float().to(device)

    def _compute(self, layers: list[int], dist: DistContext) -> None:
        hp = self.hp
        if self.source is None:
            tried = ", ".join(str(p) for layer in layers for p in self.paths(layer))
            raise StatsMissingError(
                f"no statistics cache for layer(s) {layers} (looked for {tried}) and no text source to compute "
                "them from: pass stats_source=PATH (a .jsonl/.txt file or folder; fastedit.bundled.WIKIPEDIA_SAMPLE "
                "is the Wikipedia sample that ships with fastedit) or a dataset name ('wikipedia', streamed through "
                "datasets), set FASTEDIT_STATS_SOURCE, or run `fastedit stats`"
            )
        source = open_source(self.source)
        layers = sorted(layers)
        names = [self.layer_name(layer) for layer in layers]
        dtype = getattr(torch, hp.mom2_dtype)
        widths = [self._expected_width(layer) for layer in layers]
        every = self.checkpoint_every
        if every == "auto":
            every = auto_checkpoint_every(widths, dtype)
        max_tokens = self.max_tokens
        if self.max_vectors_factor is not None:
            by_factor = int(math.ceil(self.max_vectors_factor * max(widths)))
            max_tokens = by_factor if max_tokens is None else min(max_tokens, by_factor)
        first = self.paths(layers[0])[0]
        out = collect(
            self.model, self.tok, self.adapter, names, source, hp.mom2_n_samples, dtype=dtype,
            max_len=self.max_len, progress=self.progress, checkpoint=first if every else None,
            checkpoint_every=every or None, max_tokens=max_tokens, dist=dist,
            config={"model": self.model_name}, desc=f"statistics, {len(names)} layer(s)", **self.options,
        )
        rep = self.report = out.report
        for layer, name in zip(layers, names):
            # refused before anything is written: a bad cache would be reused by every later edit
            check_second_moment(out.stats[name], self._expected_width(layer), hp.mom2_min_count)
        for layer, name in zip(layers, names):
            stat = out.stats[name]
            path = self.paths(layer)[0]
            meta = {
                "model": self.model_name,
                "model_fingerprint": model_fingerprint(self.model),
                "layer": name,
                "layers": names,
                "width": int(stat.mom2.shape[0]),
                "dtype": hp.mom2_dtype,
                "model_dtype": rep.model_dtype,
                "tokens": stat.count,
                "documents": rep.documents,
                "sample_size": hp.mom2_n_samples,
                "corpus": source.name,
                "max_len": rep.max_len,
                "rows_per_batch": rep.rows_per_batch,
                "stop_reason": rep.stop_reason,
                "convergence": [
                    {"tokens": p["tokens"], "rel_change": p["rel_change"].get(name)} for p in rep.curve
                ],
                "seconds": rep.seconds_total,
                "world_size": rep.world_size,
                "writer": "fastedit",
            }
            if dist.is_main:
                save_second_moment(path, stat, meta)
                log.info("statistics for %s written to %s (%d tokens)", name, path, stat.count)
            stat.path, stat.meta = path, meta
            self.loaded_from[layer] = path
            self._keep(layer, stat)
        # the caches are complete: the checkpoints of this pass (every rank's) can go
        dist.barrier()
        if out.checkpoint is not None:
            out.checkpoint.remove()
