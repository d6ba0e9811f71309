"""The drop-in functions: reference signatures, return values and files."""

import dataclasses
from typing import List

import pytest
import torch

from fastedit import compat
from fastedit.engine import EditSession
from fastedit.models import random_model
from textdata import write_stats_corpus

REQS = [
    {"case_id": 0, "prompt": "{} plays the sport of", "subject": "LeBron James",
     "target_new": {"str": "football"}, "target_true": {"str": "basketball"}},
    {"case_id": 1, "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
     "target_new": {"str": "English"}, "target_true": {"str": "French"}},
]
GROUPS = [["{}"], ["The weather was cold. {}"]]
TEMPLATES = ["{}", "The weather was cold. {}"]


@dataclasses.dataclass
class ReferenceMEMITHyperParams:  # the shape of kmeng01/memit's class
    layers: List[int]
    layer_selection: str
    fact_token: str
    v_num_grad_steps: int
    v_lr: float
    v_loss_layer: int
    v_weight_decay: float
    clamp_norm_factor: float
    kl_factor: float
    mom2_adjustment: bool
    mom2_update_weight: float
    rewrite_module_tmp: str
    layer_module_tmp: str
    mlp_module_tmp: str
    attn_module_tmp: str
    ln_f_module: str
    lm_head_module: str
    mom2_dataset: str
    mom2_n_samples: int
    mom2_dtype: str


def ref_hparams():
    return ReferenceMEMITHyperParams(
        [1, 2], "all", "subject_last", 4, 0.5, 3, 0.5, 0.75, 0.0625, True, 10.0,
        "transformer.h.{}.mlp.c_proj", "transformer.h.{}", "transformer.h.{}.mlp", "transformer.h.{}.attn",
        "transformer.ln_f", "transformer.wte", "wikipedia", 6, "float32",
    )


@pytest.fixture(autouse=True)
def stats_env(tmp_path, monkeypatch):
    src = write_stats_corpus(tmp_path / "t.jsonl")
    monkeypatch.setenv("FASTEDIT_STATS_DIR", str(tmp_path / "stats"))
    monkeypatch.setenv("FASTEDIT_STATS_SOURCE", str(src))


def test_apply_memit_matches_session(gpt2_tok, tmp_path):
    model = random_model("gpt2")
    twin = random_model("gpt2")
    compat.set_context_templates(model, "memit", GROUPS)
    edited, orig = compat.apply_memit_to_model(model, gpt2_tok, REQS, ref_hparams(), return_orig_weights=True)
    assert edited is model
    assert set(orig) == {"transformer.h.1.mlp.c_proj.weight", "transformer.h.2.mlp.c_proj.weight"}
    assert torch.equal(orig["transformer.h.1.mlp.c_proj.weight"], twin.get_parameter("transformer.h.1.mlp.c_proj.weight"))
    sess = EditSession(twin, gpt2_tok, "memit", dataclasses.asdict(ref_hparams()), templates=GROUPS, progress=False)
    sess.apply(REQS)
    for name in orig:
        assert torch.allclose(model.get_parameter(name), twin.get_parameter(name), atol=1e-6), name


def test_copy_leaves_the_original(gpt2_tok):
    model = random_model("gpt2")
    compat.set_context_templates(model, "memit", GROUPS)
    before = model.get_parameter("transformer.h.1.mlp.c_proj.weight").detach().clone()
    new, orig = compat.apply_memit_to_model(model, gpt2_tok, REQS[:1], ref_hparams(), copy=True)
    assert new is not model and orig == {}
    assert torch.equal(model.get_parameter("transformer.h.1.mlp.c_proj.weight"), before)
    assert not torch.equal(new.get_parameter("transformer.h.1.mlp.c_proj.weight"), before)


def test_execute_memit_shapes_and_cache_template(gpt2_tok, tmp_path):
    model = random_model("gpt2")
    compat.set_context_templates(model, "memit", GROUPS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tmpl = str(tmp_path / "kv" / "layer_{}_clamp_{}_case_{}.npz")
    deltas = compat.execute_memit(model, gpt2_tok, REQS, ref_hparams(), cache_template=tmpl)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), f"{n} changed"
    adj, resid = deltas["transformer.h.1.mlp.c_proj.weight"]
    assert adj.shape == (176, 2) and resid.shape == (64, 2)
    assert (tmp_path / "kv" / "layer_2_clamp_0.75_case_0.npz").exists()
    again = compat.execute_memit(model, gpt2_tok, REQS, ref_hparams(), cache_template=tmpl)  # z from the cache
    for name, (a, r) in deltas.items():
        assert torch.allclose(again[name][1], r, atol=1e-5) and torch.allclose(again[name][0], a, atol=1e-5)


