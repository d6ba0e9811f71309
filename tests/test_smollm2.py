"""A real model: ROME, MEMIT and EMMET edits of CounterFact records on SmolLM2-135M.

SmolLM2-135M-Instruct is loaded offline from its PyPI package (converted once into the cache). The
statistics come from the offline Wikipedia sample (30 articles of at most 512 tokens, to keep the
suite fast). Each edit must make P(new) > P(true) on the rewrite prompt and on its paraphrase and
leave the neighbourhood prompt's answer unchanged.
"""

import json

import pytest
import torch

from fastedit.engine import EditSession
from fastedit.eval.metrics import compare_targets
from fastedit.hparams import load_hparams
from fastedit.models import load_model
from fastedit.requests import EditRequest

pytestmark = pytest.mark.slow

CASES = [0]  # the CounterFact record (counterfact-edit.json index) the test edits


@pytest.fixture(scope="module")
def smollm2():
    torch.manual_seed(0)
    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("stats")


@torch.no_grad()
def greedy(model, tok, prompt, n=3):
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    for _ in range(n):
        nxt = model(input_ids=ids, use_cache=False).logits[0, -1].argmax()
        ids = torch.cat([ids, nxt.view(1, 1)], 1)
    return tok.decode(ids[0, -n:])


@pytest.mark.parametrize("method", ["rome", "memit", "emmet"])
@pytest.mark.parametrize("case", CASES)
def test_counterfact_edit(method, case, smollm2, stats_dir, shared_data):
    model, tok = smollm2
    rec = json.loads((shared_data / "counterfact" / "counterfact-edit.json").read_text())[case]
    req = EditRequest.from_dict(rec)
    hp = load_hparams(method, "smollm2-135m").replace(mom2_n_samples=30)
    session = EditSession(
        model, tok, method, hp, stats_dir=stats_dir, stats_max_len=512, progress=False,
        stats_source=str(shared_data / "wikipedia" / "enwiki_sample.jsonl"),
    )
    prompts = [req.text, req.paraphrase_prompts[0]]
    before = compare_targets(model, tok, prompts, [req.target_new] * 2, [req.target_true] * 2)
    neighbour_before = greedy(model, tok, req.neighborhood_prompts[0])
    original = {k: w.detach().clone() for k, w in session.edited_weights().items()}
    try:
        session.apply(req)
        after = compare_targets(model, tok, prompts, [req.target_new] * 2, [req.target_true] * 2)
        neighbour_after = greedy(model, tok, req.neighborhood_prompts[0])
    finally:
        with torch.no_grad():
            for k, w in session.edited_weights().items():
                w.copy_(original[k])
    assert not before["success"][0], "the model already prefers the new target: a poor test case"
    assert after["success"].tolist() == [True, True], f"P(new) > P(true) on rewrite, paraphrase: {after}"
    assert neighbour_after == neighbour_before
