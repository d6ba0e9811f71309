"""Edit metrics: hand-computed cases on a bigram model whose logits the test sets, and batched scores
against plain one-prompt-at-a-time computations on a random GPT-2."""

import dataclasses
import math
import unicodedata

import pytest
import torch

from fastedit.eval.metrics import (
    compare_targets,
    compute_n_gram_entropy,
    generate_texts,
    generation_entropy,
    harmonic_mean,
    n_gram_entropy,
    score_continuations,
    score_counterfact,
    score_zsre,
    summarize_scores,
    target_logprobs,
    word_tokenize,
)
from fastedit.requests import EditRequest

ATOL = 1e-5


def request(**kw):
    base = dict(prompt="{} lives in", subject="Alice", target_new="Rome", target_true="Paris", case_id=0,
                paraphrase_prompts=("Alice resides at", "Alice stays near"), neighborhood_prompts=("Bob lives by",),
                neighborhood_answer="Paris")
    return EditRequest(**{**base, **kw})


def logsoftmax_row(model, tok, word):
    return torch.log_softmax(model.table[tok.ids[word]].double(), -1)


# ---------------------------------------------------------------------------------- hand-computed
def test_counterfact_hand_computed(bigram, word_tok):
    (row,) = score_counterfact(bigram, word_tok, [request()])
    ls = lambda prev, word: float(logsoftmax_row(bigram, word_tok, prev)[word_tok.ids[word]])  # noqa: E731
    assert row["case_id"] == 0
    assert row["rewrite_success"] == 1.0 and row["rewrite_argmax_acc"] == 1.0
    assert row["rewrite_prob_diff"] == pytest.approx(math.exp(ls("in", "Rome")) - math.exp(ls("in", "Paris")), abs=ATOL)
    assert row["rewrite_nll_new"] == pytest.approx([-ls("in", "Rome")], abs=ATOL)
    assert row["rewrite_nll_true"] == pytest.approx([-ls("in", "Paris")], abs=ATOL)
    # "at" favours Paris (fails), "near" favours Rome (succeeds).
    assert row["paraphrase_success"] == 0.5 and row["paraphrase_argmax_acc"] == 0.5
    expected = ((math.exp(ls("at", "Rome")) - math.exp(ls("at", "Paris")))
                + (math.exp(ls("near", "Rome")) - math.exp(ls("near", "Paris")))) / 2
    assert row["paraphrase_prob_diff"] == pytest.approx(expected, abs=ATOL)
    # The neighbour keeps its answer Paris over the new object Rome.
    assert row["neighborhood_success"] == 1.0 and row["neighborhood_argmax_acc"] == 1.0
    assert row["neighborhood_prob_diff"] == pytest.approx(math.exp(ls("by", "Paris")) - math.exp(ls("by", "Rome")), abs=ATOL)
    assert row["neighborhood_nll_answer"] == pytest.approx([-ls("by", "Paris")], abs=ATOL)

    summary = summarize_scores([row])
    assert summary["n"] == 1 and summary["paraphrase_success"] == 0.5
    assert summary["score"] == pytest.approx(3 / (1 / 1 + 1 / 0.5 + 1 / 1))


def test_multi_token_target_hand_computed(bigram, word_tok):
    prompt, target = [word_tok.ids[w] for w in ("Alice", "lives", "in")], [word_tok.ids["New"], word_tok.ids["York"]]
    (score,) = score_continuations(bigram, [(prompt, target)])
    expected = [logsoftmax_row(bigram, word_tok, "in")[target[0]], logsoftmax_row(bigram, word_tok, "New")[target[1]]]
    torch.testing.assert_close(score.logprobs, torch.stack(expected), atol=ATOL, rtol=0)
    # After "in" the argmax is Rome, after "New" it is York.
    assert score.correct.tolist() == [False, True]
    assert score.token_accuracy == 0.5 and not score.all_correct
    assert score.nll == pytest.approx(-float(torch.stack(expected).mean()), abs=ATOL)


