"""The target-value optimisation: packed suffixes over a cached prefix equal whole padded passes."""

import pytest
import torch

from fastedit.hparams import MEMITHyperParams, ROMEHyperParams
from types import SimpleNamespace

from fastedit.methods.target import StopRule, compute_target_values
from fastedit.models import get_adapter, random_model
from fastedit.requests import EditRequest

REQS = [
    EditRequest.from_dict({"case_id": 0, "prompt": "{} plays the sport of", "subject": "LeBron James", "target_new": "football"}),
    EditRequest.from_dict({"case_id": 1, "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                           "target_new": "English language"}),
]
TEMPLATES = ["{}", "The weather was cold. {}", "Because of this, we know. {}"]


def edit_setup(arch, method, steps, dtype=torch.float32):
    """A random model of ``arch`` and hyperparameters editing its layer 1 with ``method``: (model,
    adapter, hparams, where δ enters, where the NLL is read)."""
    model = random_model(arch, dtype=dtype)
    cls = ROMEHyperParams if method == "rome" else MEMITHyperParams
    hp = cls.from_dict({"layers": [1], "v_num_grad_steps": steps, "v_loss_layer": 2 if method == "memit" else 3,
                        "clamp_norm_factor": 4.0})
    site, source = ("mlp", "logits") if method == "rome" else ("block", "loss_layer")
    return model, get_adapter(model), hp, site, source


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama", "qwen2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("method", ["rome", "memit"])
def test_packed_equals_padded(arch, attn, method, gpt2_tok):
    model, ad, hp, site, source = edit_setup(arch, method, 5, torch.float64)
    model.config._attn_implementation = attn
    a = compute_target_values(model, gpt2_tok, ad, REQS, TEMPLATES, hp, 1, site, source, pack=True)
    b = compute_target_values(model, gpt2_tok, ad, REQS, TEMPLATES, hp, 1, site, source, pack=False)
    # float64 models; eager attention takes its softmax in float32 (and GPT-J and GPT-NeoX compute
    # parts of attention in float32 anyway), so different batch shapes agree to float32 rounding there
    tol = 1e-10 if attn == "sdpa" and arch not in ("gptj", "gpt_neox") else 1e-6
    assert torch.equal(a.v_init, b.v_init)
    assert torch.allclose(a.losses, b.losses, rtol=tol, atol=0, equal_nan=True)
    assert float((a.values - b.values).norm() / b.values.norm()) < tol


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama", "qwen2"])
@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("method", ["rome", "memit"])
def test_low_precision_weights(arch, pack, method, gpt2_tok):
    """Fast mode on CPUs: the layers above run on bf16 copies of their weights. δ stays float32 and
    the loss curve stays within bf16 rounding of the float32 optimisation's (δ itself is compared by
    its norm: Adam's first steps move each coordinate by ±lr whatever its gradient's size, so the
    direction of coordinates with near-zero gradients follows rounding); the model's weights are left
    exactly as they were."""
    from fastedit.models.precision import LowPrecisionWeights

    model, ad, hp, site, source = edit_setup(arch, method, 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = compute_target_values(model, gpt2_tok, ad, REQS, TEMPLATES, hp, 1, site, source, pack=pack)
    lp = LowPrecisionWeights()
    low = compute_target_values(model, gpt2_tok, ad, REQS, TEMPLATES, hp, 1, site, source, pack=pack,
                                low_precision_weights=lp)
    assert low.values.dtype == torch.float32 and lp.casts > 0
    assert torch.equal(low.v_init, ref.v_init) and low.steps == ref.steps
    assert not torch.equal(low.losses, ref.losses)  # it did run in bf16
    assert torch.allclose(low.losses, ref.losses, rtol=1e-3, atol=0, equal_nan=True)
    assert torch.allclose(low.delta.norm(dim=-1), ref.delta.norm(dim=-1), rtol=1e-2)
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    casts = lp.casts
    again = compute_target_values(model, gpt2_tok, ad, REQS, TEMPLATES, hp, 1, site, source, pack=pack,
                                  low_precision_weights=lp)
    assert lp.casts == casts and torch.equal(again.values, low.values)  # copies reused, same result


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("method", ["rome", "memit"])
def test_static_step_equals_the_loop(arch, pack, method, gpt2_tok):
    """The static step that a CUDA graph captures (every counter on the device, Adam in its
    capturable form, the stop flag read every few steps) gives the loop's result up to rounding; on
    a CPU it runs uncaptured."""
    model, ad, hp, site, source = edit_setup(arch, method, 9, torch.float64)
    a = compute_target_values(model, gpt2_tok, ad, REQS, TEMPLATES, hp, 1, site, source, pack=pack)
    b = compute_target_values(model, gpt2_tok, ad, REQS, TEMPLATES, hp, 1, site, source, pack=pack, cuda_graph=True)
    assert a.steps == b.steps == [8, 8]
    assert a.losses.shape == b.losses.shape
    assert torch.allclose(a.losses, b.losses, rtol=1e-12, atol=0, equal_nan=True)
    assert float((a.values - b.values).norm() / a.values.norm()) < 1e-12


def test_static_step_stops_like_the_loop(gpt2_tok, own_guess_request):
    """Requests that stop at different iterations (one target already the argmax, early stopping
    with patience 1) keep the loop's steps, and the loss curve ends where the loop's does."""
    model = random_model("gpt2", dtype=torch.float64)
    ad = get_adapter(model)
    easy = own_guess_request(model, gpt2_tok)
    hp = MEMITHyperParams.from_dict({"layers": [1], "v_num_grad_steps": 9, "v_loss_layer": 2, "clamp_norm_factor": 4.0})
    kw = dict(early_stop_patience=1, early_stop_rule="all_prompts")  # the bare prompt is the only one
    for reqs in ([easy, REQS[1]], [easy]):
        a = compute_target_values(model, gpt2_tok, ad, reqs, ["{}"], hp, 1, "block", "loss_layer", **kw)
        b = compute_target_values(model, gpt2_tok, ad, reqs, ["{}"], hp, 1, "block", "loss_layer", cuda_graph=True, **kw)
        assert a.steps == b.steps and a.steps[0] == 0
        assert a.losses.shape == b.losses.shape
        assert torch.allclose(a.losses, b.losses, rtol=1e-12, atol=0, equal_nan=True)


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama", "qwen2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_static_step_reads_nothing_from_the_device(arch, attn, gpt2_tok, monkeypatch):
    """What a CUDA graph captures must not read a tensor's value on the host (that would be a
    synchronisation, which capture forbids): the static step runs here with every such read
    raising."""
    _static_step_guarded(arch, attn, gpt2_tok, monkeypatch, None)


@pytest.mark.parametrize("stop", [StopRule(-2), StopRule(-2, "all_prompts"), StopRule(0.3)])
def test_static_step_with_early_stop_reads_nothing_from_the_device(stop, gpt2_tok, monkeypatch):
    _static_step_guarded("llama", "sdpa", gpt2_tok, monkeypatch, stop)


def _static_step_guarded(arch, attn, gpt2_tok, monkeypatch, stop):
    import fastedit.methods.stepping as stepping

    model = random_model(arch)
    model.config._attn_implementation = attn
    ad = get_adapter(model)
    hp = MEMITHyperParams.from_dict({"layers": [1], "v_num_grad_steps": 4, "v_loss_layer": 2, "clamp_norm_factor": 4.0})
    reads = ("item", "tolist", "__bool__", "__int__", "__float__", "numpy")
    calls = []

    def forbid(name):
        def read(self, *a, **k):
            raise AssertionError(f"host read Tensor.{name} inside the static step")
        return read

    original = stepping.run_static

    def guarded(forward_loss, backward_update, n_iter, active, use_graph, sync_stop, program=None):
        def fwd(it):
            with monkeypatch.context() as mp:
                for name in reads:
                    mp.setattr(torch.Tensor, name, forbid(name))
                calls.append(it)
                return forward_loss(it)

        def bwd(loss, it):
            with monkeypatch.context() as mp:
                for name in reads:
                    mp.setattr(torch.Tensor, name, forbid(name))
                backward_update(loss, it)

        return original(fwd, bwd, n_iter, active, use_graph, sync_stop=False, program=program)

    monkeypatch.setattr(stepping, "run_static", guarded)
    out = compute_target_values(model, gpt2_tok, ad, REQS, TEMPLATES, hp, 1, "block", "loss_layer", cuda_graph=True,
                                early_stop=stop)
    assert calls == [None, None, None] and out.steps == [3, 3]


@pytest.mark.parametrize("pack", [True, False])
def test_batch_equals_requests_alone(pack, gpt2_tok, own_guess_request):
    """A batch gives each request what it gets alone: the rows of requests that have stopped are
    dropped mid-loop (one stops at once, early stopping with patience 1), and a batch split into
    chunks of one request each gives what one chunk gives."""
    model, ad, hp, site, source = edit_setup("gpt2", "memit", 7, torch.float64)
    reqs = [REQS[0], own_guess_request(model, gpt2_tok), REQS[1]]
    kw = dict(pack=pack, early_stop_patience=1, early_stop_rule="all_prompts")
    t = ["{}"]  # the own-guess request's target is the argmax of this prompt alone
    batch = compute_target_values(model, gpt2_tok, ad, reqs, t, hp, 1, site, source, **kw)
    alone = [compute_target_values(model, gpt2_tok, ad, [r], t, hp, 1, site, source, **kw) for r in reqs]
    chunked = compute_target_values(model, gpt2_tok, ad, reqs, t, hp, 1, site, source, chunk_tokens=1, **kw)
    assert batch.steps[1] == 0 < batch.steps[0]
    assert batch.steps == [a.steps[0] for a in alone] == chunked.steps
    for out in (chunked, batch):
        for j, a in enumerate(alone):
            assert float((out.values[j] - a.values[0]).norm() / a.values[0].norm()) < 1e-10
            n = a.losses.shape[0]
            assert torch.allclose(out.losses[:n, j], a.losses[:, 0], rtol=1e-10, atol=0, equal_nan=True)
            assert out.losses[n:, j].isnan().all()


def guess_request(model, tok, template, prompt="{} plays the sport of", subject="LeBron James"):
    """A request whose one-token target is the model's top guess after ``template`` filled with the
    prompt (it must start with a space and tokenise back to itself)."""
    with torch.no_grad():
        logits = model(**tok(template.format(prompt).format(subject), return_tensors="pt")).logits
    guess = int(logits[0, -1].argmax())
    assert tok.decode([guess]).startswith(" ") and tok(tok.decode([guess]))["input_ids"] == [guess]
    return EditRequest.from_dict({"prompt": prompt, "subject": subject, "target_new": tok.decode([guess]).strip()})


def _labels(pad: int = 0):
    """Two requests' labels: request 0 has a bare prompt 0 and prompt 1 with T = 2 target tokens
    each; request 1 has a bare prompt 2 and prompt 3 with T = 1 (prompt numbers run to 6: the KL
    prompts have none); then ``pad`` padding labels (as a bucketed stack adds: token 0 of request 0's
    prompt 0, weight 0, not valid)."""
    return SimpleNamespace(
        lab_ids=torch.tensor([5, 6, 5, 6, 7, 7] + [0] * pad), lab_req=torch.tensor([0, 0, 0, 0, 1, 1] + [0] * pad),
        lab_prompt=torch.tensor([0, 0, 1, 1, 3, 4] + [0] * pad),
        lab_bare=torch.tensor([True, True, False, False, True, False] + [True] * pad),
        lab_w=torch.tensor([0.25] * 4 + [0.5] * 2 + [0.0] * pad, dtype=torch.float64),
        lab_valid=torch.arange(6 + pad) < 6, n_prompts=6)


def _logp(stack, right):
    """Log-probabilities (labels, 10) whose argmax is the label's token where ``right`` is true."""
    logits = torch.zeros(len(right), 10, dtype=torch.float64)
    for i, (ok, tid) in enumerate(zip(right, stack.lab_ids.tolist())):
        logits[i, tid if ok else 0] = 5.0
    return torch.log_softmax(logits, -1)


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("prompts", ["encore", "all_prompts"])
def test_stop_rule_counts_passes(prompts, pad):
    """−n: a request stops at the pass where, for the n-th time, every counted target token is the
    argmax; a pass in between that is wrong does not reset the count. ENCORE's rule skips the bare
    prompt's tokens (wrong there at every pass here); the all-prompts rule reads them. Padding labels
    (always wrong here) are never read."""
    stack, rule = _labels(pad), StopRule(-2, prompts)
    hits, active = torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.bool)
    bare_wrong = [False, False, True, True, False, True] + [False] * pad  # request 1: bare wrong too
    passes = [bare_wrong, [False, False, False, True, False, True] + [False] * pad, bare_wrong]
    got = []
    for right in passes:
        stop = rule.stops(_logp(stack, right), stack, hits, active)
        got.append(stop.tolist())
        active &= ~stop
    if prompts == "encore":
        assert got == [[False, False], [False, True], [True, True]]
    else:
        assert got == [[False, False]] * 3 and hits.tolist() == [0, 0]
    hits = torch.zeros(2, dtype=torch.long)
    all_right = [True] * 6 + [False] * pad
    assert StopRule(-1, prompts).stops(_logp(stack, all_right), stack, hits, torch.tensor([True, False])).tolist() == [True, False]
    assert hits.tolist() == [1, 0]  # a stopped request's counter stays


@pytest.mark.parametrize("pad", [0, 3])
def test_stop_rule_mean_probability(pad):
    """p > 0: the mean over a request's rewrite prompts (the bare one included) of each prompt's
    target probability exp(mean log p over its T tokens) against p; padding labels are not read."""
    stack = _labels(pad)
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(6 + pad, 10, dtype=torch.float64, generator=g) * 3, -1)
    tok = logp.gather(1, stack.lab_ids[:, None])[:, 0]
    want = [float((tok[0:2].mean().exp() + tok[2:4].mean().exp()) / 2), float((tok[4].exp() + tok[5].exp()) / 2)]
    for j, w in enumerate(want):
        for cutoff, stops in ((w * 0.999, True), (w * 1.001, False)):
            got = StopRule(cutoff).stops(logp, stack, torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.bool))
            assert bool(got[j]) == stops, (j, cutoff, w)


