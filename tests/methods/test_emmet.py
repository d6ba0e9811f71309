"""EMMET: its hparams files read unchanged, and fastedit's updates equal the plain float64 oracle
(``fastedit.methods.plain.emmet``) on the tiny random models of every architecture."""

import copy
import json

import pytest
import torch

from fastedit.engine import EditSession
from fastedit.errors import NumericalError
from fastedit.hparams import HyperParamsError, load_hparams
from fastedit.methods import plain
from fastedit.methods.emmet import EMMETHyperParams, EmmetSolver
from fastedit.models import random_model

from .test_parity import MEMIT_GROUPS, REQUESTS, TOL, compare, hparams, write_stats

ARCHS = ["gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2"]

# scalable-model-editing/unified-model-editing hparams/EMMET/gpt2-xl.json, key for key
EMMET_GPT2XL = {
    "layers": [17], "clamp_norm_factor": 0.75, "layer_selection": "all", "fact_token": "subject_last",
    "v_num_grad_steps": 20, "v_lr": 5e-1, "v_loss_layer": 47, "v_weight_decay": 0.5, "kl_factor": 0.0625,
    "mom2_adjustment": True, "mom2_update_weight": 1000, "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj",
    "layer_module_tmp": "transformer.h.{}", "mlp_module_tmp": "transformer.h.{}.mlp",
    "attn_module_tmp": "transformer.h.{}.attn", "ln_f_module": "transformer.ln_f",
    "lm_head_module": "transformer.wte", "mom2_dataset": "wikipedia", "mom2_n_samples": 100000,
    "mom2_dtype": "float32", "calculate_objective_value": False, "update_norm_lambda": 0, "emmet_lambda": 0.1,
}


# ---------------------------------------------------------------------- hyperparameters
def test_reads_emmet_file_unchanged(tmp_path):
    p = tmp_path / "gpt2-xl.json"
    p.write_text(json.dumps(EMMET_GPT2XL))
    hp = EMMETHyperParams.from_json(p)
    assert hp.layers == (17,) and hp.mom2_update_weight == 1000 and hp.emmet_lambda == 0.1
    assert hp.update_norm_lambda == 0 and hp.calculate_objective_value is False
    # EMMET's compute_z and repr_tools: prefix and subject tokenised together, BOS dropped from targets
    assert hp.subject_index_rule == "concat" and hp.strip_target_bos is True
    assert EMMETHyperParams.from_dict(hp.to_dict()) == hp


@pytest.mark.parametrize("model", ["gpt2-xl", "gpt-j-6b", "llama-2-7b", "smollm2-135m"])
def test_presets(model):
    hp = EMMETHyperParams.preset(model)
    assert len(hp.layers) == 1 and hp.emmet_lambda == 0.1 and hp.update_norm_lambda == 0
    want = {"gpt2-xl": ((17,), 1000), "gpt-j-6b": ((5,), 1), "llama-2-7b": ((5,), 1), "smollm2-135m": ((4,), 0.14)}
    assert (hp.layers, hp.mom2_update_weight) == want[model]


@pytest.mark.parametrize(
    "key,value",
    [("emmet_lambda", "0.1"), ("emmet_lambda", -1.0), ("update_norm_lambda", True), ("update_norm_lambda", float("nan")),
     ("calculate_objective_value", 0), ("mom2_update_weight", "1")],
)
def test_wrong_types_rejected_by_name(key, value):
    with pytest.raises(HyperParamsError, match=key):
        EMMETHyperParams.from_dict({**EMMET_GPT2XL, key: value})


def test_unknown_key_and_zero_covariance_rejected():
    with pytest.raises(HyperParamsError, match="unknown key.*'emmet_lamda'"):
        EMMETHyperParams.from_dict({**EMMET_GPT2XL, "emmet_lamda": 0.1})
    with pytest.raises(HyperParamsError, match="update_norm_lambda"):
        EMMETHyperParams.from_dict({**EMMET_GPT2XL, "mom2_update_weight": 0})
    # C = update_norm_lambda · I alone is a valid C
    assert EMMETHyperParams.from_dict({**EMMET_GPT2XL, "mom2_update_weight": 0, "update_norm_lambda": 1.0})