def test_zsre_hand_computed(bigram, word_tok):
    r = request(target_new="New York", target_true=None, neighborhood_prompts=("Bob lives at",),
                paraphrase_prompts=("Alice stays near",))
    (row,) = score_zsre(bigram, word_tok, [r])
    assert row["rewrite_correct"] == [False, True] and row["rewrite_token_acc"] == 0.5
    assert row["paraphrase_token_acc"] == 0.5 and row["paraphrase_argmax_acc"] == 0.0
    assert row["neighborhood_correct"] == [True] and row["neighborhood_token_acc"] == 1.0
    summary = summarize_scores([row, dict(row, rewrite_token_acc=1.0)])
    assert summary["rewrite_token_acc"] == 0.75 and "score" not in summary


def test_harmonic_mean():
    assert harmonic_mean([1.0, 0.5, 1.0]) == pytest.approx(0.75)
    assert harmonic_mean([0.2, 0.0, 0.9]) == 0.0
    with pytest.raises(ValueError):
        harmonic_mean([])


def test_counterfact_needs_target_true(bigram, word_tok):
    with pytest.raises(ValueError, match="request 0: CounterFact scores need target_true"):
        score_counterfact(bigram, word_tok, [request(target_true=None)])


def test_request_without_evaluation_prompts(bigram, word_tok):
    (row,) = score_counterfact(bigram, word_tok, [request(paraphrase_prompts=(), neighborhood_prompts=())])
    assert row["paraphrase_success"] is None and row["neighborhood_success"] is None
    summary = summarize_scores([row])
    assert summary["rewrite_success"] == 1.0 and "paraphrase_success" not in summary and "score" not in summary


