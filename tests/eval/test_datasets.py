"""Dataset loaders: both CounterFact layouts, zsRE, the GLUE subsets; errors that name record and field."""

import json
import urllib.error

import pytest

from fastedit.eval import datasets
from fastedit.eval.datasets import (
    DatasetError,
    attribute_prompts,
    default_data_dir,
    generation_prompts,
    load_counterfact,
    load_glue,
    load_zsre,
)

ORIGINAL = {
    "case_id": 11,
    "pararel_idx": 2796,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is",
        "relation_id": "P103",
        "target_new": {"str": "English", "id": "Q1860"},
        "target_true": {"str": "French", "id": "Q150"},
        "subject": "Danielle Darrieux",
    },
    "paraphrase_prompts": ["Shayna does this. Danielle Darrieux speaks", "Danielle Darrieux's native tongue is"],
    "neighborhood_prompts": ["Michel Rocard is a native speaker of", "Jean Gabin spoke the language", "Lucie Aubrac speaks"],
    "attribute_prompts": ["J.R.R. Tolkien is a native speaker of"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is"],
}

SIMPLIFIED = {
    "case_id": 4,
    "prompt": "The mother tongue of Danielle Darrieux is",
    "target_new": "English",
    "subject": "Danielle Darrieux",
    "ground_truth": "French",
    "rephrase_prompt": "Where Danielle Darrieux is from, people speak the language of",
    "locality_prompt": "Michel Rocard is a native speaker of",
    "locality_ground_truth": "French",
}

ZSRE = {
    "subject": "UniFirst",
    "src": "What is the product made by UniFirst?",
    "pred": "uniform",
    "rephrase": "What will be the product of UniFirst?",
    "alt": "unmanned aircraft",
    "answers": ["uniform"],
    "loc": "nq question: john goodman's character in the big lebowski",
    "loc_ans": "Walter Sobchak",
    "cond": "uniform >> unmanned aircraft || What is the product made by UniFirst?",
}


