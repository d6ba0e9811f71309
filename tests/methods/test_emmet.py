"""EMMET: its hparams files read unchanged, and fastedit's updates equal the plain float64 oracle
(``fastedit.methods.plain.emmet``) on the tiny random models of every architecture."""

import json

import pytest
import torch

from fastedit.hparams import HyperParamsError
from fastedit.methods import plain
from fastedit.methods.emmet import EMMETHyperParams
from fastedit.models import random_model

from .test_parity import MEMIT_GROUPS, REQUESTS, hparams, write_stats

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
        hp = emmet_hparams(model, emmet_lambda=lam, update_norm_lambda=0.5)
        record = {}
        deltas = plain.emmet(model, gpt2_tok, REQUESTS, hp, MEMIT_GROUPS, write_stats(model, hp, tmp_path), record)
        for name, rec in record.items():
            delta = deltas[name]
            moved = (delta if delta.shape[1] == rec["keys"].shape[0] else delta.T) @ rec["keys"]  # (d_model, n)
            err = float((moved - rec["resid"]).norm() / rec["resid"].norm())
            assert (err < 1e-9) == exact, (name, lam, err)
            assert not rec["pseudo_inverse"]
