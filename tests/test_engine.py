"""EditSession: results, transactions, template and hparams checks."""

import pytest
import torch

from fastedit.engine import EditFailedError, EditSession
from fastedit.hparams import HyperParamsError
from fastedit.methods import target as target_mod
from fastedit.models import random_model
from fastedit.requests import RequestError

REQ = {"case_id": 5, "prompt": "{} plays the sport of", "subject": "LeBron James", "target_new": "football"}
GROUPS = [["{}"], ["The weather was cold. {}"]]


@pytest.fixture()
def session(gpt2_tok, tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("The cat sat on the mat and the dog sat on the log. " * 20)
    model = random_model("gpt2")
    hp = {"layers": [1, 2], "v_num_grad_steps": 4, "v_loss_layer": 3, "mom2_update_weight": 10.0, "mom2_n_samples": 1}
    return EditSession(model, gpt2_tok, "memit", hp, templates=GROUPS, stats_dir=tmp_path, stats_source=str(src), progress=False)


def test_result(session):
    res = session.apply(REQ)
    assert res.ids == [5] and res.method == "memit"
    assert set(res.update_norms) == set(session.edited_weights()) and all(v > 0 for v in res.update_norms.values())
    assert res.times["total"] > 0 and "target/forward" in res.times and "solve" in res.times
    assert len(res.loss_curves) == 1 and len(res.loss_curves[0]) >= 1
    assert [u.rank for u in res.updates] == [1, 1]
    assert session.history == [res]


def test_failure_restores_the_model(session, monkeypatch):
    before = {k: w.detach().clone() for k, w in session.edited_weights().items()}
    session.stats.ensure(session.hp.layers)

    def boom(*a, **k):
        raise RuntimeError("injected")

    # fail after the first layer's update has been applied
    calls = {"n": 0}
    real = torch.linalg.solve

    def solve_then_fail(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected in layer 2")
        return real(*a, **k)

    monkeypatch.setattr(torch.linalg, "solve", solve_then_fail)
    with pytest.raises(EditFailedError, match="injected in layer 2"):
        session.apply(REQ)
    for k, w in session.edited_weights().items():
        assert torch.equal(w, before[k]), k
    monkeypatch.setattr(torch.linalg, "solve", real)
    monkeypatch.setattr(target_mod, "compute_target_values", boom)
    from fastedit.methods import memit

    monkeypatch.setattr(memit, "compute_target_values", boom)
    with pytest.raises(EditFailedError, match="injected"):
        session.apply(REQ)
    for k, w in session.edited_weights().items():
        assert torch.equal(w, before[k]), k


def test_non_finite_update_is_refused(session, monkeypatch):
    before = {k: w.detach().clone() for k, w in session.edited_weights().items()}
    session.stats.ensure(session.hp.layers)
    real = torch.linalg.solve
    monkeypatch.setattr(torch.linalg, "solve", lambda a, b: real(a, b) * float("nan"))
    with pytest.raises(EditFailedError, match="non-finite"):
        session.apply(REQ)
    for k, w in session.edited_weights().items():
        assert torch.equal(w, before[k]), k


def test_bad_inputs(gpt2_tok, session):
    with pytest.raises(RequestError, match="not found in prompt"):
        session.apply({"prompt": "Nobody plays", "subject": "LeBron", "target_new": "x"})
    model = random_model("gpt2")
    with pytest.raises(HyperParamsError, match="out of range.*4 layers"):
        EditSession(model, gpt2_tok, "memit", {"layers": [7]})
    with pytest.raises(HyperParamsError, match="does not name a module"):
        EditSession(model, gpt2_tok, "memit", {"layers": [1], "rewrite_module_tmp": "transformer.h.{}.mlp.nope"})
    with pytest.raises(ValueError, match="bare template"):
        EditSession(model, gpt2_tok, "memit", {"layers": [1]}, templates=[["x {}"]])
    with pytest.raises(HyperParamsError, match="no hparams given"):
        EditSession(model, gpt2_tok, "memit")