def write(tmp_path, records, name="data.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


# ---------------------------------------------------------------------------------- CounterFact
def test_counterfact_original_layout(tmp_path):
    (r,) = load_counterfact(write(tmp_path, [ORIGINAL]))
    assert (r.case_id, r.prompt, r.subject, r.target_new, r.target_true) == (
        11, "The mother tongue of {} is", "Danielle Darrieux", "English", "French")
    assert r.paraphrase_prompts == tuple(ORIGINAL["paraphrase_prompts"])
    assert r.neighborhood_prompts == tuple(ORIGINAL["neighborhood_prompts"])
    assert r.neighborhood_answer == "French"  # the old object answers the neighbourhood prompts
    assert attribute_prompts(r) == tuple(ORIGINAL["attribute_prompts"])
    assert generation_prompts(r) == tuple(ORIGINAL["generation_prompts"])


def test_counterfact_simplified_layout(tmp_path):
    (r,) = load_counterfact(write(tmp_path, [SIMPLIFIED]))
    assert r.text == SIMPLIFIED["prompt"] and r.target_true == "French" and r.case_id == 4
    assert r.paraphrase_prompts == (SIMPLIFIED["rephrase_prompt"],)
    assert r.neighborhood_prompts == (SIMPLIFIED["locality_prompt"],)
    assert r.neighborhood_answer == "French"
    assert attribute_prompts(r) == () and generation_prompts(r) == ()


def test_counterfact_shared_file(shared_data):
    path = shared_data / "counterfact" / "counterfact-edit.json"
    raw = json.loads(path.read_text())
    reqs = load_counterfact(path, n=5, start=3)
    assert [r.case_id for r in reqs] == [rec["case_id"] for rec in raw[3:8]]
    for r, rec in zip(reqs, raw[3:8]):
        assert r.text == rec["prompt"] and r.target_new == rec["target_new"] and r.target_true == rec["ground_truth"]
        assert r.paraphrase_prompts == (rec["rephrase_prompt"],)
        assert r.neighborhood_prompts == (rec["locality_prompt"],)
        assert r.neighborhood_answer == rec["locality_ground_truth"]
    assert len(load_counterfact(shared_data, n=2)) == 2  # a folder holding counterfact/counterfact-edit.json


def test_counterfact_window(tmp_path):
    records = [dict(SIMPLIFIED, case_id=i) for i in range(6)]
    path = write(tmp_path, records)
    assert [r.case_id for r in load_counterfact(path)] == list(range(6))
    assert [r.case_id for r in load_counterfact(path, n=2, start=3)] == [3, 4]
    assert [r.case_id for r in load_counterfact(path, n=10, start=4)] == [4, 5]
    assert load_counterfact(path, n=0) == []
    with pytest.raises(DatasetError, match="start"):
        load_counterfact(path, start=-1)


@pytest.mark.parametrize(
    "index,record,match",
    [
        (1, {k: v for k, v in SIMPLIFIED.items() if k != "prompt"}, r"record #1 \(case_id 4\).*'prompt'"),
        (1, {k: v for k, v in SIMPLIFIED.items() if k != "ground_truth"}, r"record #1 \(case_id 4\).*'target_true'"),
        (1, dict(SIMPLIFIED, subject="Nobody"), r"record #1 \(case_id 4\).*subject 'Nobody' not found"),
        (1, dict(SIMPLIFIED, target_new=""), r"record #1 \(case_id 4\).*target_new"),
        (1, dict(ORIGINAL, paraphrase_prompts=["ok", 3]), r"record #1 \(case_id 11\).*'paraphrase_prompts'\[1\]"),
        (1, dict(ORIGINAL, neighborhood_prompts=5), r"record #1 \(case_id 11\).*'neighborhood_prompts'"),
        (1, dict(ORIGINAL, requested_rewrite="oops"), r"record #1 \(case_id 11\).*'requested_rewrite'"),
        (1, ["not", "a", "record"], r"record #1.*JSON object"),
    ],
)
def test_counterfact_malformed(tmp_path, index, record, match):
    path = write(tmp_path, [SIMPLIFIED, record])
    with pytest.raises(DatasetError, match=match):
        load_counterfact(path)
    assert len(load_counterfact(path, n=1)) == 1  # only the records read are checked


def test_counterfact_not_a_list(tmp_path):
    with pytest.raises(DatasetError, match="JSON list"):
        load_counterfact(write(tmp_path, {"a": 1}))
    with pytest.raises(DatasetError, match="not found"):
        load_counterfact(tmp_path / "missing.json")


def test_counterfact_default_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTEDIT_CACHE", str(tmp_path / "cache"))

    def offline(url, dest, timeout=30.0):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(datasets, "_download", offline)
    with pytest.raises(DatasetError, match=r"pass a local file.*counterfact-edit\.json"):
        load_counterfact()
    # Once the canonical file is in the cache it is read without a download.
    cached = tmp_path / "cache" / "data" / "counterfact.json"
    cached.parent.mkdir(parents=True)
    cached.write_text(json.dumps([ORIGINAL]))
    assert load_counterfact()[0].case_id == 11


def test_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTEDIT_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("FASTEDIT_DATA_DIR")
    found = default_data_dir()
    assert found is None or (found.name == "data" and found.parent.name == "shared")


# ---------------------------------------------------------------------------------- zsRE
def test_zsre_layout(tmp_path):
    path = write(tmp_path, [ZSRE, dict(ZSRE, answers=["a", "b"])])
    r, r2 = load_zsre(path)
    assert (r.case_id, r2.case_id) == (0, 1)
    assert r.prompt == "What is the product made by {}?" and r.text == ZSRE["src"]
    assert r.target_new == "uniform" and r.target_true is None  # kmeng01's convention: answers[0]
    assert r2.target_new == "a"
    assert r.paraphrase_prompts == (ZSRE["rephrase"],)
    assert r.neighborhood_prompts == (ZSRE["loc"] + "?",) and r.neighborhood_answer == "Walter Sobchak"
    (alt,) = load_zsre(path, n=1, target="alt")
    assert alt.target_new == "unmanned aircraft" and alt.target_true == "uniform"


def test_zsre_shared_file(shared_data):
    path = shared_data / "zsre" / "zsre_mend_train-1k.json"
    raw = json.loads(path.read_text())
    reqs = load_zsre(path, n=4, start=10)
    assert [r.case_id for r in reqs] == [10, 11, 12, 13]
    for r, rec in zip(reqs, raw[10:14]):
        assert r.text == rec["src"] and r.subject == rec["subject"] and r.target_new == rec["answers"][0]


@pytest.mark.parametrize(
    "record,match",
    [
        (dict(ZSRE, subject="Acme"), r"record #1: field 'src' .* does not contain the subject 'Acme'"),
        ({k: v for k, v in ZSRE.items() if k != "loc_ans"}, r"record #1: missing field 'loc_ans'"),
        (dict(ZSRE, answers=[]), r"record #1: field 'answers'"),
        (dict(ZSRE, rephrase=7), r"record #1: field 'rephrase'"),
    ],
)
def test_zsre_malformed(tmp_path, record, match):
    with pytest.raises(DatasetError, match=match):
        load_zsre(write(tmp_path, [ZSRE, record]))


def test_zsre_bad_option(tmp_path):
    with pytest.raises(DatasetError, match="answers0"):
        load_zsre(write(tmp_path, [ZSRE]), target="answers")


# ---------------------------------------------------------------------------------- GLUE
@pytest.mark.parametrize("task", ["sst2", "mrpc", "cola", "rte"])
def test_glue_shared(shared_data, task):
    examples = load_glue(task, shared_data)
    raw = json.loads((shared_data / "glue" / f"{task}.json").read_text())
    assert len(examples) == len(raw) == 200
    assert {e.label for e in examples} == {0, 1} and all(e.task == task for e in examples)
    first = raw[0]
    assert examples[0].idx == first["idx"] and examples[0].label == first["label"]
    if task in ("mrpc", "rte"):
        assert (examples[0].sentence, examples[0].sentence2) == (first["sentence1"], first["sentence2"])
    else:
        assert (examples[0].sentence, examples[0].sentence2) == (first["sentence"], None)
    assert load_glue(task, shared_data / "glue" / f"{task}.json") == examples


@pytest.mark.parametrize(
    "task,record,match",
    [
        ("sst2", {"sentence": "fine", "label": 2, "idx": 5}, r"record #1 \(idx 5\): field 'label'"),
        ("sst2", {"sentence": "fine", "label": True, "idx": 5}, r"record #1 \(idx 5\): field 'label'"),
        ("mrpc", {"sentence1": "a", "label": 1, "idx": 9}, r"record #1 \(idx 9\): missing field 'sentence2'"),
        ("cola", {"sentence": "", "label": 1, "idx": 3}, r"record #1 \(idx 3\): field 'sentence'"),
        ("rte", {"sentence1": "a", "sentence2": "b", "label": 0, "idx": "x"}, r"record #1 \(idx 'x'\): field 'idx'"),
    ],
)
def test_glue_malformed(tmp_path, task, record, match):
    good = {"sst2": {"sentence": "ok", "label": 1, "idx": 0}, "cola": {"sentence": "ok", "label": 1, "idx": 0}}.get(
        task, {"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0})
    write(tmp_path, [good, record], f"{task}.json")
    with pytest.raises(DatasetError, match=match):
        load_glue(task, tmp_path)


def test_glue_unknown_task_and_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="unknown GLUE task 'qnli'"):
        load_glue("qnli", tmp_path)
    with pytest.raises(DatasetError, match="no sst2.json or glue/sst2.json"):
        load_glue("sst2", tmp_path)
