"""Malformed hyperparameters: each refused with a HyperParamsError that names the field, before
any model is touched."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastedit.errors import InputError
from fastedit.hparams import HyperParamsError, MEMITHyperParams, ROMEHyperParams, load_hparams

from .conftest import HP, assert_names_problem, assert_same_state, session, state

BASE = {"layers": [1, 2], "mom2_n_samples": 6}
ROME_BASE = {"layers": [1], "mom2_n_samples": 6}

# (field, bad value): the field must appear in the message
MEMIT_CASES = [
    ("layers", "45"), ("layers", [1.9, 2.2]), ("layers", []), ("layers", [-1]), ("layers", None),
    ("layers", [True, 2]), ("layers", ["1"]), ("layers", [2, 1]), ("layers", 3),
    ("v_num_grad_steps", 0), ("v_num_grad_steps", -1), ("v_num_grad_steps", 2.5), ("v_num_grad_steps", "20"),
    ("v_lr", -0.5), ("v_lr", 0), ("v_lr", math.nan), ("v_lr", math.inf), ("v_lr", "0.5"),
    ("v_loss_layer", -99), ("v_loss_layer", 1.5),
    ("v_weight_decay", -1), ("v_weight_decay", math.nan),
    ("clamp_norm_factor", math.nan), ("clamp_norm_factor", 0), ("clamp_norm_factor", -1.0),
    ("kl_factor", -1), ("kl_factor", math.inf),
    ("mom2_adjustment", "yes"),
    ("rewrite_module_tmp", "transformer.h.mlp.c_proj"), ("rewrite_module_tmp", "transformer.h.{}.{x}"),
    ("rewrite_module_tmp", 5), ("rewrite_module_tmp", "transformer.h.{}.mlp.{}"),
    ("layer_module_tmp", "transformer.h"), ("mlp_module_tmp", "transformer.h.{0}{"),
    ("ln_f_module", ""), ("lm_head_module", 3),
    ("mom2_dataset", "../../../x"), ("mom2_dataset", "a/b"), ("mom2_dataset", ".."), ("mom2_dataset", ""),
    ("mom2_n_samples", 0), ("mom2_n_samples", 1.5), ("mom2_dtype", "int8"), ("mom2_min_count", -1),
    ("fact_token", "first"), ("fact_token", "last"), ("subject_index_rule", "x"), ("strip_target_bos", 1),
    ("target_skip_tokens", -1), ("target_skip_tokens", 1.5), ("target_skip_tokens", "2"),
    ("solve_dtype", "float16"), ("mom2_update_weight", -1), ("mom2_update_weight", math.nan),
    ("mom2_update_weight", "1"), ("layer_selection", "some"),
]
ROME_CASES = [
    ("layers", [1, 2]), ("context_template_length_params", [[5]]), ("context_template_length_params", [[5, 0]]),
    ("context_template_length_params", "5,10"), ("enable_prompt_keys", "no"), ("original_implementation", None),
]


@pytest.mark.parametrize("field,value", MEMIT_CASES, ids=[f"{f}={v!r}" for f, v in MEMIT_CASES])
def test_memit_field_refused(field, value):
    with pytest.raises(HyperParamsError) as e:
        MEMITHyperParams.from_dict({**BASE, field: value})
    assert_names_problem(e.value, field if field != "fact_token" or value != "last" else "fact_token='last'")


@pytest.mark.parametrize("field,value", ROME_CASES, ids=[f"{f}={v!r}" for f, v in ROME_CASES])
def test_rome_field_refused(field, value):
    with pytest.raises(HyperParamsError) as e:
        ROMEHyperParams.from_dict({**ROME_BASE, field: value})
    assert_names_problem(e.value, field if field != "layers" else "one layer")


def test_unknown_and_missing_keys_are_named():
    with pytest.raises(HyperParamsError, match="unknown key.*'v_lrr'"):
        MEMITHyperParams.from_dict({**BASE, "v_lrr": 1})
    with pytest.raises(HyperParamsError, match="missing key.*'layers'"):
        MEMITHyperParams.from_dict({"v_lr": 1})


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"a string"'])
def test_hparams_file_that_is_not_an_object(tmp_path, text):
    path = tmp_path / "hp.json"
    path.write_text(text)
    with pytest.raises(HyperParamsError, match="hp.json"):
        load_hparams("memit", path)


def test_layers_outside_the_model_refused_before_any_change(gpt2_tok, healthy_stats):
    with pytest.raises(HyperParamsError, match="out of range"):
        session(gpt2_tok, healthy_stats[0], {**HP, "layers": [1, 9]})


def test_loss_layer_beyond_the_model_fails_the_edit_and_restores(gpt2_tok, healthy_stats):
    from fastedit.engine import EditFailedError

    from .conftest import GOOD

    sess = session(gpt2_tok, healthy_stats[0], {**HP, "v_loss_layer": 40})
    before = state(sess.model)
    with pytest.raises(EditFailedError) as e:
        sess.apply(GOOD)
    assert_names_problem(e.value, "v_loss_layer")
    assert_same_state(sess.model, before)


# anything JSON can hold, in any field: a valid object or a HyperParamsError, nothing else
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 50) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=4,
)
FIELDS = sorted(f for f in MEMITHyperParams.__dataclass_fields__)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=JSON)
def test_any_value_in_any_field_is_valid_or_named(field, value):
    try:
        hp = MEMITHyperParams.from_dict({**BASE, field: value})
    except HyperParamsError as e:
        assert field in str(e) or "layers" in str(e) and field == "layers"
        assert isinstance(e, InputError)
        return
    hp.to_dict()  # a valid object is a usable one
    assert all(isinstance(l, int) for l in hp.layers)


@pytest.mark.parametrize("field,value", [("easyedit_runtime", None), ("easyedit_runtime", [["device", 0]]),
                                         ("stats_dir", 5), ("stats_dir", ""), ("alg_name", ["MEMIT"])])
def test_easyedit_fields_are_checked_by_name(field, value):
    """The fields an EasyEdit file adds are checked like the others (the run-time pairs are made by
    fastedit from EasyEdit's own keys, never read)."""
    with pytest.raises(HyperParamsError) as e:
        MEMITHyperParams.from_dict({**BASE, field: value})
    assert field in str(e.value)
