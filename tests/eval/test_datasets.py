"""Dataset loaders: both CounterFact layouts, zsRE, the GLUE subsets; errors that name record and field."""

import gzip
import json
import lzma
import sys
import urllib.error

import pytest

from fastedit.bundled import PACKAGE_DATA
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


def test_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTEDIT_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("FASTEDIT_DATA_DIR")
    assert default_data_dir() == PACKAGE_DATA  # never a folder outside the package


def test_counterfact_default_is_the_shipped_sample(shared_data, monkeypatch):
    """No path: the 10,000 records that ship with the package, the same as the offline data folder's."""
    monkeypatch.delenv("FASTEDIT_DATA_DIR", raising=False)
    raw = json.loads((shared_data / "counterfact" / "counterfact-edit.json").read_text())
    reqs = load_counterfact(n=3, start=9997)
    assert [r.case_id for r in reqs] == [rec["case_id"] for rec in raw[9997:]]
    assert [r.target_new for r in reqs] == [rec["target_new"] for rec in raw[9997:]]
    assert len(load_counterfact()) == 10000


def test_compressed_files(tmp_path):
    for suffix, opener in ((".xz", lzma.open), (".gz", gzip.open)):
        path = tmp_path / f"cf{suffix}.json{suffix}"
        with opener(path, "wt", encoding="utf-8") as f:
            json.dump([SIMPLIFIED], f)
        assert load_counterfact(path)[0].case_id == 4
    folder = tmp_path / "dir"
    (folder / "counterfact").mkdir(parents=True)
    with lzma.open(folder / "counterfact" / "counterfact-edit.json.xz", "wt") as f:
        json.dump([SIMPLIFIED], f)
    assert load_counterfact(folder)[0].case_id == 4
    (tmp_path / "broken.json.xz").write_bytes(b"not xz")
    with pytest.raises(DatasetError, match="broken.json.xz"):
        load_counterfact(tmp_path / "broken.json.xz")


class FakeDatasets:
    """Stands in for the ``datasets`` package: records each call, serves given rows, or fails as an
    offline ``datasets`` does when the data is not in its cache."""

    def __init__(self, rows, offline_error=False):
        self.rows, self.offline_error, self.calls = rows, offline_error, []

    def load_dataset(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.offline_error:
            raise ConnectionError("Couldn't reach the Hugging Face Hub (offline mode is enabled)")
        return self.rows


def test_counterfact_hub(monkeypatch):
    rows = {"train": [dict(ORIGINAL, case_id=2), dict(ORIGINAL, case_id=0)], "test": [dict(ORIGINAL, case_id=1)]}
    fake = FakeDatasets(rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    reqs = load_counterfact("hub", n=2)
    assert fake.calls == [((datasets.COUNTERFACT_HUB,), {})]
    assert [r.case_id for r in reqs] == [0, 1]  # the original file's order: case ids, across the splits
    assert reqs[0].neighborhood_prompts == tuple(ORIGINAL["neighborhood_prompts"])
    load_counterfact("hf:someone/counterfact-copy")
    assert fake.calls[-1] == (("someone/counterfact-copy",), {})


def test_hub_offline_and_missing_package(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets({}, offline_error=True))
    with pytest.raises(DatasetError, match=r"HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set.*pass a local file"):
        load_counterfact("hub")
    with pytest.raises(DatasetError, match=r"GLUE sst2.*offline"):
        load_glue("sst2", "hub")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets raises ImportError
    with pytest.raises(DatasetError, match=r"optional 'datasets' package.*pip install datasets"):
        load_counterfact("hub")


def test_hub_file_through_huggingface_hub(tmp_path, monkeypatch):
    import huggingface_hub

    (tmp_path / "zsre.json").write_text(json.dumps([ZSRE]))
    calls = []

    def download(repo_id, filename, repo_type=None, **kw):
        calls.append((repo_id, filename, repo_type))
        return str(tmp_path / "zsre.json")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    (r,) = load_zsre("hf:owner/zsre-data/data/zsre_mend_eval.json")
    assert calls == [("owner/zsre-data", "data/zsre_mend_eval.json", "dataset")] and r.target_new == "uniform"
    with pytest.raises(DatasetError, match="hf:owner/name"):
        load_zsre("hf:justone")


def test_zsre_default_download_honours_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTEDIT_CACHE", str(tmp_path / "cache"))

    def no_download(url, dest, timeout=30.0):
        raise AssertionError("downloaded although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(datasets, "_download", no_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match=r"HF_HUB_OFFLINE.*--data FILE"):
        load_zsre()
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def offline(url, dest, timeout=30.0):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(datasets, "_download", offline)
    with pytest.raises(DatasetError, match=r"could not be downloaded.*pass a local file"):
        load_zsre()
    # Once the canonical file is in the cache it is read without a download.
    cached = tmp_path / "cache" / "data" / "zsre_mend_eval.json"
    cached.parent.mkdir(parents=True)
    cached.write_text(json.dumps([ZSRE]))
    assert load_zsre()[0].target_new == "uniform"


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
    assert load_glue(task) == examples  # the subsets that ship with the package are these


def test_glue_hub(monkeypatch):
    rows = [{"sentence": "a fine film", "label": 1, "idx": 0}, {"sentence": "dull", "label": 0, "idx": 1}]
    fake = FakeDatasets(rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    examples = load_glue("sst2", "hub")
    assert fake.calls == [((datasets.GLUE_HUB, "sst2"), {"split": "validation"})]
    assert [(e.idx, e.label, e.sentence) for e in examples] == [(0, 1, "a fine film"), (1, 0, "dull")]


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