def test_rome_functions(gpt2_tok):
    model = random_model("gpt2")
    compat.set_context_templates(model, "rome", TEMPLATES)
    hp = compat.ROMEHyperParams.from_dict({"layers": [1], "v_num_grad_steps": 4, "v_loss_layer": 3, "mom2_n_samples": 6})
    deltas = compat.execute_rome(model, gpt2_tok, REQS[0], hp)
    (u, v), = deltas.values()
    assert u.shape == (176,) and v.shape == (64,) and abs(float(u.norm()) - 1) < 1e-5
    model2, orig = compat.apply_rome_to_model(model, gpt2_tok, REQS, hp, return_orig_weights=True)
    assert list(orig) == ["transformer.h.1.mlp.c_proj.weight"]
    assert not torch.equal(model2.get_parameter("transformer.h.1.mlp.c_proj.weight"), orig["transformer.h.1.mlp.c_proj.weight"])


SUCCESSOR_HP = {"layers": [1, 2], "v_num_grad_steps": 4, "v_loss_layer": 3, "mom2_update_weight": 10.0,
                "mom2_n_samples": 6}


def _twin_session(method, tok, hp):
    twin = random_model("gpt2")
    return twin, EditSession(twin, tok, method, hp, templates=GROUPS, progress=False)


def _assert_same_weights(model, twin, sess):
    for name in sess.edited_weights():
        assert torch.allclose(model.get_parameter(name), twin.get_parameter(name), atol=1e-6), name


@pytest.mark.parametrize("method", ["emmet", "encore"])
def test_successor_entry_points_match_the_session(method, gpt2_tok):
    model = random_model("gpt2")
    compat.set_context_templates(model, method, GROUPS)
    twin, sess = _twin_session(method, gpt2_tok, SUCCESSOR_HP)
    apply = {"emmet": compat.apply_emmet_to_model, "encore": compat.apply_encore_to_model}[method]
    for batch in (REQS[:1], REQS[1:]):  # two calls: ENCORE's second solve holds the first call's keys
        out = apply(model, gpt2_tok, batch, dict(SUCCESSOR_HP), return_orig_weights=True)
        sess.apply(batch)
        assert out[0] is model and set(out[1]) == set(sess.edited_weights())
        assert set(out[2]) >= {"1", "2"} and out[2]["2"]["delta_norm"] > 0
        assert out[2]["1"]["preservation_distance"] is None
    _assert_same_weights(model, twin, sess)
    if method == "encore":
        assert out[2]["z_norms"][1]["final_norm"] > 0 and out[3] > 0 and out[4] >= out[3]


def test_alphaedit_entry_point_takes_and_returns_the_reference_state(gpt2_tok):
    from fastedit.methods.alphaedit import null_space_basis

    model = random_model("gpt2")
    compat.set_context_templates(model, "alphaedit", GROUPS)
    twin, sess = _twin_session("alphaedit", gpt2_tok, SUCCESSOR_HP)
    sess.stats.ensure(sess.hp.layers)
    bases = [null_space_basis(sess.stats.second_moment(l), sess.hp.nullspace_threshold) for l in sess.hp.layers]
    P = torch.stack([u @ u.T for u in bases])
    cache_c = torch.zeros_like(P)
    for batch in (REQS[:1], REQS[1:]):
        edited, cache_c = compat.apply_AlphaEdit_to_model(model, gpt2_tok, batch, dict(SUCCESSOR_HP), cache_c=cache_c, P=P)
        sess.apply(batch)
        assert edited is model
    _assert_same_weights(model, twin, sess)
    for i, layer in enumerate(sess.hp.layers):  # the returned cache_c is the sum of the batches' KKᵀ
        assert torch.allclose(cache_c[i].double(), sess.edit_history.gram(layer), rtol=1e-5, atol=1e-5)
    # without P and cache_c the session's own state is used
    again = random_model("gpt2")
    compat.set_context_templates(again, "alphaedit", GROUPS)
    for batch in (REQS[:1], REQS[1:]):
        compat.apply_AlphaEdit_to_model(again, gpt2_tok, batch, dict(SUCCESSOR_HP))
    _assert_same_weights(again, twin, sess)
