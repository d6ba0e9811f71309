"""Hyperparameters: reference files read unchanged, unknown keys rejected by name, presets."""

import json

import pytest

from fastedit.hparams import (
    PRESET_SOURCES,
    HyperParamsError,
    MEMITHyperParams,
    ROMEHyperParams,
    RROMEHyperParams,
    load_hparams,
)

# kmeng01/memit hparams/MEMIT/gpt2-xl.json, key for key
MEMIT_GPT2XL = {
    "layers": [13, 14, 15, 16, 17], "clamp_norm_factor": 0.75, "layer_selection": "all",
    "fact_token": "subject_last", "v_num_grad_steps": 20, "v_lr": 5e-1, "v_loss_layer": 47,
    "v_weight_decay": 0.5, "kl_factor": 0.0625, "mom2_adjustment": True, "mom2_update_weight": 20000,
    "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj", "layer_module_tmp": "transformer.h.{}",
    "mlp_module_tmp": "transformer.h.{}.mlp", "attn_module_tmp": "transformer.h.{}.attn",
    "ln_f_module": "transformer.ln_f", "lm_head_module": "transformer.wte", "mom2_dataset": "wikipedia",
    "mom2_n_samples": 100000, "mom2_dtype": "float32",
}


def test_reads_reference_file_unchanged(tmp_path):
    p = tmp_path / "gpt2-xl.json"
    p.write_text(json.dumps(MEMIT_GPT2XL))
    hp = MEMITHyperParams.from_json(p)
    assert hp.layers == (13, 14, 15, 16, 17) and hp.mom2_update_weight == 20000
    assert hp.to_dict()["layers"] == [13, 14, 15, 16, 17]
    with pytest.raises(Exception):
        hp.v_lr = 1.0  # frozen


def test_unknown_keys_rejected_by_name(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({**MEMIT_GPT2XL, "v_lrr": 0.1, "zzz": 1}))
    with pytest.raises(HyperParamsError, match="unknown key.*'v_lrr'.*'zzz'"):
        MEMITHyperParams.from_json(p)


def test_missing_and_invalid():
    with pytest.raises(HyperParamsError, match="missing key.*'layers'"):
        ROMEHyperParams.from_dict({"v_lr": 0.5})
    with pytest.raises(HyperParamsError, match="fact_token"):
        MEMITHyperParams.from_dict({"layers": [1], "fact_token": "last"})
    with pytest.raises(HyperParamsError, match="cannot both be true"):
        ROMEHyperParams.from_dict({"layers": [1], "enable_prompt_keys": True, "enable_random_prefix_keys": True})


def test_rrome_defaults():
    data = {"layers": [17]}
    assert ROMEHyperParams.from_dict(data).key_variant == "rome"
    assert RROMEHyperParams.from_dict(data).key_variant == "random_prefix"
    assert ROMEHyperParams.from_dict({**data, "enable_prompt_keys": True}).key_variant == "prompt"


@pytest.mark.parametrize("folder,model", sorted(PRESET_SOURCES))
def test_presets_load(folder, model):
    from fastedit.methods.registry import METHODS, method_names

    method_names()  # every method registered
    cls = next(m.hparams_class for m in METHODS.values() if m.hparams_class.PRESET_FOLDER == folder)
    hp = cls.preset(model)
    assert hp.layers


def test_reference_preset_values():
    assert MEMITHyperParams.preset("gpt2-xl").to_dict() == {**MEMITHyperParams.from_dict(MEMIT_GPT2XL).to_dict()}
    j = MEMITHyperParams.preset("gpt-j-6b")
    assert (j.layers, j.v_num_grad_steps, j.mom2_update_weight, j.v_loss_layer) == ((3, 4, 5, 6, 7, 8), 25, 15000, 27)
    ll = MEMITHyperParams.preset("llama-3-8b")
    assert (ll.layers, ll.v_lr, ll.v_loss_layer, ll.subject_index_rule) == ((4, 5, 6, 7, 8), 0.1, 31, "concat")
    r = ROMEHyperParams.preset("gpt2-xl")
    assert (r.layers, r.v_loss_layer, r.clamp_norm_factor, r.context_template_length_params) == ((17,), 47, 4, ((5, 10), (10, 10)))


def test_load_hparams_forms(tmp_path):
    assert load_hparams("memit", "gpt2-xl").layers[0] == 13
    assert load_hparams("r-rome", "gpt2-xl").key_variant == "random_prefix"
    assert load_hparams("memit", MEMIT_GPT2XL).v_loss_layer == 47
    with pytest.raises(HyperParamsError, match="no memit preset"):
        load_hparams("memit", "nonexistent-model")
    with pytest.raises(HyperParamsError, match="unknown method"):
        load_hparams("foo", "gpt2-xl")
