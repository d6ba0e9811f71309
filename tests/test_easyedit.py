"""EasyEdit users: its YAML hyperparameter files, its editor call and its metrics layout."""

import numpy as np
import pytest
import torch

from fastedit import compat
from fastedit.easyedit import BaseEditor, MEMITHyperParams, ROMEHyperParams, prepare_requests, token_accuracy
from fastedit.engine import EditSession
from fastedit.hparams import HyperParamsError, load_hparams
from fastedit.models import random_model
from fastedit.requests import EditRequest
from textdata import write_stats_corpus

# The layout of EasyEdit's hparams/ROME/gpt2-xl.yaml (its values; `5e-1` is a string to YAML).
ROME_YAML = """\
alg_name: "ROME"
model_name: "./hugging_cache/gpt2-xl"
stats_dir: "./data/stats"
device: 0
layers: [17]
fact_token: "subject_last"
v_num_grad_steps: 20
v_lr: 5e-1
v_loss_layer: 47
v_weight_decay: 0.5
clamp_norm_factor: 4
kl_factor: 0.0625
mom2_adjustment: false
context_template_length_params: [[5, 10], [10, 10]]
rewrite_module_tmp: "transformer.h.{}.mlp.c_proj"
layer_module_tmp: "transformer.h.{}"
mlp_module_tmp: "transformer.h.{}.mlp"
attn_module_tmp: "transformer.h.{}.attn"
ln_f_module: "transformer.ln_f"
lm_head_module: "transformer.wte"
mom2_dataset: "wikipedia"
mom2_n_samples: 100000
mom2_dtype: "float32"
model_parallel: false
fp16: false
"""

# A small GPT-2 version of EasyEdit's MEMIT file layout (its keys, this model's layers).
MEMIT_YAML = """\
alg_name: "MEMIT"
model_name: "./hugging_cache/gpt2-xl"
stats_dir: "{stats}"
device: 0
layers: [1, 2]
clamp_norm_factor: 0.75
layer_selection: "all"
fact_token: "subject_last"
v_num_grad_steps: 4
v_lr: 5e-1
v_loss_layer: 3
v_weight_decay: 0.5
kl_factor: 0.0625
mom2_adjustment: true
mom2_update_weight: 1e1
rewrite_module_tmp: "transformer.h.{{}}.mlp.c_proj"
layer_module_tmp: "transformer.h.{{}}"
mlp_module_tmp: "transformer.h.{{}}.mlp"
attn_module_tmp: "transformer.h.{{}}.attn"
ln_f_module: "transformer.ln_f"
lm_head_module: "transformer.wte"
mom2_dataset: "wikipedia"
mom2_n_samples: 6
mom2_dtype: "float32"
model_parallel: false
"""

PROMPTS = ["LeBron James plays the sport of", "The mother tongue of Danielle Darrieux is"]
SUBJECTS = ["LeBron James", "Danielle Darrieux"]
TARGETS = ["football", "English"]
TEMPLATES = ["{}", "The weather was cold. {}"]
GROUPS = [["{}"], ["The weather was cold. {}"]]
ROME_LAYER = "transformer.h.1.mlp.c_proj.weight"


@pytest.fixture
def stats_env(tmp_path, monkeypatch):
    src = write_stats_corpus(tmp_path / "t.jsonl")
    monkeypatch.setenv("FASTEDIT_STATS_SOURCE", str(src))
    monkeypatch.delenv("FASTEDIT_STATS_DIR", raising=False)
    return tmp_path / "stats"


def small_rome(tmp_path):
    text = ROME_YAML.replace("layers: [17]", "layers: [1]").replace("v_num_grad_steps: 20", "v_num_grad_steps: 4")
    path = tmp_path / "rome.yaml"
    path.write_text(text.replace("v_loss_layer: 47", "v_loss_layer: 3"))
    return ROMEHyperParams.from_hparams(str(path)[: -len(".yaml")])  # EasyEdit appends .yaml


# ---------------------------------------------------------------------------- hyperparameter files
def test_easyedit_yaml_loads_with_its_keys(tmp_path):
    path = tmp_path / "gpt2-xl.yaml"
    path.write_text(ROME_YAML)
    hp = load_hparams("rome", path)
    assert hp.v_lr == 0.5 and isinstance(hp.v_lr, float) and hp.layers == (17,) and hp.mom2_adjustment is False
    assert hp.alg_name == "ROME" and hp.stats_dir == "./data/stats" and hp.model_name == "./hugging_cache/gpt2-xl"
    assert (hp.device, hp.fp16, hp.model_parallel, hp.max_length) == (0, False, False, 40)
    assert ROMEHyperParams.from_dict(hp.to_dict()) == hp and ROMEHyperParams.from_dict(hp.to_dict()).device == 0
    assert ROMEHyperParams.from_hparams(tmp_path / "gpt2-xl") == hp


