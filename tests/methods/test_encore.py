"""ENCORE: fastedit's method equals the plain float64 oracle (``fastedit.methods.plain.encore``, ENCORE's
code step for step) over sequential edits on every architecture, with and without its early stop; its
Cholesky path equals its dense one; its hyperparameter class reads ENCORE's files."""

import copy
import json

import pytest
import torch

from fastedit.engine import EditSession
from fastedit.hparams import HyperParamsError
from fastedit.methods import plain
from fastedit.methods.encore import ENCOREHyperParams
from fastedit.methods.target import StopRule
from fastedit.models import random_model

from .test_parity import ARCHS, REQUESTS, TOL, hparams, rel_err, write_stats

GROUPS = [["{}"], ["The weather was cold. {}", "Because of this. {}"]]
MORE = {"case_id": 2, "prompt": "{} was born in the city of", "subject": "Marie Curie", "target_new": "Rome"}
# three sequential edits: one request, then two, then one again
BATCHES = [REQUESTS[:1], [REQUESTS[1], MORE], REQUESTS[:1]]


def encore_hp(model, **over):
    """Small λs, so that the earlier edits' keys weigh in the solve (the random statistics' C is of
    order 1, the keys' KKᵀ of order 1e-2)."""
    hp = hparams(model, "memit", mom2_update_weight=0.01, update_norm_lambda=0.003, prob_cutoff=-3,
                 add_prev_edits=True, sequential=True)
    hp.update(over)
    return hp


def oracle(model, tok, hp, groups, second_moment, batches, history_dtype=None):
    """The plain implementation's ΔW per batch, edit after edit on ``model``."""
    cache = {}
    return [plain.encore(model, tok, b, hp, groups, second_moment, cache, history_dtype) for b in batches]


def history_dtype(sess):
    """The dtype the session's journal keeps edit-history keys in (the oracle rounds its keys alike)."""
    return next(k.dtype for e in sess.journal for k in e.history.values())


def session_deltas(sess, batches, results=None):
    """ΔW per batch applied by ``sess``; each EditResult appended to ``results``."""
    out = []
    for b in batches:
        before = {k: w.detach().clone() for k, w in sess.edited_weights().items()}
        res = sess.apply(b)
        if results is not None:
            results.append(res)
        out.append({k: w.detach() - before[k] for k, w in sess.edited_weights().items()})
    return out


def compare(ours, ref, tol=TOL):
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.keys() == b.keys()
        for name in b:
            err = rel_err(a[name], b[name])
            assert err <= tol, f"edit {i}, {name}: relative Frobenius error {err:.3e} > {tol}"


def make_session(model, tok, hp, groups, stats_dir, **kw):
    return EditSession(model, tok, "encore", hp, templates=groups, stats_dir=stats_dir, progress=False, **kw)


@pytest.mark.parametrize("arch", ARCHS)
def test_parity_encore_sequential(arch, gpt2_tok, tmp_path):
    """Three edits one after the other: each solve holds the earlier edits' keys."""
    model = random_model(arch, dtype=torch.float64)
    hp = encore_hp(model)
    second_moment = write_stats(model, hp, tmp_path)
    base = copy.deepcopy(model)
    sess = make_session(model, gpt2_tok, hp, GROUPS, tmp_path)
    ours = session_deltas(sess, BATCHES)
    ref = oracle(copy.deepcopy(base), gpt2_tok, hp, GROUPS, second_moment, BATCHES, history_dtype(sess))
    compare(ours, ref)
    # the history matters: without it the third edit is another
    alone = oracle(base, gpt2_tok, {**hp, "add_prev_edits": False}, GROUPS, second_moment, BATCHES)
    name = next(iter(ref[2]))
    assert rel_err(alone[2][name], ref[2][name]) > 1e-3


def guess_request(model, tok, template, prompt="{} plays the sport of", subject="LeBron James"):
    """A request whose one-token target is the model's top guess after ``template`` (filled with the
    prompt), or None when that guess is not a whole word."""
    with torch.no_grad():
        logits = model(**tok(template.format(prompt).format(subject), return_tensors="pt")).logits
    g = int(logits[0, -1].argmax())
    if not (tok.decode([g]).startswith(" ") and tok(tok.decode([g]))["input_ids"] == [g]):
        return None
    return {"case_id": 9, "prompt": prompt, "subject": subject, "target_new": tok.decode([g]).strip()}


