"""The references' procedure for the statistics, written out plainly: the baseline of tests and benchmarks.

kmeng01's ``layer_stats`` computes one layer per call. For each layer it tokenises the sample again
(each document truncated to the context length), takes the documents in groups of 100 in sample order,
sorts each group by length and cuts it into padded batches of at most ``batch_tokens`` (3 × the context
length) tokens, runs the model on each batch, keeps the layer's inputs at the non-padding positions,
casts them to the accumulation dtype and adds ``mom2 += aᵀ a`` (the full product). Its trace hook can
end the pass after the layer (``stop=True`` here, as ``nethook.Trace(stop=True)`` does); by default the
whole model runs, as the issue describing the reference's cost puts it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..models.tracing import record
from .cache import SecondMoment
from .sources import TextSource

__all__ = ["reference_second_moments", "reference_batches"]

GROUP = 100  # documents per DataLoader batch in the reference (batch_size=100)


def reference_batches(docs: Sequence[Sequence[int]], batch_tokens: int) -> list[list[Sequence[int]]]:
    """The reference's ``length_collation``: per group of 100 documents, longest first, batches whose
    padded size (width × rows) stays within ``batch_tokens`` (a single longer document goes alone)."""
    out = []
    for g in range(0, len(docs), GROUP):
        items = sorted(docs[g : g + GROUP], key=len, reverse=True)
        batch, width = [], 0
        for d in items:
            if len(d) == 0:
                break
            if width * (len(batch) + 1) > batch_tokens:
                out.append(batch)
                batch, width = [], 0
            if not batch:
                width = len(d)
            batch.append(d)
        if batch:
            out.append(batch)
    return out


@torch.no_grad()
def reference_second_moments(
    model,
    tok,
    layer_names: Sequence[str],
    source: TextSource,
    n_samples: int | None,
    dtype: torch.dtype = torch.float32,
    max_len: int | None = None,
    batch_tokens: int | None = None,
    stop: bool = False,
    progress: bool = False,
) -> dict[str, SecondMoment]:
    """One pass per layer of ``layer_names`` over the references' sample of ``source``, as kmeng01's
    ``layer_stats`` makes it. Returns name → :class:`SecondMoment` (``mom2`` full, in ``dtype``, CPU)."""
    from ..models.adapters import get_adapter

    device = model.get_input_embeddings().weight.device
    max_len = int(max_len or get_adapter(model).max_positions(model))
    batch_tokens = int(batch_tokens or 3 * max_len)
    idx = source.sample_indices(n_samples)
    out = {}
    for name in layer_names:
        # the reference tokenises inside its DataLoader, once per layer pass
        docs = [
            tok.encode(d, truncation=True, max_length=max_len) if isinstance(d, str) else list(d[:max_len])
            for d in (source.docs[i] for i in idx)
        ]
        mom2, count = None, 0
        batches = reference_batches(docs, batch_tokens)
        for batch in tqdm(batches, disable=not progress, desc=f"reference {name}"):
            w = len(batch[0])
            ids = torch.zeros((len(batch), w), dtype=torch.long)
            pos = torch.zeros((len(batch), w), dtype=torch.long)
            mask = torch.zeros((len(batch), w), dtype=torch.long)
            for r, d in enumerate(batch):
                ids[r, : len(d)] = torch.as_tensor(d)
                pos[r, : len(d)] = torch.arange(len(d))
                mask[r, : len(d)] = 1
            ids, pos, mask = ids.to(device), pos.to(device), mask.to(device)
            with record(model, inputs=[name], stop_after=name if stop else None) as rec:
                model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False)
            x = rec.inputs[name]
            feats = x.reshape(-1, x.shape[-1])[mask.reshape(-1).nonzero()[:, 0]].to(dtype)
            if mom2 is None:
                mom2 = feats.new_zeros((feats.shape[1], feats.shape[1]))
            mom2 += feats.t().mm(feats)
            count += feats.shape[0]
        if mom2 is None:
            raise ValueError(f"statistics source {source.name} gave no tokens")
        out[name] = SecondMoment(mom2=mom2.cpu(), count=count, sample_size=n_samples)
    return out