def test_yaml_errors_name_the_problem(tmp_path):
    with pytest.raises(HyperParamsError, match="does not exist"):
        load_hparams("rome", tmp_path / "missing.yaml")  # never "no preset"
    path = tmp_path / "memit.yaml"
    path.write_text(ROME_YAML)
    with pytest.raises(HyperParamsError, match="alg_name 'ROME' is not 'memit'"):
        load_hparams("memit", path)
    path.write_text(ROME_YAML + "v_lrr: 0.1\n")
    with pytest.raises(HyperParamsError, match="unknown key.*v_lrr"):
        load_hparams("rome", path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(HyperParamsError, match="expected a mapping"):
        load_hparams("rome", path)


def test_stats_dir_from_the_file_is_used(tmp_path, stats_env, gpt2_tok):
    model = random_model("gpt2")
    path = tmp_path / "memit.yaml"
    path.write_text(MEMIT_YAML.format(stats=stats_env))
    sess = EditSession(model, gpt2_tok, "memit", str(path), templates=GROUPS, progress=False)
    sess.stats.ensure([1])
    assert sess.stats.stats_dir == stats_env and any(stats_env.rglob("*.npz"))


# ---------------------------------------------------------------------------- drop-in keywords
def test_drop_in_takes_easyedit_keywords(gpt2_tok, tmp_path):
    model = random_model("gpt2")
    compat.set_context_templates(model, "rome", TEMPLATES)
    request = {"prompt": PROMPTS[0], "subject": SUBJECTS[0], "target_new": TARGETS[0], "ground_truth": "basketball",
               "portability": {}, "locality": {}}
    before = model.get_parameter(ROME_LAYER).detach().clone()
    edited, orig = compat.apply_rome_to_model(
        model, gpt2_tok, [request], small_rome(tmp_path), copy=False, return_orig_weights=True,
        keep_original_weight=False, train_ds=None,
    )
    assert torch.equal(orig[ROME_LAYER], before) and not torch.equal(edited.get_parameter(ROME_LAYER), before)


# ---------------------------------------------------------------------------- evaluation
def test_token_accuracy_is_teacher_forced(gpt2_tok):
    model = random_model("gpt2")
    prompt, target = PROMPTS[0], "football"
    ids = gpt2_tok(prompt + " " + target, return_tensors="pt")["input_ids"]
    n = len(gpt2_tok(prompt)["input_ids"])
    with torch.no_grad():
        pred = model(input_ids=ids).logits.argmax(-1)[0, n - 1 : -1]
    expected = float((pred == ids[0, n:]).float().mean())
    assert token_accuracy(model, gpt2_tok, prompt, target) == [pytest.approx(expected)]
    # a target the model predicts by construction scores 1
    with torch.no_grad():
        guess = model(**gpt2_tok(prompt, return_tensors="pt")).logits[0, -1].argmax()
    word = gpt2_tok.decode([int(guess)])
    if word.startswith(" ") and gpt2_tok(prompt + word)["input_ids"][n:] == [int(guess)]:
        assert token_accuracy(model, gpt2_tok, prompt, word[1:]) == [1.0]


def test_prepare_requests_checks_lengths_and_leaves_inputs_alone():
    loc = {"nq": {"prompt": ["who wrote hamlet", "capital of france"], "ground_truth": ["shakespeare", "paris"]}}
    reqs = prepare_requests(PROMPTS, TARGETS, subject=SUBJECTS, locality_inputs=loc, rephrase_prompts=PROMPTS)
    assert reqs[1]["locality"]["nq"] == {"prompt": "capital of france", "ground_truth": "paris"}
    assert reqs[0]["subject"] == SUBJECTS[0] and reqs[0]["rephrase_prompt"] == PROMPTS[0]
    assert isinstance(loc["nq"]["prompt"], list)
    with pytest.raises(ValueError, match="target_new: 1 given for 2"):
        prepare_requests(PROMPTS, TARGETS[:1])
    with pytest.raises(ValueError, match="does not occur in prompt"):
        prepare_requests(PROMPTS, TARGETS, subject=["Paris", "Danielle Darrieux"])


# ---------------------------------------------------------------------------- the editor
def _session_weights(model, tok, method, hp, templates, requests, sequential=True):
    sess = EditSession(model, tok, method, hp, templates=templates, progress=False)
    for r in requests:
        sess.apply([EditRequest.from_dict(r)])
    return {k: w.detach().clone() for k, w in sess.edited_weights().items()}


def test_rome_edit_layout_and_restore(gpt2_tok, tmp_path):
    model = random_model("gpt2")
    hp = small_rome(tmp_path)
    before = model.get_parameter(ROME_LAYER).detach().clone()
    editor = BaseEditor.from_hparams(hp, model=model, tok=gpt2_tok, templates=TEMPLATES)
    metrics, edited, weights_copy = editor.edit(
        prompts=PROMPTS, target_new=TARGETS, subject=SUBJECTS, ground_truth=["basketball", "French"],
        rephrase_prompts=["LeBron James is a player of", "Danielle Darrieux speaks"],
        locality_inputs={"nq": {"prompt": ["who wrote hamlet", "capital of france"], "ground_truth": ["shakespeare", "paris"]}},
        portability_inputs={"one_hop": {"prompt": ["LeBron James' sport is", "Darrieux spoke"], "ground_truth": ["football", "English"]}},
        sequential_edit=False,
    )
    assert edited is model and torch.equal(model.get_parameter(ROME_LAYER), before)  # each edit undone
    assert torch.equal(weights_copy[ROME_LAYER], before)
    assert [m["case_id"] for m in metrics] == [0, 1]
    for m in metrics:
        assert set(m) == {"pre", "post", "case_id", "requested_rewrite", "time"}
        for phase in ("pre", "post"):
            assert {"rewrite_acc", "rephrase_acc", "locality", "portability", "metric_meta"} <= set(m[phase])
            assert all(0 <= a <= 1 for a in m[phase]["rewrite_acc"] + m[phase]["portability"]["one_hop_acc"])
        assert isinstance(m["pre"]["locality"]["nq_output"][0], list) and len(m["post"]["locality"]["nq_acc"]) == 1
    # the edit itself is the engine's, with EasyEdit's ROME target (a space always added)
    twin = random_model("gpt2")
    req = {"prompt": PROMPTS[1], "subject": SUBJECTS[1], "target_new": " " + TARGETS[1]}
    ours = _session_weights(twin, gpt2_tok, "rome", hp, TEMPLATES, [req])
    model2 = random_model("gpt2")
    editor2 = BaseEditor(hp, model=model2, tok=gpt2_tok, templates=TEMPLATES)
    editor2.edit(prompts=PROMPTS[1], target_new=TARGETS[1], subject=SUBJECTS[1], sequential_edit=True, verbose=False)
    assert torch.equal(model2.get_parameter(ROME_LAYER), ours[ROME_LAYER])
    assert metrics[1]["post"]["rewrite_acc"] == token_accuracy(model2, gpt2_tok, PROMPTS[1], TARGETS[1])


def test_memit_sequential_and_batch(gpt2_tok, tmp_path, stats_env):
    path = tmp_path / "memit.yaml"
    path.write_text(MEMIT_YAML.format(stats=stats_env))
    hp = MEMITHyperParams.from_hparams(path)
    model = random_model("gpt2")
    editor = BaseEditor.from_hparams(hp, model=model, tok=gpt2_tok, templates=GROUPS)
    metrics, edited, weights_copy = editor.edit(PROMPTS, TARGETS, subject=SUBJECTS, sequential_edit=True, verbose=False)
    reqs = [{"prompt": p, "subject": s, "target_new": t} for p, s, t in zip(PROMPTS, SUBJECTS, TARGETS)]
    ours = _session_weights(random_model("gpt2"), gpt2_tok, "memit", hp, GROUPS, reqs)
    after_first = _session_weights(random_model("gpt2"), gpt2_tok, "memit", hp, GROUPS, reqs[:1])
    for name, w in ours.items():
        assert torch.equal(edited.get_parameter(name), w), name
        assert torch.equal(weights_copy[name], after_first[name]), name  # as before the last edit
    assert np.mean(metrics[0]["post"]["rewrite_acc"]) >= np.mean(metrics[0]["pre"]["rewrite_acc"]) - 1e-9

    batch_hp = hp.replace(easyedit_runtime=(("batch_size", 2),))
    model_b = random_model("gpt2")
    editor_b = BaseEditor(batch_hp, model=model_b, tok=gpt2_tok, templates=GROUPS)
    with pytest.raises(ValueError, match="batch_size is 2"):
        editor_b.edit(PROMPTS, TARGETS, subject=SUBJECTS)
    metrics_b, _, _ = editor_b.batch_edit(PROMPTS, TARGETS, subject=SUBJECTS, sequential_edit=True, verbose=False)
    sess = EditSession(random_model("gpt2"), gpt2_tok, "memit", hp, templates=GROUPS, progress=False)
    sess.apply([EditRequest.from_dict(r) for r in reqs])
    for name, w in sess.edited_weights().items():
        assert torch.equal(model_b.get_parameter(name), w), name
    assert metrics_b[0]["time"] == metrics_b[1]["time"]  # one edit for the batch


def test_editor_rejects_what_it_cannot_do(gpt2_tok, tmp_path):
    hp = small_rome(tmp_path)
    editor = BaseEditor(hp, model=random_model("gpt2"), tok=gpt2_tok, templates=TEMPLATES)
    with pytest.raises(ValueError, match="needs the subject"):
        editor.edit(PROMPTS[0], TARGETS[0])
    with pytest.raises(ValueError, match="cannot edit in batches"):
        editor.batch_edit(PROMPTS, TARGETS, subject=SUBJECTS)
    with pytest.raises(ValueError, match="no model_name"):
        BaseEditor(hp.replace(model_name=None))