@pytest.mark.parametrize("cutoff", [-1, -2, -3, "mean-below", "mean-above"])
def test_parity_encore_early_stop(cutoff, gpt2_tok, tmp_path):
    """A target that is the argmax after the second template (not after the bare one, which ENCORE's
    rule skips) stops the optimisation where ENCORE's compute_z stops it, for counted and
    mean-probability cutoffs, in a batch whose other request runs on (the reference optimises one
    request at a time); the update equals the oracle's."""
    model = random_model("gpt2", dtype=torch.float64)
    groups = [["{}"], ["Because of this. {}"]]
    req = guess_request(model, gpt2_tok, groups[1][0])
    assert req is not None and guess_request(model, gpt2_tok, "{}")["target_new"] != req["target_new"]
    if isinstance(cutoff, str):
        with torch.no_grad():
            p = [model(**gpt2_tok(t.format(req["prompt"]).format(req["subject"]), return_tensors="pt")).logits[0, -1]
                 .softmax(-1)[gpt2_tok(" " + req["target_new"])["input_ids"][0]] for t in ("{}", groups[1][0])]
        mean = float(sum(p) / 2)  # the mean target probability at the first pass
        cutoff = mean * (0.99 if cutoff == "mean-below" else 1.02)
    hp = encore_hp(model, prob_cutoff=cutoff, v_lr=0.05, v_num_grad_steps=8)
    second_moment = write_stats(model, hp, tmp_path)
    batch = [req, REQUESTS[1]]  # optimised together in fastedit, one after the other in the oracle
    ref = oracle(copy.deepcopy(model), gpt2_tok, hp, groups, second_moment, [batch])
    res = []
    ours = session_deltas(make_session(model, gpt2_tok, hp, groups, tmp_path), [batch], res)
    compare(ours, ref)
    passes = [len(c) for c in res[0].loss_curves]
    if isinstance(hp["prob_cutoff"], int):
        # the target is the argmax at passes 1, 2 and 4, not 3: −3 stops at the fourth pass, the count
        # going on after the wrong one (ENCORE's own code stops there too)
        assert passes[0] == {-1: 1, -2: 2, -3: 4}[hp["prob_cutoff"]]
    elif hp["prob_cutoff"] < mean:
        assert passes[0] == 1
    assert passes[1] > passes[0] or passes[0] == hp["v_num_grad_steps"] - 1


def test_cholesky_path_equals_dense_path(gpt2_tok, tmp_path):
    """The growing Cholesky factor of λ_p C₀ + λ_n I + Σ_prev KKᵀ with Woodbury for the batch gives
    the reference's dense solve, over edits, an undo (the factor is rebuilt) and later edits."""
    model = random_model("llama", dtype=torch.float64)
    hp = encore_hp(model)
    write_stats(model, hp, tmp_path)
    dense = make_session(copy.deepcopy(model), gpt2_tok, hp, GROUPS, tmp_path, solver="lu")
    chol = make_session(model, gpt2_tok, hp, GROUPS, tmp_path)
    for sess in (dense, chol):
        first = sess.apply(BATCHES[0])
        sess.apply(BATCHES[1])
        sess.undo(first.edit_id)
        sess.apply(BATCHES[2])
    for name, w in dense.edited_weights().items():
        assert rel_err(chol.edited_weights()[name].detach(), w.detach()) < 1e-10, name


def test_loaded_session_continues_like_the_saved_one(gpt2_tok, tmp_path):
    """A session saved after two edits and loaded onto the base model makes the third edit the saved
    session makes (the history comes back from the journal, the factor is rebuilt from it)."""
    model = random_model("gpt2", dtype=torch.float64)
    base = copy.deepcopy(model)
    hp = encore_hp(model)
    write_stats(model, hp, tmp_path)
    sess = make_session(model, gpt2_tok, hp, GROUPS, tmp_path)
    session_deltas(sess, BATCHES[:2])
    sess.save(tmp_path / "saved")
    loaded = EditSession.load(tmp_path / "saved", base, gpt2_tok, stats_dir=tmp_path, progress=False)
    a, b = session_deltas(sess, BATCHES[2:]), session_deltas(loaded, BATCHES[2:])
    compare(b, a, tol=1e-10)


