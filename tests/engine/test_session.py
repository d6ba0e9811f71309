"""EditSession: results, modes, transactions, fast options, bad inputs, dispatched models."""

import importlib

import pytest
import torch

from fastedit.engine import EditFailedError, EditSession, FastOptions
from fastedit.hparams import HyperParamsError
from fastedit.methods import memit as memit_mod
from fastedit.methods.target import compute_target_values
from fastedit.models import get_adapter, random_model
from textdata import write_stats_corpus
from fastedit.requests import RequestError

from .helpers import HP, REQS, make, weights


def test_result(gpt2_tok, tmp_path, corpus):
    sess = make(gpt2_tok, tmp_path, corpus)
    res = sess.apply(REQS[0])
    assert res.ids == [5] and res.method == "memit" and res.edit_id == 0
    assert set(res.update_norms) == set(sess.edited_weights()) and all(v > 0 for v in res.update_norms.values())
    for phase in ("total", "target/forward", "target/backward", "keys", "solve", "apply"):
        assert res.times[phase] > 0, phase
    assert len(res.loss_curves) == 1 and len(res.loss_curves[0]) >= 1
    assert [u.rank for u in res.updates] == [1, 1]
    assert sess.journal[0].edit_id == 0 and not hasattr(sess, "history")  # results belong to the caller
    assert sess.apply(REQS[1]).edit_id == 1


def test_lu_and_cholesky_solvers_agree(gpt2_tok, tmp_path, corpus):
    a = make(gpt2_tok, tmp_path, corpus, dtype=torch.float64)
    b = make(gpt2_tok, tmp_path, corpus, dtype=torch.float64, solver="lu")
    a.apply(REQS[:2])
    b.apply(REQS[:2])
    for k, w in a.edited_weights().items():
        base = a._base[k].double()
        d_a, d_b = w - base, b.edited_weights()[k] - base
        assert float((d_a - d_b).detach().norm() / d_b.detach().norm()) < 1e-10


PHASES = {
    "templates": ("fastedit.methods.templates.memit_templates", None),
    "statistics": ("fastedit.stats.store.SecondMomentStore.ensure", None),
    "target": ("fastedit.methods.memit.compute_target_values", None),
    "keys": ("fastedit.methods.memit.MemitKeyReader.read", 2),
    "solve": ("fastedit.methods.memit.WoodburySolver.__call__", 2),
    "apply": ("fastedit.engine.session.EditSession.apply_update", 2),
}