# ---------------------------------------------------------------------------------- batched = unbatched
def plain_scores(model, prompt_ids, target_ids):
    """One unpadded forward pass over prompt + target: per-token log-probs and argmax hits."""
    ids = torch.tensor([list(prompt_ids) + list(target_ids)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    pos = torch.arange(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(target_ids))
    logp = torch.log_softmax(logits[pos], -1)
    tgt = torch.tensor(list(target_ids))
    return logp.gather(1, tgt[:, None])[:, 0], logp.argmax(-1) == tgt


def test_score_continuations_batched_equals_plain(tiny_gpt2):
    gen = torch.Generator().manual_seed(1)
    items = []
    for n_p, n_t in [(5, 1), (9, 3), (2, 2), (5, 1), (12, 1), (3, 4), (7, 2)]:
        items.append((torch.randint(0, 50257, (n_p,), generator=gen).tolist(),
                      torch.randint(0, 50257, (n_t,), generator=gen).tolist()))
    items.append((items[0][0], items[1][1]))  # same prompt, other target
    items.append((items[0][0] + items[1][1][:1], items[1][1][1:]))  # a row shared with the previous item
    batched = score_continuations(tiny_gpt2, items, batch_size=3)
    for (p, t), got in zip(items, batched):
        lp, correct = plain_scores(tiny_gpt2, p, t)
        torch.testing.assert_close(got.logprobs, lp, atol=ATOL, rtol=0)
        assert got.correct.tolist() == correct.tolist()
    with pytest.raises(ValueError, match="item 0: empty prompt"):
        score_continuations(tiny_gpt2, [([], [1])])


def test_prefix_cache_equals_full_rows(tiny_gpt2):
    gen = torch.Generator().manual_seed(2)
    prefix = torch.randint(0, 50257, (17,), generator=gen).tolist()
    items = [(torch.randint(0, 50257, (n,), generator=gen).tolist(), torch.randint(0, 50257, (k,), generator=gen).tolist())
             for n, k in [(4, 1), (9, 2), (6, 1), (1, 3)]]
    cached = score_continuations(tiny_gpt2, items, batch_size=2, prefix_ids=prefix)
    for (p, t), got in zip(items, cached):
        lp, correct = plain_scores(tiny_gpt2, prefix + p, t)
        torch.testing.assert_close(got.logprobs, lp, atol=ATOL, rtol=0)
        assert got.correct.tolist() == correct.tolist()


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2"])
def test_left_padding_and_prefix_every_architecture(arch):
    """Left-padded rows with explicit positions, after a cached prefix or not, under sdpa attention."""
    from fastedit.models import random_model

    model = random_model(arch, vocab_size=1000)
    model.set_attn_implementation("sdpa")
    gen = torch.Generator().manual_seed(3)
    items = [(torch.randint(0, 1000, (n,), generator=gen).tolist(), torch.randint(0, 1000, (k,), generator=gen).tolist())
             for n, k in [(3, 1), (12, 2), (7, 3), (1, 1)]]
    prefix = torch.randint(0, 1000, (9,), generator=gen).tolist()
    for pre in ([], prefix):
        for (p, t), got in zip(items, score_continuations(model, items, batch_size=4, prefix_ids=pre)):
            lp, correct = plain_scores(model, pre + p, t)
            torch.testing.assert_close(got.logprobs, lp, atol=ATOL, rtol=0)
            assert got.correct.tolist() == correct.tolist()


def test_target_logprobs_and_compare_targets(tiny_gpt2, gpt2_tok):
    prompts = ["The Eiffel Tower is located in", "Mozart was born in the city of", "Hi"]
    targets = ["Paris", "Salzburg Austria", "there"]
    got = target_logprobs(tiny_gpt2, gpt2_tok, prompts, targets, batch_size=2)
    assert got.dtype == torch.float64 and got.shape == (3,)
    for i, (p, t) in enumerate(zip(prompts, targets)):
        lp, _ = plain_scores(tiny_gpt2, gpt2_tok(p)["input_ids"], gpt2_tok(" " + t, add_special_tokens=False)["input_ids"])
        assert float(got[i]) == pytest.approx(float(lp.mean()), abs=ATOL)
    cmp = compare_targets(tiny_gpt2, gpt2_tok, prompts, targets, ["Rome", "Chicago", "you"])
    assert set(cmp) == {"new", "true", "success"}
    torch.testing.assert_close(cmp["new"], got, atol=ATOL, rtol=0)
    assert cmp["success"].tolist() == (cmp["new"] > cmp["true"]).tolist()
    assert target_logprobs(tiny_gpt2, gpt2_tok, [], []).shape == (0,)


def original_record(i):
    return {"case_id": i, "requested_rewrite": {"prompt": "{} is a citizen of", "subject": f"Person {i}",
            "target_new": {"str": "Italy"}, "target_true": {"str": "the United States"}},
            "paraphrase_prompts": [f"Person {i} holds a passport of", "They say that Person %d lives in" % i],
            "neighborhood_prompts": ["Barack Obama is a citizen of", "Joe Biden is a citizen of", "Al Gore, a citizen of"]}


def simplified_record(i):
    return {"case_id": 100 + i, "prompt": f"The capital of Country{i} is", "subject": f"Country{i}",
            "target_new": "Berlin", "ground_truth": "Madrid", "rephrase_prompt": f"Country{i}'s capital city is",
            "locality_prompt": "The capital of Spain is", "locality_ground_truth": "Madrid"}


def test_counterfact_batched_equals_per_request(tiny_gpt2, gpt2_tok):
    reqs = [EditRequest.from_dict(original_record(i)) for i in range(2)] + [
        EditRequest.from_dict(simplified_record(i)) for i in range(2)]
    # reqs[0] falls back to target_true for its neighbourhood answer; reqs[1] names it.
    reqs[1] = dataclasses.replace(reqs[1], neighborhood_answer="the United States")
    rows = score_counterfact(tiny_gpt2, gpt2_tok, reqs, batch_size=64)
    for r, row in zip(reqs, rows):
        (alone,) = score_counterfact(tiny_gpt2, gpt2_tok, [r], batch_size=1)
        assert alone.keys() == row.keys()
        for key, value in row.items():
            assert value == pytest.approx(alone[key], abs=ATOL), key
        answer = r.neighborhood_answer or r.target_true
        n = len(r.neighborhood_prompts)
        nll_new = (-target_logprobs(tiny_gpt2, gpt2_tok, r.neighborhood_prompts, [r.target_new] * n)).tolist()
        nll_ans = (-target_logprobs(tiny_gpt2, gpt2_tok, r.neighborhood_prompts, [answer] * n)).tolist()
        assert row["neighborhood_nll_new"] == pytest.approx(nll_new, abs=ATOL)
        assert row["neighborhood_nll_answer"] == pytest.approx(nll_ans, abs=ATOL)
        assert row["neighborhood_success"] == pytest.approx(sum(a < b for a, b in zip(nll_ans, nll_new)) / n)
    summary = summarize_scores(rows)
    assert summary["n"] == 4 and 0 <= summary["score"] <= 1
    means = [sum(row[k] for row in rows) / 4 for k in ("rewrite_success", "paraphrase_success", "neighborhood_success")]
    assert summary["score"] == pytest.approx(harmonic_mean(means))


def test_zsre_equals_reference_style(tiny_gpt2, gpt2_tok):
    """The reference feeds prompt + target[:i] and checks the argmax of the last position."""
    r = EditRequest(prompt="What is the product made by {}?", subject="UniFirst", target_new="uniform clothing",
                    paraphrase_prompts=("What will be the product of UniFirst?",),
                    neighborhood_prompts=("nq question: who wrote hamlet?",), neighborhood_answer="William Shakespeare")
    (row,) = score_zsre(tiny_gpt2, gpt2_tok, [r], batch_size=2)

    def reference(prompt, target):
        p = gpt2_tok(prompt)["input_ids"]
        t = gpt2_tok(" " + target)["input_ids"]
        out = []
        for i in range(len(t)):
            with torch.no_grad():
                logits = tiny_gpt2(input_ids=torch.tensor([p + t[:i]])).logits
            out.append(bool(logits[0, -1].argmax() == t[i]))
        return out

    assert row["rewrite_correct"] == reference(r.text, r.target_new)
    assert row["paraphrase_correct"] == reference(r.paraphrase_prompts[0], r.target_new)
    assert row["neighborhood_correct"] == reference(r.neighborhood_prompts[0], r.neighborhood_answer)


# ---------------------------------------------------------------------------------- generation
def greedy_plain(model, tok, prompt, max_out_len):
    ids = tok(prompt)["input_ids"]
    while len(ids) < max_out_len:
        with torch.no_grad():
            ids = ids + [int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())]
    return unicodedata.normalize("NFKD", tok.decode(ids)).replace("\n\n", " ")


def test_generation_greedy_batched_equals_plain(tiny_gpt2, gpt2_tok):
    prompts = ["The Eiffel Tower is located in the city of", "Hello", "Mozart was born in"]
    texts = generate_texts(tiny_gpt2, gpt2_tok, prompts, max_out_len=14, top_k=1, batch_size=3)
    assert texts == [greedy_plain(tiny_gpt2, gpt2_tok, p, 14) for p in prompts]
    fixed = generate_texts(tiny_gpt2, gpt2_tok, prompts[:2], max_new_tokens=3, top_k=1)
    assert fixed[1] == greedy_plain(tiny_gpt2, gpt2_tok, "Hello", 4)


def test_generation_seeded(tiny_gpt2, gpt2_tok):
    prompts = ["The Eiffel Tower is located in", "Hello there"]
    a = generation_entropy(tiny_gpt2, gpt2_tok, prompts, max_out_len=20, seed=3)
    b = generation_entropy(tiny_gpt2, gpt2_tok, prompts, max_out_len=20, seed=3)
    c = generation_entropy(tiny_gpt2, gpt2_tok, prompts, max_out_len=20, seed=4)
    assert a == b and a["texts"] != c["texts"]
    assert all(t.startswith(p) for t, p in zip(a["texts"], prompts))
    assert a["ngram_entropy"] == pytest.approx(n_gram_entropy(a["texts"]))


def test_n_gram_entropy_hand_computed():
    # words a b a b: bigrams (a,b) x2, (b,a) x1; trigrams (a,b,a), (b,a,b).
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    h3 = 1.0
    assert compute_n_gram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * h3) / 2)
    assert compute_n_gram_entropy("one") == 0.0
    assert n_gram_entropy(["a b a b", "one"]) == pytest.approx((2 / 3 * h2 + 4 / 3 * h3) / 4)
    assert word_tokenize("I can't say it's 1,000.5 well-known, U.S. things...") == [
        "I", "ca", "n't", "say", "it", "'s", "1,000.5", "well-known", ",", "U.S.", "things", "..."]
    assert word_tokenize('"Hi," she said.') == ["``", "Hi", ",", "''", "she", "said", "."]
