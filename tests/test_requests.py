"""Edit requests: every accepted layout, and clear errors."""

import json

import pytest

from fastedit.requests import EditRequest, RequestError, as_requests

REF = {"case_id": 7, "prompt": "{} plays the sport of", "subject": "LeBron James",
       "target_new": {"str": "football"}, "target_true": {"str": "basketball"}}


def test_reference_layout():
    r = EditRequest.from_dict(REF)
    assert (r.prompt, r.subject, r.target_new, r.target_true, r.case_id) == (
        "{} plays the sport of", "LeBron James", "football", "basketball", 7)
    assert r.text == "LeBron James plays the sport of"
    assert r.target_new_spaced == " football"
    assert r.to_reference_dict() == REF


def test_counterfact_original_layout():
    rec = {"case_id": 3, "requested_rewrite": {k: v for k, v in REF.items() if k != "case_id"},
           "paraphrase_prompts": ["a", "b"], "neighborhood_prompts": ["c"]}
    r = EditRequest.from_dict(rec)
    assert r.case_id == 3 and r.paraphrase_prompts == ("a", "b") and r.neighborhood_prompts == ("c",)


def test_easyedit_layout(shared_data):
    rec = json.loads((shared_data / "counterfact" / "counterfact-edit.json").read_text())[0]
    r = EditRequest.from_dict(rec)
    assert "{}" in r.prompt and r.prompt.format(r.subject) == rec["prompt"]
    assert r.target_new == rec["target_new"] and r.target_true == rec["ground_truth"]
    assert r.paraphrase_prompts == (rec["rephrase_prompt"],)
    assert r.neighborhood_answer == rec["locality_ground_truth"]


@pytest.mark.parametrize(
    "change,match",
    [
        ({"prompt": "Somebody plays the sport of"}, "not found in prompt"),
        ({"prompt": "{} and {} play"}, "exactly one"),
        ({"target_new": {"str": "  "}}, "target_new is empty"),
        ({"target_new": {"text": "x"}}, "target_new must be a string"),
        ({"subject": ""}, "subject is empty"),
    ],
)
def test_errors_name_the_problem(change, match):
    with pytest.raises(RequestError, match=match) as e:
        EditRequest.from_dict({**REF, **change})
    assert "7" in str(e.value)


def test_missing_field():
    with pytest.raises(RequestError, match="missing field 'subject'"):
        EditRequest.from_dict({"prompt": "{} x", "target_new": "y"})


def test_target_that_tokenises_to_nothing(gpt2_tok):
    class Empty:
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": []}

    r = EditRequest.from_dict(REF)
    r.check_tokens(gpt2_tok)
    with pytest.raises(RequestError, match="tokenises to nothing"):
        r.check_tokens(Empty())


def test_as_requests():
    assert len(as_requests(REF)) == 1
    with pytest.raises(RequestError, match="no edit requests"):
        as_requests([])