@pytest.mark.parametrize("phase", sorted(PHASES))
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_anywhere_restores_the_model(phase, error, gpt2_tok, tmp_path, corpus, monkeypatch):
    """An exception or Ctrl-C in any phase (in the second layer where there are two) leaves the
    weights as they were, after an earlier successful edit."""
    sess = make(gpt2_tok, tmp_path, corpus, templates=None) if phase == "templates" else make(gpt2_tok, tmp_path, corpus)
    if phase != "templates":
        sess.apply(REQS[0])
    before = weights(sess)
    target, fail_on = PHASES[phase]
    mod_name, attr = target.rsplit(".", 1)
    try:
        owner = importlib.import_module(mod_name)
    except ModuleNotFoundError:
        m, cls = mod_name.rsplit(".", 1)
        owner = getattr(importlib.import_module(m), cls)
    real = getattr(owner, attr)
    calls = {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if fail_on is None or calls["n"] == fail_on:
            raise error(f"injected in {phase}")
        return real(*a, **k)

    monkeypatch.setattr(owner, attr, failing)
    expected = KeyboardInterrupt if error is KeyboardInterrupt else EditFailedError
    with pytest.raises(expected):
        sess.apply(REQS[1])
    for k, w in sess.edited_weights().items():
        assert torch.equal(w, before[k]), f"{k} changed after a failure in {phase}"
    assert len(sess.journal) == (0 if phase == "templates" else 1)


def test_non_finite_update_is_refused(gpt2_tok, tmp_path, corpus, monkeypatch):
    sess = make(gpt2_tok, tmp_path, corpus)
    before = weights(sess)
    real = memit_mod.WoodburySolver.__call__
    monkeypatch.setattr(memit_mod.WoodburySolver, "__call__", lambda self, l, k: real(self, l, k) * float("nan"))
    with pytest.raises(EditFailedError, match="non-finite"):
        sess.apply(REQS[0])
    for k, w in sess.edited_weights().items():
        assert torch.equal(w, before[k])


def test_fast_options():
    assert FastOptions.for_mode("exact") == FastOptions()
    fast = FastOptions.for_mode("fast", {"low_precision": False})
    assert fast.early_stop and fast.compensated_update and not fast.low_precision
    with pytest.raises(ValueError, match="unknown fast-mode option"):
        FastOptions.for_mode("fast", {"early_stopping": True})


def test_compensated_update_on_bf16_weights(gpt2_tok, tmp_path, corpus):
    """In fast mode bf16 weights carry a float32 compensation buffer: weight + buffer tracks the
    float64 sum of the updates far better than the weight alone."""
    sess = make(gpt2_tok, tmp_path, corpus, dtype=torch.bfloat16, mode="fast")
    for r in REQS:
        sess.apply(r)
    name = "transformer.h.1.mlp.c_proj.weight"
    w = sess.edited_weights()[name]
    exact = sess._active_sum(name, w)
    assert name in sess._comp
    with_comp = float((w.detach().double() + sess._comp[name].double() - exact).abs().max())
    alone = float((w.detach().double() - exact).abs().max())
    assert with_comp < alone / 50, (with_comp, alone)


def test_early_stop_ends_the_optimisation_sooner(gpt2_tok, own_guess_request):
    """A target that is already the argmax stops at the first pass with patience 1 (a random model
    barely moves its output in a few steps, so the target is picked to be the model's own guess)."""
    model = random_model("gpt2")
    ad = get_adapter(model)
    from fastedit.hparams import MEMITHyperParams

    req = own_guess_request(model, gpt2_tok)
    hp = MEMITHyperParams.from_dict({**HP, "v_num_grad_steps": 6})
    full = compute_target_values(model, gpt2_tok, ad, [req], ["{}"], hp, 2, "block", "loss_layer")
    short = compute_target_values(model, gpt2_tok, ad, [req], ["{}"], hp, 2, "block", "loss_layer", early_stop_patience=1)
    assert full.steps == [5] and short.steps == [0]
    two = compute_target_values(model, gpt2_tok, ad, [req], ["{}"], hp, 2, "block", "loss_layer", early_stop_patience=2)
    assert two.steps == [1]


def test_bad_inputs(gpt2_tok, tmp_path, corpus):
    sess = make(gpt2_tok, tmp_path, corpus)
    with pytest.raises(RequestError, match="not found in prompt"):
        sess.apply({"prompt": "Nobody plays", "subject": "LeBron", "target_new": "x"})
    model = random_model("gpt2")
    with pytest.raises(HyperParamsError, match="out of range.*4 layers"):
        EditSession(model, gpt2_tok, "memit", {"layers": [7]})
    with pytest.raises(HyperParamsError, match="does not name a module"):
        EditSession(model, gpt2_tok, "memit", {"layers": [1], "rewrite_module_tmp": "transformer.h.{}.mlp.nope"})
    with pytest.raises(ValueError, match="bare template"):
        EditSession(model, gpt2_tok, "memit", {"layers": [1]}, templates=[["x {}"]])
    with pytest.raises(HyperParamsError, match="no hparams given"):
        EditSession(model, gpt2_tok, "memit")
    with pytest.raises(ValueError, match="mode must be"):
        EditSession(model, gpt2_tok, "memit", {"layers": [1]}, mode="turbo")


@pytest.mark.parametrize("native", [True, False])
def test_low_precision_on_cpu(native, gpt2_tok, tmp_path, corpus, monkeypatch):
    """Fast mode's low_precision on a CPU uses bf16 weight copies only where the CPU has native bf16;
    the edit stays close to the float32 one and the unedited weights are untouched."""
    import fastedit.engine.session as engine_mod

    monkeypatch.setattr(engine_mod, "cpu_has_native_bf16", lambda: native)
    fast = make(gpt2_tok, tmp_path, corpus, mode="fast", options={"early_stop": False})
    plain = make(gpt2_tok, tmp_path, corpus, mode="fast", options={"early_stop": False, "low_precision": False})
    head = fast.model.lm_head.weight.detach().clone()
    a, b = fast.apply(REQS[0]), plain.apply(REQS[0])
    assert (fast._low_precision is not None) == native
    assert torch.equal(fast.model.lm_head.weight, head) and fast.model.lm_head.weight.dtype == torch.float32
    for x, y in zip(a.updates, b.updates):
        dx, dy = x.keys_side @ x.values_side.T, y.keys_side @ y.values_side.T
        rel = float((dx - dy).norm() / dy.norm())
        assert (rel == 0) == (not native) and rel < 0.3, rel


def test_model_dispatched_with_a_device_map(gpt2_tok, tmp_path, corpus, monkeypatch):
    """A model dispatched by accelerate (a device_map, here every part on the CPU, with its hooks
    forced on) edits exactly as the plain model: the hooks that move activations between devices do
    not disturb running the upper layers alone, recording activations or reading keys. Several GPUs:
    tests/test_engine_gpu.py.

    A dispatched model runs the upper layers through transformers' modules; the plain one is sent
    there too, so that both round alike (fastedit's own forward agrees with them to 1e-6,
    tests/models/test_stack.py, but Adam's first steps make rounding differences visible at 1e-8)."""
    from accelerate import dispatch_model

    import fastedit.models.stack as stack_mod

    real = stack_mod.unsupported_reason
    monkeypatch.setattr(stack_mod, "unsupported_reason", lambda *a: real(*a) or "compared with a dispatched model")

    model = random_model("gpt2", dtype=torch.float64)
    names = ["transformer.wte", "transformer.wpe", "transformer.drop"]
    names += [f"transformer.h.{i}" for i in range(model.config.n_layer)] + ["transformer.ln_f", "lm_head"]
    dispatch_model(model, device_map={n: "cpu" for n in names}, force_hooks=True)
    assert hasattr(model.transformer.h[2], "_hf_hook")
    hooked = make(gpt2_tok, tmp_path, corpus, model=model)
    plain = make(gpt2_tok, tmp_path, corpus, dtype=torch.float64)
    for r in REQS[:2]:
        a, b = hooked.apply(r), plain.apply(r)
        for x, y in zip(a.updates, b.updates):
            dx, dy = x.keys_side @ x.values_side.T, y.keys_side @ y.values_side.T
            assert float((dx - dy).norm() / dy.norm()) < 1e-10


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_inside_the_bf16_optimisation_restores_every_weight(error, gpt2_tok, tmp_path, corpus, monkeypatch):
    """Fast mode on a CPU swaps bf16 copies into the upper layers during the optimisation: a failure
    in the middle of it (an exception or Ctrl-C in an Adam step) gives every parameter back its own
    float32 tensor, unchanged."""
    import fastedit.engine.session as engine_mod
    import fastedit.methods.target as target_mod

    monkeypatch.setattr(engine_mod, "cpu_has_native_bf16", lambda: True)
    sess = make(gpt2_tok, tmp_path, corpus, mode="fast")
    sess.apply(REQS[0])
    before = {k: v.detach().clone() for k, v in sess.model.named_parameters()}
    real, calls = target_mod._adam_step, {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise error("injected in the optimisation")
        return real(*a, **k)

    monkeypatch.setattr(target_mod, "_adam_step", failing)
    with pytest.raises(KeyboardInterrupt if error is KeyboardInterrupt else EditFailedError):
        sess.apply(REQS[1])
    assert calls["n"] == 2
    for k, w in sess.model.named_parameters():
        assert w.dtype == before[k].dtype and torch.equal(w, before[k]), k