def test_reads_easyedit_layout(tmp_path):
    """EasyEdit's hparams/EMMET/*.yaml: no calculate_objective_value, its own run-time keys."""
    p = tmp_path / "gpt2-xl.yaml"
    keep = {k: v for k, v in EMMET_GPT2XL.items() if k != "calculate_objective_value"}
    lines = [f"{k}: {json.dumps(v)}" for k, v in keep.items()]
    p.write_text("\n".join(lines + ['stats_dir: "./data/stats"', "device: 0", 'alg_name: "EMMET"']) + "\n")
    hp = load_hparams("emmet", p)
    assert isinstance(hp, EMMETHyperParams) and hp.emmet_lambda == 0.1 and hp.stats_dir == "./data/stats"
    p.write_text(p.read_text().replace('alg_name: "EMMET"', 'alg_name: "MEMIT"'))
    with pytest.raises(HyperParamsError, match="alg_name"):
        load_hparams("emmet", p)


# ---------------------------------------------------------------------- the oracle itself
def emmet_hparams(model, **over):
    hp = hparams(model, "memit", layers=[1, 2], mom2_update_weight=50.0, emmet_lambda=0.1, update_norm_lambda=0.0,
                 subject_index_rule="concat", strip_target_bos=True)
    hp.update(over)
    return hp


def test_oracle_meets_the_equality_constraint(gpt2_tok, tmp_path):
    """With emmet_lambda 0 the edited keys map exactly onto their share of the residual: ΔW_l K = R_l
    (and with emmet_lambda > 0 they do not)."""
    for lam, exact in ((0.0, True), (0.1, False)):
        model = random_model("llama", dtype=torch.float64)
        hp = emmet_hparams(model, layers=[2], emmet_lambda=lam, update_norm_lambda=0.5)
        record = {}
        deltas = plain.emmet(model, gpt2_tok, REQUESTS, hp, MEMIT_GROUPS, write_stats(model, hp, tmp_path), record)
        for name, rec in record.items():
            delta = deltas[name]
            moved = (delta if delta.shape[1] == rec["keys"].shape[0] else delta.T) @ rec["keys"]  # (d_model, n)
            err = float((moved - rec["resid"]).norm() / rec["resid"].norm())
            assert (err < 1e-9) == exact, (name, lam, err)
            assert not rec["pseudo_inverse"]


# ---------------------------------------------------------------------- fastedit against the oracle
MORE_REQUESTS = REQUESTS + [
    {"case_id": 2, "prompt": "{}, whose headquarters are in", "subject": "Toyota", "target_new": "Berlin"},
]


def fastedit_run(model, tok, hp, stats_dir, batches, solver):
    """Apply ``batches`` one after another in one session; returns (ΔW per weight, the results)."""
    sess = EditSession(model, tok, "emmet", hp, templates=MEMIT_GROUPS, stats_dir=stats_dir, progress=False,
                       solver=solver)
    before = {k: w.detach().clone() for k, w in sess.edited_weights().items()}
    results = [sess.apply(b) for b in batches]
    return {k: w.detach() - before[k] for k, w in sess.edited_weights().items()}, results


def oracle_run(model, tok, hp, second_moment, batches):
    total, records = {}, []
    for b in batches:
        record = {}
        for k, v in plain.emmet(model, tok, b, hp, MEMIT_GROUPS, second_moment, record).items():
            total[k] = total.get(k, 0) + v
        records.append(record)
    return total, records


@pytest.mark.parametrize("n,solver", [(1, "cholesky"), (3, "cholesky"), (3, "lu")])
@pytest.mark.parametrize("arch", ARCHS)
def test_parity_emmet(arch, n, solver, gpt2_tok, tmp_path):
    model = random_model(arch, dtype=torch.float64)
    hp = emmet_hparams(model)
    second_moment = write_stats(model, hp, tmp_path)
    ref_model = copy.deepcopy(model)
    batch = MORE_REQUESTS[:n]
    ref, _ = oracle_run(ref_model, gpt2_tok, hp, second_moment, [batch])
    ours, (result,) = fastedit_run(model, gpt2_tok, hp, tmp_path, [batch], solver)
    compare(ours, ref)
    assert result.info["pseudo_inverse"] == {1: False, 2: False}
    # and the edited models agree, to the updates' own tolerance (EMMET's updates are not small)
    scale = max(float(d.abs().max()) for d in ref.values())
    for name, w in model.named_parameters():
        assert torch.allclose(w, ref_model.get_parameter(name), rtol=0, atol=TOL * scale), name


