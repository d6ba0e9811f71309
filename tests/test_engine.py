"""EditSession: results, modes, transactions, journal (undo, save/load, edit packs)."""

import copy

import pytest
import torch

from fastedit.engine import EditFailedError, EditSession, FastOptions, apply_edit_pack
from fastedit.hparams import HyperParamsError
from fastedit.methods import memit as memit_mod
from fastedit.methods.target import compute_target_values
from fastedit.models import get_adapter, random_model
from fastedit.requests import RequestError
from fastedit.stats.store import SecondMomentStore

REQS = [
    {"case_id": 5, "prompt": "{} plays the sport of", "subject": "LeBron James", "target_new": "football"},
    {"case_id": 6, "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", "target_new": "English"},
    {"case_id": 7, "prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Rome"},
]
GROUPS = [["{}"], ["The weather was cold. {}"]]
HP = {"layers": [1, 2], "v_num_grad_steps": 4, "v_loss_layer": 3, "mom2_update_weight": 10.0, "mom2_n_samples": 1}


@pytest.fixture()
def corpus(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("The cat sat on the mat and the dog sat on the log. " * 20)
    return src


def make(gpt2_tok, tmp_path, corpus, dtype=torch.float32, model=None, **kw):
    model = model if model is not None else random_model("gpt2", dtype=dtype)
    kw.setdefault("templates", GROUPS)
    return EditSession(model, gpt2_tok, "memit", HP, stats_dir=tmp_path / "stats",
                       stats_source=str(corpus), progress=False, **kw)


def weights(sess):
    return {k: w.detach().clone() for k, w in sess.edited_weights().items()}


def test_result(gpt2_tok, tmp_path, corpus):
    sess = make(gpt2_tok, tmp_path, corpus)
    res = sess.apply(REQS[0])
    assert res.ids == [5] and res.method == "memit" and res.edit_id == 0
    assert set(res.update_norms) == set(sess.edited_weights()) and all(v > 0 for v in res.update_norms.values())
    for phase in ("total", "target/forward", "target/backward", "keys", "solve", "apply"):
        assert res.times[phase] > 0, phase
    assert len(res.loss_curves) == 1 and len(res.loss_curves[0]) >= 1
    assert [u.rank for u in res.updates] == [1, 1]
    assert sess.history == [res] and sess.journal[0].edit_id == 0
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
    "templates": ("fastedit.engine.memit_templates", None),
    "statistics": ("fastedit.stats.store.SecondMomentStore.ensure", None),
    "target": ("fastedit.methods.memit.compute_target_values", None),
    "keys": ("fastedit.methods.memit.MemitKeyReader.read", 2),
    "solve": ("fastedit.methods.memit.WoodburySolver.__call__", 2),
    "apply": ("fastedit.engine.EditSession._apply_update", 2),
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
    import importlib

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


def test_undo_is_exact(gpt2_tok, tmp_path, corpus):
    """Undoing the middle edit leaves the original weights plus the other two edits' updates."""
    sess = make(gpt2_tok, tmp_path, corpus, dtype=torch.float64)
    base = weights(sess)
    results = [sess.apply(r) for r in REQS]
    sess.undo(results[1].edit_id)
    ad = get_adapter(sess.model)
    for k, w in sess.edited_weights().items():
        want = base[k].clone()
        for res in (results[0], results[2]):
            for u in res.updates:
                if u.weight_name == k:
                    want += u.dense(ad, w).double()
        assert torch.allclose(w, want, rtol=0, atol=1e-12), k
    with pytest.raises(ValueError, match="already undone"):
        sess.undo(results[1].edit_id)
    with pytest.raises(KeyError, match="no edit #9"):
        sess.undo(9)
    for res in (results[0], results[2]):
        sess.undo(res.edit_id)
    for k, w in sess.edited_weights().items():
        assert torch.allclose(w, base[k], rtol=0, atol=1e-13)


def test_save_load_continues_identically(gpt2_tok, tmp_path, corpus):
    model = random_model("gpt2")
    twin = copy.deepcopy(model)
    sess = make(gpt2_tok, tmp_path, corpus, model=model)
    sess.apply(REQS[0])
    sess.apply(REQS[1])
    sess.undo(0)
    sess.save(tmp_path / "session")
    loaded = EditSession.load(tmp_path / "session", twin, gpt2_tok, stats_dir=tmp_path / "stats", progress=False)
    for k, w in loaded.edited_weights().items():
        assert torch.equal(w, sess.edited_weights()[k])
    assert [e.active for e in loaded.journal] == [False, True]
    assert loaded.journal[1].requests[0].case_id == 6
    sess.apply(REQS[2])
    loaded.apply(REQS[2])
    for k, w in loaded.edited_weights().items():
        assert torch.equal(w, sess.edited_weights()[k]), k
    with pytest.raises(ValueError, match="differs from the session's original"):
        EditSession.load(tmp_path / "session", model, gpt2_tok, stats_dir=tmp_path / "stats")
    with pytest.raises(ValueError, match="not this one"):
        EditSession.load(tmp_path / "session", random_model("gpt2", seed=3), gpt2_tok)


def test_edit_pack(gpt2_tok, tmp_path, corpus):
    model = random_model("gpt2")
    base = copy.deepcopy(model)
    sess = make(gpt2_tok, tmp_path, corpus, model=model)
    sess.apply(REQS[0])
    sess.apply(REQS[1])
    pack = sess.export_pack(tmp_path / "edits.safetensors")
    assert pack.stat().st_size < 20_000  # factors only
    names = apply_edit_pack(base, pack)
    assert names == sorted(sess.edited_weights())
    for k, w in sess.edited_weights().items():
        assert torch.allclose(base.get_parameter(k), w, atol=1e-6)
    with pytest.raises(ValueError, match="not this one"):
        apply_edit_pack(random_model("gpt2", seed=5), pack)


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
    import fastedit.engine as engine_mod

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
    import fastedit.engine as engine_mod
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
