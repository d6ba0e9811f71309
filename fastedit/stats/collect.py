"""Collecting Σ k kᵀ for all edited layers in one forward pass over packed documents.

The reference runs the model once per layer (float32, padded batches of whole documents). Here:

* **one pass, early exit**: a pre-hook on every edited projection adds its input to that layer's sum
  as the pass goes by, and the hook of the last one ends the pass (nothing above it, not even that
  projection, is computed);
* **packing**: documents (truncated to ``max_len`` tokens as the reference truncates them) are packed
  whole into full rows of ``max_len`` tokens with a block-diagonal causal mask and restarting position
  ids (:mod:`.packing`), so attention never crosses a document and almost nothing is spent on padding;
* **precision**: the forward pass runs in the model's dtype; the sums accumulate in ``dtype`` (float32
  or float64) through :func:`fastedit.ops.second_moment_accumulate_` (symmetric rank-k update: one
  triangle of blocks);
* **resumable**: every ``checkpoint_every`` tokens the sums and the cursor are written (:mod:`.checkpoint`);
  a killed pass resumes from there and ends with the same sums as an uninterrupted one (same batches,
  same order);
* **distributed**: under torchrun every rank takes every ``world``-th window of documents; the sums are
  all-reduced once, at the end, in float64 (:mod:`.distributed`);
* **fewer samples when they suffice**: every ``check_every`` tokens the relative Frobenius change of
  each layer's C = Σ k kᵀ / n since the previous check is recorded (the convergence curve); the pass
  can stop once every change is below ``converge``, or after ``max_tokens`` key vectors.

Documents are read in windows (``window_docs`` of the references' shuffled sample at a time), tokenised
in a background thread while the model works on the previous window.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from .. import ops
from ..models.adapters import ModelAdapter, get_adapter, get_module
from ..models.tracing import StopForward
from ..profiling import region
from .cache import SecondMoment, StatsMismatchError, model_fingerprint
from .checkpoint import CheckpointFiles, PartialState, checkpoint_files
from .distributed import DistContext, current
from .packing import PackedBatch, block_causal_mask, mask_kind, pack_documents
from .sources import TextSource

log = logging.getLogger(__name__)

__all__ = [
    "Collection",
    "CollectionReport",
    "collect",
    "collect_second_moments",
    "default_window_docs",
    "DEFAULT_BATCH_TOKENS",
    "auto_checkpoint_every",
]

DEFAULT_BATCH_TOKENS = 8192  # tokens per forward pass (rows = this // max_len, at least 1)
CHECK_EVERY_D_FF = 16  # default check interval, in multiples of the widest key


def default_window_docs(n_docs: int) -> int:
    """Documents per window: about 64 windows for small samples (so ranks share them out evenly),
    1024 documents for large ones; at least 8."""
    return max(8, min(1024, math.ceil(n_docs / 64)))


def auto_checkpoint_every(widths: Sequence[int], dtype: torch.dtype) -> int:
    """A checkpoint interval that keeps writing cheap next to computing: 2,000 tokens per MB of sums,
    at least a million (SmolLM2, 5 layers: 1M tokens; GPT-J, 6 layers in float32: 12M)."""
    mb = sum(w * w for w in widths) * torch.finfo(dtype).bits / 8 / 2**20
    return int(max(1_000_000, 2000 * mb))


@dataclass
class CollectionReport:
    """What a pass did. ``tokens`` counts key vectors over all ranks (the resumed part included);
    ``seconds`` and ``tokens_per_s`` are this run's (``seconds_total`` adds earlier runs that a resume
    continued). ``curve``: one point per check, ``{"tokens": n, "rel_change": {layer: x or None}}``."""

    tokens: int
    documents: int
    rows: int
    padding: int
    seconds: float
    seconds_total: float
    tokens_this_run: int
    tokens_per_s: float
    stop_reason: str  # "corpus", "converged" or "max_tokens"
    curve: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: dict[str, Any] | None = None
    world_size: int = 1
    layers: list[str] = field(default_factory=list)
    dtype: str = "float32"
    model_dtype: str = "float32"
    max_len: int = 0
    rows_per_batch: int = 0
    corpus: str = ""
    checkpoints: list[str] = field(default_factory=list)

    @property
    def fill(self) -> float:
        """Fraction of the computed positions that were real tokens (1 − padding share)."""
        total = self.tokens + self.padding
        return self.tokens / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fill"] = self.fill
        return d


@dataclass
class Collection:
    """The sums (name → :class:`SecondMoment`, ``mom2`` on the CPU) and the report of the pass."""

    stats: dict[str, SecondMoment]
    report: CollectionReport
    checkpoint: CheckpointFiles | None = None


def _key_width(module: torch.nn.Module, weight_is_in_out: bool) -> int:
    w = module.weight
    return int(w.shape[0] if weight_is_in_out else w.shape[1])


def _sym_fro2(lower: torch.Tensor, panel: int = 2048) -> float:
    """‖A‖_F² of the symmetric matrix whose lower triangle (diagonal included) ``lower`` holds,
    by row panels in float64 (no d × d temporary)."""
    d = lower.shape[0]
    total = 0.0
    for s in range(0, d, panel):
        e = min(s + panel, d)
        left = lower[s:e, :s].double()
        diag = lower[s:e, s:e].double()
        total += 2.0 * float(left.square().sum()) + 2.0 * float(torch.tril(diag, -1).square().sum())
        total += float(torch.diagonal(diag).square().sum())
    return total


def _rel_change(acc: torch.Tensor, n: int, snap: torch.Tensor, n_prev: int, panel: int = 2048) -> float:
    """‖acc/n − snap/n_prev‖_F / ‖acc/n‖_F over the symmetric matrices of the two lower triangles."""
    d = acc.shape[0]
    diff2 = 0.0
    for s in range(0, d, panel):
        e = min(s + panel, d)
        blk = acc[s:e, :e].double() / n - snap[s:e, :e].double() / n_prev
        diff2 += 2.0 * float(blk[:, :s].square().sum()) + 2.0 * float(torch.tril(blk[:, s:e], -1).square().sum())
        diff2 += float(torch.diagonal(blk[:, s:e]).square().sum())
    norm2 = _sym_fro2(acc, panel) / (n * n)
    return math.sqrt(diff2 / norm2) if norm2 > 0 else float("inf")


@torch.no_grad()
def collect(
    model,
    tok,
    adapter: ModelAdapter | None,
    layer_names: Sequence[str],
    source: TextSource,
    n_samples: int | None,
    dtype: torch.dtype = torch.float32,
    max_len: int | None = None,
    batch_tokens: int | None = None,
    progress: bool = True,
    *,
    rows: int | None = None,
    window_docs: int | None = None,
    check_every: int | str | None = "auto",
    converge: float | None = None,
    max_tokens: int | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    dist: DistContext | None = None,
    config: dict[str, Any] | None = None,
    desc: str = "statistics",
) -> Collection:
    """Σ k kᵀ and the token count for the inputs of ``layer_names`` (the edited projections) over the
    references' sample of ``n_samples`` documents of ``source`` (all when None), in one pass. The
    documents are texts, or lists of token ids (pre-tokenised; truncated to ``max_len`` here).

    ``max_len``: truncate each document to this many tokens, also the row length (default: the
    model's context, the references' rule). ``rows`` rows per forward pass (default
    ``batch_tokens // max_len``, ``batch_tokens`` defaulting to 8192). ``check_every``: tokens
    between convergence checks ("auto": 16 × d_ff; None or 0: no curve). ``converge``: stop at the
    first check where every layer's relative change is below it. ``max_tokens``: stop once this many
    key vectors are in. ``checkpoint``: the cache path beside which checkpoints go (see
    :mod:`.checkpoint`), written every ``checkpoint_every`` tokens; ``resume`` continues from one.
    ``dist``: the process group (default: the initialised one, if any). ``config``: extra fields that
    a checkpoint must match (the model name, say).
    """
    layer_names = list(layer_names)
    if not layer_names:
        raise ValueError("no layers to collect statistics for")
    run = _Pass(model, tok, adapter or get_adapter(model), layer_names, source, dist or current(), desc)
    run.plan(n_samples, dtype, max_len, batch_tokens, rows, window_docs, check_every, converge, max_tokens,
             checkpoint, checkpoint_every, config)
    run.start(resume, progress)
    seconds = run.run()
    return run.result(seconds, n_samples)


class _Pass:
    """The state of one :func:`collect` pass: where each layer's sum lives, the batch and check
    schedule, the resumable cursor (``state``), the sums (``accs``) and the last check's snapshot."""

    def __init__(self, model, tok, adapter: ModelAdapter, layer_names: list[str], source: TextSource,
                 dist: DistContext, desc: str) -> None:
        self.model, self.tok, self.adapter, self.layer_names, self.source = model, tok, adapter, layer_names, source
        self.dist, self.desc = dist, desc
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        missing = [n for n in layer_names if n not in order]
        if missing:
            raise LookupError(f"model has no module(s) {missing}")
        self.last = max(layer_names, key=order.__getitem__)
        self.modules = {n: get_module(model, n) for n in layer_names}
        self.widths = {n: _key_width(m, adapter.weight_is_in_out) for n, m in self.modules.items()}
        emb = model.get_input_embeddings().weight
        self.in_device, self.model_dtype = emb.device, emb.dtype
        # each layer's sums live where its weight does (several GPUs under a device_map); weights offloaded
        # by accelerate show the meta device, their keys are summed where the pass starts
        self.acc_device = {n: (m.weight.device if m.weight.device.type != "meta" else self.in_device)
                           for n, m in self.modules.items()}
        self.kind = mask_kind(model)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        self.pad_id = min(int(pad_id), emb.shape[0] - 1)
        self.valid_by_device: dict[torch.device, torch.Tensor] = {}
        self.seen = {"windows": 0, "tokens": 0}
        self.stop_reason = "corpus"

    # ------------------------------------------------------------------ setup
    def plan(self, n_samples, dtype, max_len, batch_tokens, rows, window_docs, check_every, converge, max_tokens,
             checkpoint, checkpoint_every, config) -> None:
        """Rows, windows, the check and checkpoint cadence, and the configuration a checkpoint must match."""
        dist = self.dist
        limit = self.adapter.max_positions(self.model)
        self.max_len = int(max_len or limit)
        if self.max_len > limit:
            raise ValueError(f"max_len {self.max_len} exceeds the model's {limit} positions")
        self.rows_per_batch = int(rows or max(1, (batch_tokens or DEFAULT_BATCH_TOKENS) // self.max_len))
        idx = self.source.sample_indices(n_samples)
        wdocs = int(window_docs or default_window_docs(len(idx)))
        self.windows = [idx[s : s + wdocs] for s in range(0, len(idx), wdocs)]
        self.mine = list(range(dist.rank, len(self.windows), dist.world))
        tokens_per_step = self.rows_per_batch * self.max_len * dist.world
        if check_every == "auto":
            check_every = CHECK_EVERY_D_FF * max(self.widths.values())
        self.check_steps = max(1, round(int(check_every) / tokens_per_step)) if check_every else None
        if converge is not None and self.check_steps is None:
            raise ValueError("converge needs check_every (the interval between the compared checkpoints)")
        self.converge = converge
        self.files = checkpoint_files(checkpoint, dist.rank, dist.world) if checkpoint is not None else None
        self.ckpt_steps = None
        if self.files is not None and checkpoint_every:
            unit = self.check_steps or 1
            self.ckpt_steps = unit * max(1, math.ceil(int(checkpoint_every) / tokens_per_step / unit))
        self.sync_steps = self.check_steps or self.ckpt_steps
        self.budget = math.ceil(max_tokens / dist.world) if max_tokens else None
        # what fixes the sums (the stopping rules, converge and max_tokens, may change on resume)
        self.cfg = {
            "layers": self.layer_names,
            "dtype": str(dtype).replace("torch.", ""),
            "model_dtype": str(self.model_dtype).replace("torch.", ""),
            "model_fingerprint": model_fingerprint(self.model),
            "tokenizer": f"{type(self.tok).__name__}:{getattr(self.tok, 'name_or_path', '')}:{len(self.tok)}",
            "corpus": self.source.name,
            "corpus_documents": len(self.source),
            "n_samples": n_samples,
            "max_len": self.max_len,
            "rows_per_batch": self.rows_per_batch,
            "window_docs": wdocs,
            "rank": dist.rank,
            "world": dist.world,
            "check_steps": self.check_steps,
            "checkpoint_steps": self.ckpt_steps,
            **(config or {}),
        }
        self.dtype = dtype

    def start(self, resume: bool, progress: bool) -> None:
        """The sums and cursor: fresh, or from the newest checkpoint every rank holds."""
        files = self.files
        state = _resume_state(files, self.cfg, self.layer_names, self.acc_device, self.dist) \
            if (files is not None and resume) else None
        if state is None:
            self.accs = {n: torch.zeros((w, w), dtype=self.dtype, device=self.acc_device[n]) for n, w in self.widths.items()}
            state = PartialState(config=self.cfg, step=0, window=0, batch=0, count=0, documents=0, rows=0, padding=0,
                                 seconds=0.0)
        else:
            self.accs = state.accs
            log.info("resuming statistics from %s: %d tokens, step %d", files.current.parent, state.count, state.step)
        self.state = state
        self.resumed = None if state.step == 0 else {"step": state.step, "tokens": None, "seconds": state.seconds}
        self.snaps: dict[str, torch.Tensor] | None = None
        if self.check_steps is not None and state.curve:
            self.snaps = {n: a.clone() for n, a in self.accs.items()}  # a checkpoint is always taken at a check
        self.show = progress and self.dist.is_main
        self.count_start, self.seconds_before, self.last_sync = state.count, state.seconds, state.step
        self.done = state.window >= len(self.mine) or (self.budget is not None and state.count >= self.budget)

    # ------------------------------------------------------------------ the pass
    def _hook(self, name: str):
        def hook(_mod, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            acc = self.accs[name]
            if x.device != acc.device:  # device_map: keys live where their layer does
                x = x.to(acc.device)
            v = self.valid_by_device.get(acc.device)
            if v is None:
                v = self.valid_by_device[acc.device] = next(iter(self.valid_by_device.values())).to(acc.device)
            ops.second_moment_accumulate_(acc, x, v)
            if name == self.last:
                raise StopForward

        return hook

    def _prepare(self, wpos: int) -> list[PackedBatch]:
        texts = [self.source.docs[i] for i in self.windows[self.mine[wpos]]]
        if texts and not isinstance(texts[0], str):  # already token ids
            ids = [list(t[: self.max_len]) for t in texts]
        else:
            with region("stats/tokenize"):
                ids = self.tok(texts, truncation=True, max_length=self.max_len, add_special_tokens=True)["input_ids"]
        return pack_documents(ids, self.max_len, self.rows_per_batch, self.pad_id)

    def _batches(self, pool: ThreadPoolExecutor, wpos0: int, b0: int):
        """(window position, batch index, batch) from the cursor on; the next window is tokenised in
        ``pool`` while this one runs."""
        n = len(self.mine)
        fut = pool.submit(self._prepare, wpos0) if wpos0 < n else None
        for wpos in range(wpos0, n):
            batches = fut.result()
            fut = pool.submit(self._prepare, wpos + 1) if wpos + 1 < n else None
            self.seen["windows"] += 1
            self.seen["tokens"] += sum(b.tokens for b in batches)
            for b in range(b0 if wpos == wpos0 else 0, len(batches)):
                yield wpos, b, batches[b]

    def _forward(self, wpos: int, b: int, batch: PackedBatch) -> None:
        """One packed batch through the model up to the last hooked projection; the cursor moves on."""
        dev, state = self.in_device, self.state
        self.valid_by_device.clear()
        self.valid_by_device[dev] = batch.valid.to(dev, non_blocking=True)
        ids = batch.input_ids.to(dev, non_blocking=True)
        kwargs = {}
        if not batch.single:
            seg = batch.segments.to(dev, non_blocking=True)
            kwargs["attention_mask"] = block_causal_mask(seg, self.kind, self.model_dtype)
            kwargs["position_ids"] = batch.position_ids().to(dev, non_blocking=True)
        with region("stats/forward"):
            try:
                self.model(input_ids=ids, use_cache=False, **kwargs)
            except StopForward:
                pass
        state.step += 1
        state.window, state.batch = wpos, b + 1
        state.count += batch.tokens
        state.documents += batch.documents
        state.rows += batch.input_ids.shape[0]
        state.padding += batch.padding
        if self.show:
            if self.seen["windows"]:
                est = self.seen["tokens"] / self.seen["windows"] * len(self.mine)
                self.bar.total = int(min(est, self.budget) if self.budget else est)
            self.bar.update(batch.tokens)
        if self.budget is not None and state.count >= self.budget:
            self.done, self.stop_reason = True, "max_tokens"

    def run(self) -> float:
        """The pass from the cursor to the end (corpus, budget, convergence); returns its seconds."""
        state, dist = self.state, self.dist
        self.bar = tqdm(total=None, initial=state.count, unit="tok", unit_scale=True, disable=not self.show,
                        desc=self.desc, smoothing=0.1)
        handles = [self.modules[n].register_forward_pre_hook(self._hook(n), with_kwargs=True) for n in self.layer_names]
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastedit-tokenize")
        self.t0 = time.perf_counter()
        it = self._batches(pool, state.window, state.batch)
        try:
            while True:
                item = None if self.done else next(it, None)
                if item is not None:
                    self._forward(*item)
                    if self.sync_steps is not None and state.step % self.sync_steps == 0 and self._sync(self.done):
                        break
                    continue
                # nothing left on this rank
                if not self.done:
                    self.done = True
                    state.window, state.batch = len(self.mine), 0
                if not dist.active:
                    if self.check_steps is not None and state.step != self.last_sync:
                        self._sync(True)
                    break
                if self.sync_steps is None:
                    break
                # an idle rank still takes part in every check until all ranks are done
                state.step = (self.last_sync // self.sync_steps + 1) * self.sync_steps
                if self._sync(True):
                    break
        finally:
            for h in handles:
                h.remove()
            pool.shutdown(wait=True, cancel_futures=True)
            self.bar.close()
        return time.perf_counter() - self.t0

    # ------------------------------------------------------------------ checks
    def _sync(self, all_local_done: bool) -> bool:
        """A check point: curve, convergence, checkpoint. Returns whether the pass ends here."""
        state = self.state
        self.last_sync = state.step
        gathered = self.dist.all_gather_object((state.count, bool(all_local_done),
                                                [self._changes().get(n, 0.0) for n in self.layer_names]))
        total = sum(g[0] for g in gathered)
        all_done = all(g[1] for g in gathered)
        stop = all_done
        if self.check_steps is not None and state.curve and total == state.curve[-1]["tokens"]:
            pass  # nothing new anywhere (idle ranks waiting for the last one): no point to record
        elif self.check_steps is not None:
            worst = {n: max(g[2][i] for g in gathered) for i, n in enumerate(self.layer_names)}
            finite = self._record_check(total, worst)
            if self.converge is not None and len(finite) == len(worst) and max(finite) < self.converge and not all_done:
                self.stop_reason, stop = "converged", True
        if not stop and self.ckpt_steps is not None and state.step % self.ckpt_steps == 0:
            with region("stats/checkpoint"):
                state.accs = self.accs
                state.seconds = self.seconds_before + (time.perf_counter() - self.t0)
                self.files.save(state, self.layer_names)
        return stop

    def _changes(self) -> dict[str, float]:
        """Each layer's relative change of C since the previous check (inf before the first)."""
        state, changes = self.state, {}
        if self.check_steps is not None:
            for n, acc in self.accs.items():
                if self.snaps is None:
                    changes[n] = math.inf
                elif state.count == state.last_check_count:
                    changes[n] = 0.0
                else:
                    changes[n] = _rel_change(acc, state.count, self.snaps[n], state.last_check_count)
        return changes

    def _record_check(self, total: int, worst: dict[str, float]) -> list[float]:
        """Append a point to the convergence curve and snapshot the sums; returns the finite changes."""
        self.state.curve.append({"tokens": total, "rel_change": {n: (None if math.isinf(v) else v)
                                                                 for n, v in worst.items()}})
        finite = [v for v in worst.values() if not math.isinf(v)]
        if finite and self.show:
            self.bar.set_postfix_str(f"ΔC {max(finite):.2e}", refresh=False)
        if self.snaps is None:
            self.snaps = {n: a.clone() for n, a in self.accs.items()}
        else:
            for n, a in self.accs.items():
                self.snaps[n].copy_(a)
        self.state.last_check_count = self.state.count
        return finite

    # ------------------------------------------------------------------ the result
    def result(self, seconds: float, n_samples: int | None) -> Collection:
        """The one reduction of the sums (float64, so the result does not depend on the ranks' order),
        the report, the statistics on the CPU."""
        state, dist, accs = self.state, self.dist, self.accs
        counts = torch.tensor(
            [state.count, state.documents, state.rows, state.padding, state.count - self.count_start],
            dtype=torch.float64,
        )
        dist.all_reduce_(counts)
        for n, acc in accs.items():
            ops.symmetrize_(acc)
            if dist.active:
                wide = acc.to(torch.float64)
                dist.all_reduce_(wide)
                accs[n] = wide.to(self.dtype)
        total, documents, n_rows, padding, this_run = (int(v) for v in counts.tolist())
        reasons = dist.all_gather_object(self.stop_reason)
        stop_reason = "converged" if "converged" in reasons else ("max_tokens" if "max_tokens" in reasons else "corpus")
        if total == 0:
            raise ValueError(f"statistics source {self.source.name} gave no tokens")
        if self.resumed is not None:
            self.resumed["tokens"] = total - this_run
        files = self.files
        report = CollectionReport(
            tokens=total, documents=documents, rows=n_rows, padding=padding, seconds=seconds,
            seconds_total=self.seconds_before + seconds, tokens_this_run=this_run,
            tokens_per_s=this_run / max(seconds, 1e-9), stop_reason=stop_reason, curve=state.curve,
            resumed_from=self.resumed, world_size=dist.world, layers=self.layer_names, dtype=self.cfg["dtype"],
            model_dtype=self.cfg["model_dtype"], max_len=self.max_len, rows_per_batch=self.rows_per_batch,
            corpus=self.source.name, checkpoints=[str(p) for p in files.existing()] if files is not None else [],
        )
        log.info(
            "statistics: %d tokens from %d documents in %.1f s (%.0f tokens/s, %.1f%% of computed positions real), stop: %s",
            total, documents, seconds, report.tokens_per_s, 100 * report.fill, stop_reason,
        )
        stats = {
            n: SecondMoment(mom2=acc.cpu(), count=total, sample_size=n_samples, meta={"documents": documents})
            for n, acc in accs.items()
        }
        return Collection(stats=stats, report=report, checkpoint=files)


def _resume_state(
    files: CheckpointFiles, cfg: dict[str, Any], layers: list[str], acc_device, dist: DistContext
) -> PartialState | None:
    """The newest checkpoint every rank holds (ranks may be one checkpoint apart when killed), or None."""
    steps: dict[int, Path] = {}
    error = None
    for path in files.existing():
        try:
            st = files.check(path, cfg)
        except StatsMismatchError as e:
            error = str(e)
            break
        except Exception as e:  # unreadable (should not happen: files are renamed into place)
            log.warning("ignoring unreadable checkpoint %s (%s)", path, e)
            continue
        steps[int(st["step"])] = path
    gathered = dist.all_gather_object((sorted(steps), error))
    errors = [e for _, e in gathered if e]
    if errors:
        raise StatsMismatchError(errors[0])
    common = set(gathered[0][0])
    for s, _ in gathered[1:]:
        common &= set(s)
    if not common:
        if any(s for s, _ in gathered):
            log.warning("checkpoints of the ranks do not meet at a common step: starting afresh")
        return None
    step = max(common)
    return files.load(steps[step], layers, acc_device)


def collect_second_moments(
    model,
    tok,
    adapter: ModelAdapter,
    layer_names: Sequence[str],
    source: TextSource,
    n_samples: int | None,
    dtype: torch.dtype = torch.float32,
    max_len: int | None = None,
    batch_tokens: int | None = None,
    progress: bool = True,
    **options,
) -> dict[str, SecondMoment]:
    """:func:`collect`, returning only name → :class:`SecondMoment` (``mom2`` in ``dtype`` on the CPU)."""
    return collect(
        model, tok, adapter, layer_names, source, n_samples, dtype=dtype, max_len=max_len, batch_tokens=batch_tokens,
        progress=progress, **options,
    ).stats
