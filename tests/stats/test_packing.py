"""Packing: documents share rows, never attention; each keeps the keys of its own forward pass."""

import pytest
import torch

from fastedit.models import get_adapter, random_model, record
from fastedit.stats.collect import collect
from fastedit.stats.packing import block_causal_mask, first_fit_decreasing, mask_kind, pack_documents
from fastedit.stats.sources import TextSource

# awkward lengths: 1, primes, exactly a row, a row minus one
LENGTHS = [7, 1, 23, 48, 5, 31, 47, 13, 2, 48, 19, 3]
ROW = 48
# eager attention that computes in float32 whatever the model's dtype (GPT-J: the scores; GPT-NeoX and
# Llama: the softmax), so float64 models get float32-level agreement there
FLOAT32_INSIDE = {("gptj", "eager"), ("gpt_neox", "eager"), ("llama", "eager")}


def _docs(vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in LENGTHS]


def test_first_fit_decreasing_places_every_document_once():
    rows = first_fit_decreasing(LENGTHS, ROW)
    assert sorted(i for r in rows for i in r) == list(range(len(LENGTHS)))
    assert all(sum(LENGTHS[i] for i in r) <= ROW for r in rows)
    # the lower bound is ceil(sum / ROW) = 5 rows; FFD gets there on this set
    assert len(rows) == -(-sum(LENGTHS) // ROW)
    assert rows == first_fit_decreasing(LENGTHS, ROW)
    with pytest.raises(ValueError, match="does not fit"):
        first_fit_decreasing([ROW + 1], ROW)


def test_batches_positions_and_mask():
    docs = _docs(100)
    batches = pack_documents(docs, ROW, rows_per_batch=2, pad_id=0)
    assert sum(b.tokens for b in batches) == sum(LENGTHS)
    assert sum(b.documents for b in batches) == len(LENGTHS)
    for b in batches:
        assert b.input_ids.shape[1] == ROW and b.input_ids.shape[0] <= 2
        pos = b.position_ids()
        seg = b.segments
        for r in range(seg.shape[0]):
            for s in seg[r].unique().tolist():
                where = (seg[r] == s).nonzero().flatten()
                assert torch.equal(pos[r, where], torch.arange(len(where)))  # restart at 0, contiguous
        m = block_causal_mask(seg, "bool", torch.float32)[:, 0]
        # a query sees exactly the earlier-or-same positions of its own document
        i, j = 10, 3
        for r in range(seg.shape[0]):
            assert bool(m[r, i, j]) == bool(seg[r, i] == seg[r, j] and j <= i)
        add = block_causal_mask(seg, "additive", torch.float32)
        assert torch.equal(add == 0, m[:, None])
    # the single-document rows (48-token documents) come in batches of their own
    assert batches[0].single and not batches[-1].single


def _keys_alone(model, name, doc):
    with record(model, inputs=[name]) as rec:
        model(input_ids=torch.tensor([doc]), use_cache=False)
    return rec.inputs[name][0]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama"])
def test_packed_keys_equal_each_documents_own(arch, dtype, tol, attn):
    """Keys read from packed rows (4D block-diagonal mask, restarting positions; GPT-2's learned
    positions included) equal those of each document run alone, unpadded."""
    model = random_model(arch, dtype=dtype)
    model.set_attn_implementation(attn)
    name = get_adapter(model).rewrite_module_tmp.format(2)
    docs = _docs(model.config.vocab_size)
    kind = mask_kind(model)
    worst = 0.0
    for b in pack_documents(docs, ROW, rows_per_batch=3, pad_id=0):
        kw = {}
        if not b.single:
            kw = {"attention_mask": block_causal_mask(b.segments, kind, dtype), "position_ids": b.position_ids()}
        with record(model, inputs=[name]) as rec:
            model(input_ids=b.input_ids, use_cache=False, **kw)
        keys = rec.inputs[name]
        for r in range(b.input_ids.shape[0]):
            for s in b.segments[r].unique().tolist():
                if s == 0:
                    continue
                where = (b.segments[r] == s).nonzero().flatten()
                doc = b.input_ids[r, where].tolist()
                want = _keys_alone(model, name, doc)
                err = float((keys[r, where] - want).norm() / want.norm())
                worst = max(worst, err)
    if dtype == torch.float64 and (arch, attn) in FLOAT32_INSIDE:
        tol = 1e-6
    assert worst <= tol, f"{arch} {dtype} {attn}: largest relative key error {worst:.2e} > {tol:.0e}"


def test_collect_truncates_like_the_reference(gpt2_tok):
    """Documents longer than max_len keep their first max_len tokens (the reference's
    encode(truncation=True, max_length=...)); the sums are those of the per-document passes."""
    model = random_model("llama", dtype=torch.float64)
    name = get_adapter(model).rewrite_module_tmp.format(1)
    texts = ["One two three four five six seven eight nine ten. " * 4, "Short.", "A b c d e f g h i j k l m n o p q."]
    out = collect(model, gpt2_tok, None, [name], TextSource("t", texts), None, dtype=torch.float64, max_len=16,
                  progress=False)
    want, count = 0, 0
    for t in texts:
        ids = gpt2_tok.encode(t, truncation=True, max_length=16)
        k = _keys_alone(model, name, ids)
        want = want + k.T @ k
        count += len(ids)
    got = out.stats[name]
    assert got.count == count == out.report.tokens
    assert float((got.mom2 - want).norm() / want.norm()) < 1e-12
    assert out.report.padding + out.report.tokens == out.report.rows * 16