def test_encore_stops_by_its_own_cutoff_in_fast_mode(gpt2_tok, tmp_path):
    """Fast mode's early stop (patience, rule) gives way to ENCORE's prob_cutoff; exact mode has it too."""
    model = random_model("gpt2", dtype=torch.float64)
    hp = encore_hp(model, prob_cutoff=-3)
    write_stats(model, hp, tmp_path)
    for mode in ("exact", "fast"):
        opts = make_session(model, gpt2_tok, hp, GROUPS, tmp_path, mode=mode).editor.target_options()
        assert opts["early_stop"] == StopRule(-3) and not any(k.startswith("early_stop_") for k in opts)
    opts = make_session(model, gpt2_tok, {**hp, "prob_cutoff": 0}, GROUPS, tmp_path, mode="fast").editor.target_options()
    assert opts["early_stop"] is None


# ---------------------------------------------------------------------------- hyperparameters
def test_presets_are_encores_files():
    gpt2 = ENCOREHyperParams.preset("gpt2-xl")
    assert gpt2.layers == (13, 14, 15, 16, 17) and gpt2.mom2_update_weight == 20000
    assert gpt2.update_norm_lambda == 10 and gpt2.prob_cutoff == -4 and gpt2.add_prev_edits and gpt2.sequential
    l2 = ENCOREHyperParams.preset("llama-2-7b")
    assert (l2.layers, l2.mom2_update_weight, l2.update_norm_lambda, l2.prob_cutoff) == ((4, 5, 6, 7, 8), 15000, 10, -3)
    l3 = ENCOREHyperParams.preset("llama-3-8b")
    assert (l3.mom2_update_weight, l3.update_norm_lambda, l3.prob_cutoff, l3.mom2_n_samples) == (15000, 20, -2, 10000)
    assert l3.subject_index_rule == "concat" and l3.strip_target_bos  # ENCORE's code, not in its files
    assert ENCOREHyperParams.preset("smollm2-135m").mom2_update_weight == 1607


# the keys of ENCORE's hparams files (its ENCOREHyperParams dataclass)
ENCORE_KEYS = """layers layer_selection fact_token v_num_grad_steps v_lr v_loss_layer v_weight_decay clamp_norm_factor
kl_factor mom2_adjustment mom2_update_weight rewrite_module_tmp layer_module_tmp mlp_module_tmp attn_module_tmp
ln_f_module lm_head_module mom2_dataset mom2_n_samples mom2_dtype calculate_objective_value add_prev_edits
update_norm_lambda emmet_lambda prob_cutoff norm_control dynamic_multiplier random_vector_preservation use_gd
grad_desc_lr grad_desc_steps gd_lambda spectral_norm condition_num calculate_norms""".split()


@pytest.mark.parametrize("model", ["gpt2-xl", "llama-2-7b", "llama-3-8b", "smollm2-135m"])
def test_reads_encores_file_layout(model, tmp_path):
    """The shipped presets hold exactly the keys of ENCORE's files and read back unchanged;
    ``sequential`` (set by ENCORE's experiment script, not its files) defaults on."""
    from fastedit.hparams import PRESET_DIR, PRESET_SOURCES

    path = PRESET_DIR / "ENCORE" / f"{model}.json"
    data = json.loads(path.read_text())
    assert sorted(data) == sorted(ENCORE_KEYS) and ("ENCORE", model) in PRESET_SOURCES
    hp = ENCOREHyperParams.from_json(path)
    assert hp.sequential and hp.uses_history
    for key, value in data.items():
        assert getattr(hp, key) == (tuple(value) if isinstance(value, list) else value), key
    hp.to_json(tmp_path / "back.json")
    assert ENCOREHyperParams.from_json(tmp_path / "back.json") == hp


@pytest.mark.parametrize(
    "field,value",
    [("update_norm_lambda", "10"), ("update_norm_lambda", -1), ("prob_cutoff", "-4"), ("prob_cutoff", -2.5),
     ("prob_cutoff", 1.5), ("add_prev_edits", 1), ("sequential", "yes"), ("use_gd", "false"),
     ("grad_desc_steps", 0.5), ("dynamic_multiplier", -1), ("calculate_norms", None)],
)
def test_rejects_wrong_types_by_name(field, value):
    with pytest.raises(HyperParamsError, match=field):
        ENCOREHyperParams.from_dict({"layers": [1, 2], field: value})


def test_rejects_the_gradient_descent_variant_and_unknown_keys():
    with pytest.raises(HyperParamsError, match="use_gd"):
        ENCOREHyperParams.from_dict({"layers": [1], "use_gd": True})
    with pytest.raises(HyperParamsError, match="'emmet_lambdaa'"):
        ENCOREHyperParams.from_dict({"layers": [1], "emmet_lambdaa": 0.1})