@pytest.mark.parametrize("bad", [dict(cutoff=-2.5), dict(cutoff=1.0), dict(cutoff=0), dict(cutoff=-2, prompts="first")])
def test_stop_rule_rejects(bad):
    with pytest.raises(ValueError, match="early-stop"):
        StopRule(**bad)


@pytest.mark.parametrize("pack", [True, False])
def test_encore_rule_skips_the_bare_prompt(pack, gpt2_tok):
    """A target that is the argmax after the second template but not after the bare prompt stops at
    the first pass under ENCORE's rule and not under the all-prompts rule; with the bare template
    alone ENCORE's rule counts every pass (nothing to test, as in ENCORE's code)."""
    model, ad, hp, site, source = edit_setup("gpt2", "memit", 5, torch.float64)
    hp = hp.replace(v_loss_layer=3)  # the top layer: the NLL reads the model's own logits
    t = ["{}", "Because of this. {}"]
    req = guess_request(model, gpt2_tok, t[1])
    assert guess_request(model, gpt2_tok, t[0]).target_new != req.target_new
    kw = dict(pack=pack, early_stop_patience=1)
    encore = compute_target_values(model, gpt2_tok, ad, [req, REQS[1]], t, hp, 1, site, source, **kw)
    every = compute_target_values(model, gpt2_tok, ad, [req, REQS[1]], t, hp, 1, site, source, early_stop_rule="all_prompts", **kw)
    assert encore.steps == [0, 4] and every.steps == [4, 4]
    bare = compute_target_values(model, gpt2_tok, ad, [REQS[1]], ["{}"], hp, 1, site, source, early_stop=StopRule(-3))
    assert bare.steps == [2]
