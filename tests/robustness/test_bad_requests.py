"""Malformed edit requests: refused with a RequestError naming the request and the field, before
any work; the model bit for bit unchanged."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastedit.engine import EditFailedError
from fastedit.requests import EditRequest, RequestError, as_requests

from .conftest import GOOD, assert_names_problem, assert_same_state, session, state


def with_(**changes):
    out = {**GOOD, **changes}
    return {k: v for k, v in out.items() if v is not ...}


# (requests as given, words the message must hold)
CASES = [
    (5, ["requests must be"]),
    (None, ["requests must be"]),
    ("LeBron James", ["requests must be"]),
    ([], ["no edit requests"]),
    ([5], ["#0", "JSON object"]),
    ([None], ["#0", "JSON object"]),
    ([{}], ["missing field"]),
    ([{"requested_rewrite": "x"}], ["#0", "requested_rewrite"]),
    ([{"requested_rewrite": [GOOD]}], ["requested_rewrite"]),
    ([with_(prompt=...)], ["prompt"]),
    ([with_(subject=...)], ["subject"]),
    ([with_(target_new=...)], ["target_new"]),
    ([with_(prompt=5)], ["prompt", "string"]),
    ([with_(prompt=None)], ["prompt"]),
    ([with_(subject=None)], ["subject"]),
    ([with_(subject=7)], ["subject"]),
    ([with_(subject="  ")], ["subject is empty"]),
    ([with_(prompt="{} {x}")], ["prompt", "braces"]),
    ([with_(prompt="{}{}")], ["prompt", "exactly one"]),
    ([with_(prompt="{0} plays")], ["prompt"]),
    ([with_(prompt="{} plays {")], ["prompt", "braces"]),
    ([with_(prompt="no subject here")], ["not found in prompt"]),
    ([with_(subject="Le{Bron")], ["subject", "braces"]),
    ([with_(target_new="")], ["target_new"]),
    ([with_(target_new="   ")], ["target_new"]),
    ([with_(target_new=None)], ["target_new"]),
    ([with_(target_new=5)], ["target_new"]),
    ([with_(target_new={"s": "x"})], ["target_new"]),
    ([with_(target_new=[])], ["target_new"]),
    ([with_(target_new={"str": 3})], ["target_new"]),
    ([with_(target_true="basketball", target_new="basketball")], ["true target"]),
    ([with_(target_true=" football")], ["true target"]),
    ([with_(target_true="")], ["target_true"]),
    ([with_(target_true=4)], ["target_true"]),
    ([with_(case_id=[1])], ["case_id"]),
    ([with_(case_id=True)], ["case_id"]),
    ([with_(case_id={"a": 1})], ["case_id"]),
    ([GOOD, with_(case_id=9, target_new="")], ["#1", "9", "target_new"]),
    ([GOOD, GOOD, 3], ["#2"]),
]


@pytest.mark.parametrize("requests,words", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_request_refused_by_name(requests, words):
    with pytest.raises(RequestError) as e:
        as_requests(requests)
    assert_names_problem(e.value, *words)


@pytest.mark.parametrize("requests,words", CASES[:12] + CASES[17:24] + CASES[30:32],
                         ids=[f"session{i}" for i in range(21)])
def test_session_refuses_before_any_change(gpt2_tok, healthy_stats, requests, words):
    sess = session(gpt2_tok, healthy_stats[0])
    before = state(sess.model)
    with pytest.raises(RequestError):
        sess.apply(requests)
    assert_same_state(sess.model, before)
    assert not sess.journal


@pytest.mark.parametrize("method", ["memit", "rome"])
def test_subject_longer_than_the_context(gpt2_tok, healthy_stats, method):
    """A subject that cannot fit the model's 128 positions with its templates is refused by name
    (it used to fail with 'index out of range in self'); the model unchanged."""
    hp = {"layers": [1], "v_num_grad_steps": 2, "v_loss_layer": 3, "mom2_n_samples": 6} if method == "rome" else None
    sess = session(gpt2_tok, healthy_stats[0], hp, method=method)
    before = state(sess.model)
    with pytest.raises((EditFailedError, RequestError)) as e:
        sess.apply(with_(subject="Jean " * 150))
    assert_names_problem(e.value, "context")
    with pytest.raises((EditFailedError, RequestError), match="context"):
        sess.apply(with_(subject="x" * 5000))
    assert_same_state(sess.model, before)


TEXT = st.text(alphabet=st.sampled_from("ab {}x "), max_size=8)
VALUE = st.none() | st.integers(-2, 2) | TEXT | st.lists(TEXT, max_size=2) | st.fixed_dictionaries({"str": TEXT})


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=VALUE, subject=VALUE, target_new=VALUE, target_true=VALUE, case_id=VALUE)
def test_any_record_is_a_usable_request_or_a_named_error(prompt, subject, target_new, target_true, case_id):
    record = {"prompt": prompt, "subject": subject, "target_new": target_new, "target_true": target_true,
              "case_id": case_id}
    try:
        [req] = as_requests([record])
    except RequestError as e:
        assert str(e).startswith("request")
        return
    # what passed validation formats without error and has one place for the subject
    assert isinstance(req, EditRequest)
    assert req.text == req.prompt.replace("{}", req.subject)
    assert req.target_new.strip() and req.target_new.strip() != (req.target_true or "").strip()


def test_dataset_records_that_change_nothing_are_skipped_with_a_note(shared_data, caplog):
    """zsRE with MEND's targets holds records whose counterfactual equals the true answer: a run
    skips them (with a note) instead of failing or making an edit that changes nothing."""
    from fastedit.experiments.sequential import RunConfig, load_requests

    cfg = RunConfig(dataset="zsre", data=str(shared_data / "zsre" / "zsre_mend_train-1k.json"), edits=400,
                    batch_size=1, zsre_target="alt")
    with caplog.at_level("WARNING"):
        reqs = load_requests(cfg)
    assert len(reqs) == 400 and not any(r.changes_nothing for r in reqs)
    assert "skipping" in caplog.text and "true one" in caplog.text
    from fastedit.eval.datasets import load_zsre

    noop = next(r for r in load_zsre(cfg.data, n=400, target="alt") if r.changes_nothing)
    with pytest.raises(RequestError, match="true target"):
        as_requests([noop])