@pytest.mark.parametrize("solver", ["cholesky", "lu"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_parity_emmet_sequential(arch, solver, gpt2_tok, tmp_path):
    """Two batches one after the other, each solved on the model the first left (EMMET keeps no
    history), with a ‖ΔW‖ penalty in C."""
    model = random_model(arch, dtype=torch.float64)
    hp = emmet_hparams(model, update_norm_lambda=0.3)
    second_moment = write_stats(model, hp, tmp_path)
    ref_model = copy.deepcopy(model)
    batches = [MORE_REQUESTS[:1], MORE_REQUESTS[1:]]
    ref, _ = oracle_run(ref_model, gpt2_tok, hp, second_moment, batches)
    ours, _ = fastedit_run(model, gpt2_tok, hp, tmp_path, batches, solver)
    compare(ours, ref)


@pytest.mark.parametrize("solver", ["cholesky", "lu"])
def test_singular_d_takes_the_pseudo_inverse(solver, gpt2_tok, tmp_path):
    """The same fact twice with emmet_lambda 0: D = KᵀC⁻¹K has two equal columns, its inverse fails as
    in the reference, and both fall back to pinv(D)."""
    model = random_model("gptj", dtype=torch.float64)
    hp = emmet_hparams(model, layers=[2], emmet_lambda=0.0)
    second_moment = write_stats(model, hp, tmp_path)
    ref_model = copy.deepcopy(model)
    twice = [REQUESTS[0], {**REQUESTS[0], "case_id": 7}]
    ref, (record,) = oracle_run(ref_model, gpt2_tok, hp, second_moment, [twice])
    assert all(r["pseudo_inverse"] for r in record.values())
    ours, (result,) = fastedit_run(model, gpt2_tok, hp, tmp_path, [twice], solver)
    assert result.info["pseudo_inverse"] == {2: True}
    compare(ours, ref)


def test_batch_of_one_ignores_emmet_lambda_and_the_weight_of_c(gpt2_tok, tmp_path):
    """With one edit D is a scalar: emmet_lambda is not added and mom2_update_weight cancels."""
    model = random_model("qwen2", dtype=torch.float64)
    hp = emmet_hparams(model)
    write_stats(model, hp, tmp_path)
    base, _ = fastedit_run(copy.deepcopy(model), gpt2_tok, hp, tmp_path, [REQUESTS[:1]], "cholesky")
    other = {**hp, "emmet_lambda": 5.0, "mom2_update_weight": 3.0}
    changed, _ = fastedit_run(copy.deepcopy(model), gpt2_tok, other, tmp_path, [REQUESTS[:1]], "cholesky")
    compare(changed, base)
    two, _ = fastedit_run(copy.deepcopy(model), gpt2_tok, other, tmp_path, [REQUESTS], "cholesky")
    two_base, _ = fastedit_run(copy.deepcopy(model), gpt2_tok, hp, tmp_path, [REQUESTS], "cholesky")
    assert all(float((two[k] - two_base[k]).norm()) > 1e-3 * float(two_base[k].norm()) for k in two)


@pytest.mark.parametrize("kind", ["cholesky", "lu"])
def test_singular_c_fails_with_numerical_error(kind):
    """C = E[kkᵀ] of too few vectors, with no ‖ΔW‖ penalty: the reference has no fallback there."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 40, generator=g)
    solver = EmmetSolver(lambda layer: a.T @ a / 5, 1.0, 0.0, torch.float64, kind)
    with pytest.raises(NumericalError, match="layer 3"):
        solver(3, torch.randn(40, 2, dtype=torch.float64, generator=g))
    # the penalty makes C invertible
    EmmetSolver(lambda layer: a.T @ a / 5, 1.0, 0.5, torch.float64, kind)(3, torch.randn(40, 2, dtype=torch.float64, generator=g))


# ---------------------------------------------------------------------- target tokens on Llama-2
def reference_target_ids(tok, model_name, target):
    """EMMET's compute_z: the spaced target tokenised, then two ids dropped on Llama-2, else a
    leading BOS/UNK."""
    ids = tok(" " + target)["input_ids"]
    if "llama-2" in model_name.lower():
        return ids[2:]
    return ids[1:] if ids[0] in (tok.bos_token_id, tok.unk_token_id) else ids


def named_model(arch, name, vocab_size, **kw):
    model = random_model(arch, vocab_size=vocab_size, **kw)
    model.config._name_or_path = name
    return model


@pytest.mark.parametrize("name", ["meta-llama/Llama-2-7b-hf", "/models/llama-2-7b-chat", "random-llama",
                                  "meta-llama/Meta-Llama-3-8B"])
def test_target_ids_follow_emmets_llama2_rule(name):
    from sp_tokenizer import llama2_style_tokenizer

    from fastedit.methods.alphaedit import AlphaEditHyperParams
    from fastedit.methods.encore import ENCOREHyperParams
    from fastedit.methods.target import target_token_ids
    from fastedit.models import get_adapter
    from fastedit.requests import EditRequest

    tok = llama2_style_tokenizer()
    model = named_model("llama", name, len(tok))
    llama2 = "llama-2" in name.lower()
    hp = EMMETHyperParams.from_dict({"layers": [1]}).resolve(get_adapter(model), model)
    assert hp.target_skip_tokens == (2 if llama2 else None)
    for target in ("football", "English language"):
        req = EditRequest.from_dict({"prompt": "{} is", "subject": "Toyota", "target_new": target})
        ids = target_token_ids(tok, req, hp.strip_target_bos, hp.target_skip_tokens)
        assert ids == reference_target_ids(tok, name, target)
        # on Llama-2 the BOS and the lone "▁" go; elsewhere the "▁" stays, as in the reference
        assert tok.decode(ids) == (target if llama2 else " " + target)
    # AlphaEdit's and ENCORE's compute_z have no Llama-2 rule; an explicit value is kept
    for cls in (AlphaEditHyperParams, ENCOREHyperParams):
        assert cls.from_dict({"layers": [1]}).resolve(get_adapter(model), model).target_skip_tokens is None
    kept = EMMETHyperParams.from_dict({"layers": [1], "target_skip_tokens": 1}).resolve(get_adapter(model), model)
    assert kept.target_skip_tokens == 1


def test_target_ids_unchanged_on_gpt2(gpt2_tok):
    from fastedit.methods.target import target_token_ids
    from fastedit.models import get_adapter
    from fastedit.requests import EditRequest

    model = random_model("gpt2")
    hp = EMMETHyperParams.from_dict({"layers": [1]}).resolve(get_adapter(model), model)
    req = EditRequest.from_dict({"prompt": "{} is", "subject": "Toyota", "target_new": "English language"})
    assert hp.target_skip_tokens is None
    assert target_token_ids(gpt2_tok, req, hp.strip_target_bos, hp.target_skip_tokens) == gpt2_tok(" English language")["input_ids"]


def test_skip_that_drops_a_word_piece_is_logged(caplog, gpt2_tok):
    from fastedit.methods.target import target_token_ids
    from fastedit.requests import EditRequest

    req = EditRequest.from_dict({"prompt": "{} is", "subject": "Toyota", "target_new": "English language"})
    with caplog.at_level("WARNING"):
        ids = target_token_ids(gpt2_tok, req, True, 1)
    assert ids == gpt2_tok(" English language")["input_ids"][1:] and "drops ' English'" in caplog.text


@pytest.mark.parametrize("name", ["meta-llama/Llama-2-7b-hf", "random-llama"])
def test_parity_emmet_llama2_tokenizer(name, tmp_path):
    """fastedit and the oracle on a Llama-2-style tokenizer: equal updates under each naming (the
    Llama-2 rule on one, the BOS rule on the other), and the rule changes the update."""
    from sp_tokenizer import llama2_style_tokenizer

    tok = llama2_style_tokenizer()
    model = named_model("llama", name, len(tok), dtype=torch.float64)
    hp = emmet_hparams(model)
    second_moment = write_stats(model, hp, tmp_path)
    ref_model = copy.deepcopy(model)
    ref, _ = oracle_run(ref_model, tok, hp, second_moment, [MORE_REQUESTS])
    ours, _ = fastedit_run(copy.deepcopy(model), tok, hp, tmp_path, [MORE_REQUESTS], "cholesky")
    compare(ours, ref)
    other, _ = oracle_run(copy.deepcopy(model), tok, {**hp, "target_skip_tokens": 1 if "llama-2" in name.lower() else 2},
                          second_moment, [MORE_REQUESTS])
    assert all(float((other[k] - ref[k]).norm()) > 1e-3 * float(ref[k].norm()) for k in ref)
