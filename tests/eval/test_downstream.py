"""Few-shot GLUE: metrics against their formulas, the few-shot split, and the batched, prefix-cached
scores against plain whole-prompt computations on a random GPT-2."""

import json
import math

import pytest

from fastedit.eval.datasets import GlueExample, load_glue
from fastedit.eval.downstream import (
    GLUE_FORMATS,
    accuracy,
    evaluate_glue,
    evaluate_glue_task,
    f1_score,
    matthews_corrcoef,
    select_few_shot,
)
from fastedit.eval.metrics import target_logprobs


# ---------------------------------------------------------------------------------- metrics
def test_metrics_hand_computed():
    labels, preds = [1, 1, 1, 0], [1, 1, 0, 0]
    # class 1: tp 2, fp 0, fn 1 -> F1 4/5; class 0: tp 1, fp 1, fn 0 -> F1 2/3.
    assert accuracy(labels, preds) == 0.75
    assert f1_score(labels, preds) == pytest.approx(0.8)
    assert f1_score(labels, preds, pos_label=0) == pytest.approx(2 / 3)
    assert f1_score(labels, preds, average="macro") == pytest.approx((0.8 + 2 / 3) / 2)
    assert f1_score(labels, preds, average="weighted") == pytest.approx((3 * 0.8 + 1 * 2 / 3) / 4)
    # tp 2, tn 1, fp 0, fn 1
    assert matthews_corrcoef(labels, preds) == pytest.approx((2 * 1 - 0 * 1) / math.sqrt((2 + 0) * (2 + 1) * (1 + 0) * (1 + 1)))
    # Constant predictions: MCC 0, F1 of the never-predicted class 0.
    assert matthews_corrcoef([1, 0, 1], [1, 1, 1]) == 0.0
    assert f1_score([1, 0, 1], [1, 1, 1], pos_label=0) == 0.0
    assert matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        f1_score([1], [1, 0])


def test_metrics_against_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    import random

    rng = random.Random(0)
    for _ in range(20):
        labels = [rng.randint(0, 1) for _ in range(15)]
        preds = [rng.randint(0, 1) for _ in range(15)]
        for average in ("binary", "macro", "weighted"):
            assert f1_score(labels, preds, average) == pytest.approx(sk.f1_score(labels, preds, average=average))
        assert matthews_corrcoef(labels, preds) == pytest.approx(sk.matthews_corrcoef(labels, preds))


# ---------------------------------------------------------------------------------- few-shot split
def examples(n=20):
    return [GlueExample("sst2", 100 + i, int(i % 3 == 0), f"sentence {i}") for i in range(n)]


def test_select_few_shot_balanced():
    ex = examples()
    shots, rest = select_few_shot(ex, 4, seed=0)
    assert sorted(s.label for s in shots) == [0, 0, 1, 1]
    assert len(rest) == 16 and not {s.idx for s in shots} & {e.idx for e in rest}
    assert [e.idx for e in rest] == sorted(e.idx for e in rest)  # file order
    assert select_few_shot(ex, 4, seed=0) == (shots, rest)
    assert select_few_shot(ex, 4, seed=1)[0] != shots
    odd, _ = select_few_shot(ex, 3, seed=0)
    assert len(odd) == 3 and {s.label for s in odd} == {0, 1}
    assert select_few_shot(ex, 0) == ([], ex)


def test_select_few_shot_first():
    ex = examples()
    shots, rest = select_few_shot(ex, 3, selection="first")
    assert shots == ex[:3] and rest == ex[10:]
    with pytest.raises(ValueError, match="at most 10"):
        select_few_shot(ex, 11, selection="first")


# ---------------------------------------------------------------------------------- evaluation
def test_prompt_formats():
    ex = GlueExample("rte", 1, 0, " A man sleeps. ", "Someone sleeps.")
    assert GLUE_FORMATS["rte"].shot(ex) == "A man sleeps.\nquestion: Someone sleeps. True or False?\nanswer: True\n"
    sst = GlueExample("sst2", 2, 1, "a gem . ")
    assert GLUE_FORMATS["sst2"].shot(sst) == "Review : a gem .\nSentiment : positive\n"


def test_evaluate_glue_matches_plain_scores(tiny_gpt2, gpt2_tok, shared_data):
    results = evaluate_glue(tiny_gpt2, gpt2_tok, shared_data, n_per_task=4, n_shots=2, batch_size=3)
    assert list(results) == ["sst2", "mrpc", "cola", "rte"]
    for task, res in results.items():
        assert res["n"] == 4 and res["n_shots"] == 2 and len(res["label_logprobs"]) == 4
        assert res["predictions"] == [int(lp[1] > lp[0]) for lp in res["label_logprobs"]]
        assert res["accuracy"] == accuracy(res["labels"], res["predictions"])
        assert res["mcc"] == matthews_corrcoef(res["labels"], res["predictions"])
        assert res["f1"] == f1_score(res["labels"], res["predictions"], average="weighted")
    # The cached prefix and split tokenisation give what one plain pass over the whole prompt gives.
    task = "mrpc"
    fmt, ex = GLUE_FORMATS[task], load_glue(task, shared_data)
    shots, rest = select_few_shot(ex, 2, seed=0)
    assert results[task]["shot_idx"] == [s.idx for s in shots] and results[task]["idx"] == [e.idx for e in rest[:4]]
    prefix = "".join(fmt.shot(s) for s in shots)
    prompts = [prefix + fmt.question(e) for e in rest[:4]]
    for c, word in enumerate(fmt.label_words):
        plain = target_logprobs(tiny_gpt2, gpt2_tok, prompts, [word] * 4)
        assert [lp[c] for lp in results[task]["label_logprobs"]] == pytest.approx(plain.tolist(), abs=1e-5)
    again = evaluate_glue(tiny_gpt2, gpt2_tok, shared_data, tasks=("mrpc",), n_per_task=4, n_shots=2, batch_size=4)
    for a, b in zip(again["mrpc"]["label_logprobs"], results["mrpc"]["label_logprobs"]):
        assert a == pytest.approx(b, abs=1e-6)


def test_evaluate_glue_synthetic_dir(tmp_path, tiny_gpt2, gpt2_tok):
    records = [{"sentence": f"this film is {w} .", "label": lab, "idx": i}
               for i, (w, lab) in enumerate([("great", 1), ("awful", 0), ("fine", 1), ("dull", 0), ("superb", 1), ("bad", 0)])]
    (tmp_path / "sst2.json").write_text(json.dumps(records))
    res = evaluate_glue(tiny_gpt2, gpt2_tok, tmp_path, tasks=("sst2",), n_shots=0)["sst2"]
    assert res["n"] == 6 and res["shot_idx"] == [] and res["labels"] == [1, 0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="unknown GLUE tasks"):
        evaluate_glue(tiny_gpt2, gpt2_tok, tmp_path, tasks=("qnli",))


def test_shots_that_do_not_fit_are_dropped(gpt2_tok):
    from fastedit.models import random_model

    short = random_model("gpt2")  # 128 positions
    ex = [GlueExample("rte", i, i % 2, "word " * 20, "other " * 5) for i in range(12)]
    res = evaluate_glue_task(short, gpt2_tok, "rte", ex, n_shots=8)
    assert 0 < res["n_shots"] < 8 and res["n"] == 4
    too_long = [GlueExample("rte", i, i % 2, "word " * 200, "other") for i in range(4)]
    with pytest.raises(ValueError, match="GLUE rte: an example of .* tokens does not fit the model's 128 positions"):
        evaluate_glue_task(short, gpt2_tok, "rte", too_long, n_shots=2)
