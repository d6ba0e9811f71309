"""Parity: fastedit's updates equal a plain float64 implementation of the reference formulas
(``fastedit.methods.plain``: whole-model passes, torch.optim.Adam, one request at a time).

On small random-weight models of every supported architecture, in float64, with the same context
templates and statistics, the weight update of each edited layer agrees to a relative Frobenius
error of at most 1e-6. Run with ``pytest -k parity``.
"""

import copy

import pytest
import torch

from fastedit.engine import EditSession
from fastedit.models import get_adapter, random_model
from fastedit.hparams import MEMITHyperParams
from fastedit.stats.synthetic import write_synthetic_second_moments

from fastedit.methods import plain

ARCHS = ["gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2"]
TOL = 1e-6

REQUESTS = [
    {"case_id": 0, "prompt": "{} plays the sport of", "subject": "LeBron James", "target_new": "football"},
    {"case_id": 1, "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", "target_new": "English"},
]
ROME_TEMPLATES = ["{}", "Hello there, friend. {}", "The cat sat on it. {}"]
MEMIT_GROUPS = [["{}"], ["The weather was cold. {}", "Because of this. {}"]]


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def hparams(model, method, **over):
    ad = get_adapter(model)
    hp = dict(
        layers=[1] if method != "memit" else [1, 2],
        fact_token="subject_last",
        v_num_grad_steps=6,
        v_lr=0.5,
        v_loss_layer=3,
        v_weight_decay=0.5,
        clamp_norm_factor=4.0 if method != "memit" else 0.75,
        kl_factor=0.0625,
        mom2_adjustment=True,
        rewrite_module_tmp=ad.rewrite_module_tmp,
        layer_module_tmp=ad.layer_module_tmp,
        mlp_module_tmp=ad.mlp_module_tmp,
        attn_module_tmp=ad.attn_module_tmp,
        ln_f_module=ad.ln_f_module,
        lm_head_module=ad.lm_head_name(model),
        mom2_dataset="wikipedia",
        mom2_n_samples=1000,
        mom2_dtype="float32",
        solve_dtype="float64",
    )
    if method == "memit":
        hp["mom2_update_weight"] = 50.0
    hp.update(over)
    return hp


def write_stats(model, hp, stats_dir):
    """A random second moment per layer, in the reference cache layout; returns layer → C as the
    plain implementation reads it."""
    paths = write_synthetic_second_moments(model, MEMITHyperParams.from_dict({"layers": hp["layers"],
                                           "mom2_n_samples": hp["mom2_n_samples"]}), stats_dir, n_vectors=400)
    return lambda layer: plain.read_second_moment(paths[layer])


def fastedit_deltas(model, tok, method, hp, templates, stats_dir, requests):
    sess = EditSession(model, tok, method, hp, templates=templates, stats_dir=stats_dir, progress=False)
    before = {k: w.detach().clone() for k, w in sess.edited_weights().items()}
    sess.apply(requests)
    return {k: w.detach() - before[k] for k, w in sess.edited_weights().items()}


def compare(ours, ref):
    assert ours.keys() == ref.keys()
    for name in ref:
        err = rel_err(ours[name], ref[name])
        assert err <= TOL, f"{name}: relative Frobenius error {err:.3e} > {TOL}"


@pytest.mark.parametrize("arch", ARCHS)
def test_parity_memit(arch, gpt2_tok, tmp_path):
    model = random_model(arch, dtype=torch.float64)
    hp = hparams(model, "memit")
    second_moment = write_stats(model, hp, tmp_path)
    ref_model = copy.deepcopy(model)
    ref = plain.memit(ref_model, gpt2_tok, REQUESTS, hp, MEMIT_GROUPS, second_moment)
    ours = fastedit_deltas(model, gpt2_tok, "memit", hp, MEMIT_GROUPS, tmp_path, REQUESTS)
    compare(ours, ref)
    # and the edited models agree
    for name, w in model.named_parameters():
        assert torch.allclose(w, ref_model.get_parameter(name), rtol=0, atol=1e-9), name


@pytest.mark.parametrize("arch", ARCHS)
def test_parity_rome_sequential(arch, gpt2_tok, tmp_path):
    """Two ROME edits one after the other: each update computed on the model the previous left."""
    model = random_model(arch, dtype=torch.float64)
    hp = hparams(model, "rome")
    second_moment = write_stats(model, hp, tmp_path)
    ref_model = copy.deepcopy(model)
    ref_total = {}
    for r in REQUESTS:
        for k, v in plain.rome(ref_model, gpt2_tok, r, hp, ROME_TEMPLATES, second_moment).items():
            ref_total[k] = ref_total.get(k, 0) + v
    ours = fastedit_deltas(model, gpt2_tok, "rome", hp, ROME_TEMPLATES, tmp_path, REQUESTS)
    compare(ours, ref_total)


@pytest.mark.parametrize(
    "method,flags,variant,u_avg",
    [
        ("r-rome", {}, "random_prefix", True),
        ("rome", {"enable_prompt_keys": True, "original_implementation": False}, "prompt", False),
        ("rome", {"enable_prompt_keys": True}, "prompt", True),
    ],
)
def test_parity_rrome_variants(method, flags, variant, u_avg, gpt2_tok, tmp_path):
    model = random_model("gpt2", dtype=torch.float64)
    hp = hparams(model, method, **flags)
    second_moment = write_stats(model, hp, tmp_path)
    ref_model = copy.deepcopy(model)
    ref = plain.rome(ref_model, gpt2_tok, REQUESTS[0], hp, ROME_TEMPLATES, second_moment, variant=variant, u_from_average=u_avg)
    ours = fastedit_deltas(model, gpt2_tok, method, hp, ROME_TEMPLATES, tmp_path, REQUESTS[:1])
    compare(ours, ref)


@pytest.mark.parametrize("fact_token", ["subject_first", "subject_first_after_last"])
def test_parity_fact_tokens(fact_token, gpt2_tok, tmp_path):
    model = random_model("llama", dtype=torch.float64)
    hp = hparams(model, "memit", fact_token=fact_token)
    second_moment = write_stats(model, hp, tmp_path)
    ref_model = copy.deepcopy(model)
    ref = plain.memit(ref_model, gpt2_tok, REQUESTS, hp, MEMIT_GROUPS, second_moment)
    ours = fastedit_deltas(model, gpt2_tok, "memit", hp, MEMIT_GROUPS, tmp_path, REQUESTS)
    compare(ours, ref)


def test_parity_no_mom2_adjustment_and_loss_layer_below_top(gpt2_tok, tmp_path):
    """ROME without the C⁻¹ adjustment; MEMIT reading its NLL from a layer below the top."""
    model = random_model("gptj", dtype=torch.float64)
    hp = hparams(model, "rome", mom2_adjustment=False)
    ref_model = copy.deepcopy(model)
    ref = plain.rome(ref_model, gpt2_tok, REQUESTS[1], hp, ROME_TEMPLATES, None)
    compare(fastedit_deltas(model, gpt2_tok, "rome", hp, ROME_TEMPLATES, tmp_path, REQUESTS[1:]), ref)

    model = random_model("gpt_neox", dtype=torch.float64)
    hp = hparams(model, "memit", layers=[0, 1], v_loss_layer=2)
    second_moment = write_stats(model, hp, tmp_path)
    ref_model = copy.deepcopy(model)
    ref = plain.memit(ref_model, gpt2_tok, REQUESTS, hp, MEMIT_GROUPS, second_moment)
    compare(fastedit_deltas(model, gpt2_tok, "memit", hp, MEMIT_GROUPS, tmp_path, REQUESTS), ref)
