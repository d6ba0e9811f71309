"""Collecting Σ k kᵀ for several edited layers in one forward pass.

The reference runs the whole model once per layer (float32, padded batches). Here every requested
layer's key is read by a hook in the same pass, and the pass stops right after the last of them:
nothing above the highest edited layer is computed. Each document is truncated to the model's
context length as in the reference (``encode(text, truncation=True, max_length=...)``), documents are
sorted by length and batched up to ``batch_tokens`` padded tokens, and only non-padding tokens count.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .. import ops
from ..models.adapters import ModelAdapter
from ..models.tracing import record
from ..profiling import region
from .cache import SecondMoment
from .sources import TextSource

log = logging.getLogger(__name__)

__all__ = ["collect_second_moments"]


@torch.no_grad()
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
) -> dict[str, SecondMoment]:
    """Σ k kᵀ and token counts for the inputs of ``layer_names`` (the edited projections), over the
    reference's sample of ``n_samples`` documents of ``source``. Returns name → SecondMoment with
    ``mom2`` in ``dtype`` on the CPU."""
    device = next(model.parameters()).device
    max_len = max_len or adapter.max_positions(model)
    batch_tokens = batch_tokens or 3 * max_len
    order = {name: i for i, name in enumerate(n for n, _ in model.named_modules())}
    missing = [n for n in layer_names if n not in order]
    if missing:
        raise LookupError(f"model has no module(s) {missing}")
    last = max(layer_names, key=order.__getitem__)

    idx = source.sample_indices(n_samples)
    docs = []
    with region("stats/tokenize"):
        for i in idx:
            ids = tok.encode(source.docs[i], truncation=True, max_length=max_len)
            if ids:
                docs.append(ids)
    docs.sort(key=len, reverse=True)
    batches, cur, width = [], [], 0
    for ids in docs:
        if cur and width * (len(cur) + 1) > batch_tokens:
            batches.append(cur)
            cur = []
        if not cur:
            width = len(ids)
        cur.append(ids)
    if cur:
        batches.append(cur)

    accs: dict[str, torch.Tensor] = {}
    count = 0
    total = sum(len(d) for d in docs)
    bar = tqdm(total=total, unit="tok", unit_scale=True, disable=not progress, desc="statistics")
    t0 = time.perf_counter()
    for batch in batches:
        w = len(batch[0])
        ids = torch.full((len(batch), w), tok.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(batch), w), dtype=torch.long)
        for r, d in enumerate(batch):
            ids[r, : len(d)] = torch.tensor(d)
            mask[r, : len(d)] = 1
        ids, mask = ids.to(device), mask.to(device)
        valid = mask.bool()
        with region("stats/forward"):
            with record(model, inputs=list(layer_names), stop_after=last) as rec:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
        with region("stats/accumulate"):
            for name in layer_names:
                x = rec.inputs[name]  # (batch, seq, d_ff)
                if name not in accs:
                    accs[name] = torch.zeros((x.shape[-1], x.shape[-1]), dtype=dtype, device=device)
                # lower triangle only until the end (symmetric rank-k update)
                ops.second_moment_accumulate_(accs[name], x, valid)
        n_tok = int(valid.sum())
        count += n_tok
        bar.update(n_tok)
    bar.close()
    for acc in accs.values():
        ops.symmetrize_(acc)
    secs = time.perf_counter() - t0
    log.info("statistics: %d tokens from %d documents in %.1f s (%.0f tokens/s)", count, len(docs), secs, count / max(secs, 1e-9))
    if count == 0:
        raise ValueError(f"statistics source {source.name} gave no tokens")
    return {
        name: SecondMoment(mom2=acc.cpu(), count=count, sample_size=n_samples, meta={"documents": len(docs)})
        for name, acc in accs.items()
    }
