"""The journal: exact undo, factors kept off the device in the precision undo needs."""

import pytest
import torch

from fastedit.engine.journal import Journal, factor_dtype
from fastedit.methods.base import LowRankUpdate
from fastedit.models import get_adapter

from .helpers import REQS, make, weights


def test_undo_is_exact(gpt2_tok, tmp_path, corpus):
    """Undoing the middle edit leaves the original weights plus the other two edits' updates."""
    sess = make(gpt2_tok, tmp_path, corpus, dtype=torch.float64)
    base = weights(sess)
    results = [sess.apply(r) for r in REQS]
    sess.undo(results[1].edit_id)
    ad = get_adapter(sess.model)
    for k, w in sess.edited_weights().items():
        want = base[k].clone()
        for res in (results[0], results[2]):
            for u in res.updates:
                if u.weight_name == k:
                    want += u.dense(ad, w).double()
        assert torch.allclose(w, want, rtol=0, atol=1e-12), k
    with pytest.raises(ValueError, match="already undone"):
        sess.undo(results[1].edit_id)
    with pytest.raises(KeyError, match="no edit #9"):
        sess.undo(9)
    for res in (results[0], results[2]):
        sess.undo(res.edit_id)
    for k, w in sess.edited_weights().items():
        assert torch.allclose(w, base[k], rtol=0, atol=1e-13)


def test_journal_keeps_factors_on_the_cpu_in_float32_unless_the_weight_is_float64(gpt2_tok, tmp_path, corpus):
    """MEMIT's factors come out of its float64 solve; the journal keeps float32 copies for a float32
    model (their rounding is far below the weight's own) and float64 ones for a float64 model."""
    for dtype, want in ((torch.float32, torch.float32), (torch.float64, torch.float64)):
        sess = make(gpt2_tok, tmp_path / str(dtype), corpus, dtype=dtype)  # own statistics per model
        res = sess.apply(REQS[0])
        assert res.updates[0].keys_side.dtype == torch.float64  # the caller's result is untouched
        for u in sess.journal[0].updates:
            assert u.keys_side.device.type == "cpu" and u.keys_side.dtype == want and u.values_side.dtype == want
    assert factor_dtype(torch.bfloat16) == torch.float32


def test_undo_of_a_float32_model_matches_the_float64_journal(gpt2_tok, tmp_path, corpus):
    """With float32 factors, undo rebuilds a float32 weight within the float32 rounding of its largest
    entry from the float64 sum of the full-precision updates."""
    sess = make(gpt2_tok, tmp_path, corpus)
    base = weights(sess)
    results = [sess.apply(r) for r in REQS[:2]]
    sess.undo(results[0].edit_id)
    ad = get_adapter(sess.model)
    for k, w in sess.edited_weights().items():
        exact = base[k].double() + sum(u.dense(ad, w).double() for u in results[1].updates if u.weight_name == k)
        err = float((w.detach().double() - exact).abs().max())
        assert err <= torch.finfo(torch.float32).eps * float(exact.abs().max()), (k, err)


def test_failed_undo_changes_nothing(gpt2_tok, tmp_path, corpus, monkeypatch):
    sess = make(gpt2_tok, tmp_path, corpus)
    sess.apply(REQS[0])
    sess.apply(REQS[1])
    before = weights(sess)
    calls = {"n": 0}
    real = Journal.active_delta

    def failing(self, name, device):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected in the second weight")
        return real(self, name, device)

    monkeypatch.setattr(Journal, "active_delta", failing)
    with pytest.raises(RuntimeError, match="injected"):
        sess.undo(0)
    assert sess.journal[0].active
    for k, w in sess.edited_weights().items():
        assert torch.equal(w, before[k]), k


def test_active_delta_sums_in_chunks():
    """Ranks beyond one chunk are summed in several matmuls with the same result."""
    gen = torch.Generator().manual_seed(0)
    j = Journal()
    ups = [LowRankUpdate("w", 0, torch.randn(7, 300, generator=gen), torch.randn(5, 300, generator=gen)) for _ in range(5)]
    for u in ups:
        j.record([], [u], {"w": torch.float64}, {})
    j.entries[2].active = False
    k = torch.cat([u.keys_side for i, u in enumerate(ups) if i != 2], 1).double()
    v = torch.cat([u.values_side for i, u in enumerate(ups) if i != 2], 1).double()
    assert torch.allclose(j.active_delta("w", "cpu"), k @ v.T, rtol=0, atol=1e-10)
    assert j.active_delta("other", "cpu") is None
