"""AlphaEdit: its hyperparameter files, and fastedit's updates against the plain implementation of
jianghoucheng/AlphaEdit's formulas (``fastedit.methods.plain.alphaedit``) in float64."""

import copy
import json

import pytest
import torch

from fastedit.engine import EditFailedError, EditSession
from fastedit.hparams import PRESET_DIR, PRESET_SOURCES, HyperParamsError
from fastedit.linalg import GrowingCholesky
from fastedit.methods import plain
from fastedit.methods.alphaedit import AlphaEditHyperParams, alphaedit_solve, alphaedit_solve_reduced, null_space_basis
from fastedit.models import get_adapter, random_model
from fastedit.stats.synthetic import write_synthetic_second_moments

PRESETS = ["gpt2-xl", "gpt-j-6b", "llama-3-8b", "smollm2-135m"]


def reference_file(preset: str) -> dict:
    """The shipped preset as AlphaEdit's own file lays it out: its keys only (no fastedit additions)."""
    data = json.loads((PRESET_DIR / "AlphaEdit" / f"{preset}.json").read_text())
    data.pop("subject_index_rule", None)
    data.pop("strip_target_bos", None)
    return data


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_name_their_source(preset):
    hp = AlphaEditHyperParams.preset(preset)
    assert hp.subject_index_rule == "concat" and hp.strip_target_bos
    assert ("AlphaEdit", preset) in PRESET_SOURCES
    assert hp.nullspace_threshold > 0 and hp.L2 > 0


@pytest.mark.parametrize("preset", PRESETS[:3])
def test_reads_alphaedit_file_layout(preset, tmp_path):
    """AlphaEdit's files (model_name, mom2_update_weight, nullspace_threshold, L2, no index rule) read
    unchanged, with the concat rule and BOS stripping its code always uses."""
    data = reference_file(preset)
    assert {"model_name", "nullspace_threshold", "L2", "mom2_update_weight", "attn_module_tmp"} <= set(data)
    path = tmp_path / "hp.json"
    path.write_text(json.dumps(data))
    hp = AlphaEditHyperParams.from_json(path)
    assert hp.nullspace_threshold == 2e-2 and hp.L2 == 10
    assert hp.subject_index_rule == "concat" and hp.strip_target_bos
    assert hp.layers == tuple(data["layers"]) and hp.model_name == data["model_name"]
    assert AlphaEditHyperParams.from_dict(hp.to_dict()) == hp


@pytest.mark.parametrize(
    "key,value",
    [("nullspace_threshold", "2e-2"), ("nullspace_threshold", 0), ("nullspace_threshold", float("nan")),
     ("L2", 0), ("L2", -1.0), ("L2", True), ("L2", "10")],
)
def test_rejects_bad_fields_by_name(key, value):
    data = reference_file("gpt2-xl")
    data[key] = value
    with pytest.raises(HyperParamsError, match=key):
        AlphaEditHyperParams.from_dict(data)


def test_rejects_unknown_and_missing_keys():
    data = reference_file("gpt2-xl")
    with pytest.raises(HyperParamsError, match="nullspace_treshold"):
        AlphaEditHyperParams.from_dict({**data, "nullspace_treshold": 0.01})
    del data["layers"]
    with pytest.raises(HyperParamsError, match="layers"):
        AlphaEditHyperParams.from_dict(data)


def test_null_space_projection_keeps_small_directions():
    """P = U_r U_rᵀ over the singular values below the threshold: a projection (P² = P, symmetric)
    of rank r that annihilates the large directions."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(9, 9, generator=gen, dtype=torch.float64))
    s = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.2, 0.01, 0.005, 0.001, 0.0], dtype=torch.float64)
    c = q @ torch.diag(s) @ q.T
    p = plain.null_space_projection(c, 0.02)
    assert torch.allclose(p, p.T, atol=1e-12) and torch.allclose(p @ p, p, atol=1e-12)
    assert round(float(p.trace())) == 4
    assert torch.allclose(p @ q[:, :5], torch.zeros(9, 5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(p @ q[:, 5:], q[:, 5:], atol=1e-12)


# ---------------------------------------------------------------------------------- parity
ARCHS = ["gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2"]
TOL = 1e-6
REQUESTS = [
    {"case_id": 0, "prompt": "{} plays the sport of", "subject": "LeBron James", "target_new": "football"},
    {"case_id": 1, "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", "target_new": "English"},
    {"case_id": 2, "prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Rome"},
]
GROUPS = [["{}"], ["The weather was cold. {}", "Because of this. {}"]]


def setup(arch, stats_dir, **over):
    """A float64 random model, AlphaEdit hyperparameters for it (float64 solve; the threshold in the
    middle of the synthetic spectrum so P keeps about half the directions) and the plain
    implementation's P and zero K_pK_pᵀ per layer."""
    model = random_model(arch, dtype=torch.float64)
    ad = get_adapter(model)
    hp = dict(
        layers=[1, 2], fact_token="subject_last", v_num_grad_steps=6, v_lr=0.5, v_loss_layer=3,
        v_weight_decay=0.5, clamp_norm_factor=0.75, kl_factor=0.0625, mom2_adjustment=True,
        mom2_update_weight=50.0, rewrite_module_tmp=ad.rewrite_module_tmp, layer_module_tmp=ad.layer_module_tmp,
        mlp_module_tmp=ad.mlp_module_tmp, attn_module_tmp=ad.attn_module_tmp, ln_f_module=ad.ln_f_module,
        lm_head_module=ad.lm_head_name(model), mom2_dataset="wikipedia", mom2_n_samples=1000,
        mom2_dtype="float32", solve_dtype="float64", L2=0.5,
    )
    hp.update(over)
    paths = write_synthetic_second_moments(model, AlphaEditHyperParams.from_dict(
        {"layers": hp["layers"], "mom2_n_samples": hp["mom2_n_samples"]}), stats_dir, n_vectors=400)
    cs = {l: plain.read_second_moment(paths[l]).double() for l in hp["layers"]}
    s = torch.linalg.svdvals(cs[hp["layers"][0]]).sort().values
    m = len(s) // 2
    hp.setdefault("nullspace_threshold", float(s[m - 1] + s[m]) / 2)
    projections = {l: plain.null_space_projection(c, hp["nullspace_threshold"]) for l, c in cs.items()}
    cache_c = {l: torch.zeros_like(c) for l, c in cs.items()}
    return model, hp, projections, cache_c


def compare(ours, ref, what=""):
    assert ours.keys() == ref.keys()
    for name in ref:
        err = float((ours[name] - ref[name]).norm() / ref[name].norm())
        assert err <= TOL, f"{what}{name}: relative Frobenius error {err:.3e} > {TOL}"


def session_deltas(sess, requests):
    before = {k: w.detach().clone() for k, w in sess.edited_weights().items()}
    sess.apply(requests)
    return {k: w.detach() - before[k] for k, w in sess.edited_weights().items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_parity_sequential_and_batch(arch, gpt2_tok, tmp_path):
    """Three single edits in a row (each solve sees the earlier ones' keys), then a batch of two."""
    model, hp, projections, cache_c = setup(arch, tmp_path)
    ref_model, base = copy.deepcopy(model), copy.deepcopy(model)
    sess = EditSession(model, gpt2_tok, "alphaedit", hp, templates=GROUPS, stats_dir=tmp_path, progress=False)
    for i, batch in enumerate([REQUESTS[:1], REQUESTS[1:2], REQUESTS[2:], REQUESTS[:2]]):
        ref = plain.alphaedit(ref_model, gpt2_tok, batch, hp, GROUPS, projections, cache_c)
        compare(session_deltas(sess, batch), ref, f"edit {i}: ")
    # and the edited models agree: every weight to 1e-6 of the total change
    for name, w in model.named_parameters():
        moved = float((ref_model.get_parameter(name) - base.get_parameter(name)).detach().norm())
        assert float((w - ref_model.get_parameter(name)).detach().norm()) <= TOL * max(moved, 1e-3), name


def test_fast_mode_reduction_equals_exact(gpt2_tok, tmp_path):
    """Fast mode's r × r system (a Cholesky factor grown by each edit's keys) gives the exact dense
    solve's updates, edit after edit, once the target optimisation is the same (no early stop)."""
    model, hp, _, _ = setup("llama", tmp_path)
    other = copy.deepcopy(model)
    exact = EditSession(model, gpt2_tok, "alphaedit", hp, templates=GROUPS, stats_dir=tmp_path, progress=False)
    fast = EditSession(other, gpt2_tok, "alphaedit", hp, templates=GROUPS, stats_dir=tmp_path, progress=False,
                       mode="fast", options={"early_stop": False, "low_precision": False})
    for i, batch in enumerate([REQUESTS[:1], REQUESTS[1:], REQUESTS[:1]]):
        compare(session_deltas(fast, batch), session_deltas(exact, batch), f"edit {i}: ")


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_undo_removes_history(mode, gpt2_tok, tmp_path):
    """After undoing the last edit, the next one solves as if it had never been made."""
    model, hp, _, _ = setup("gpt2", tmp_path)
    other = copy.deepcopy(model)
    kw = dict(templates=GROUPS, stats_dir=tmp_path, progress=False, mode=mode, options={"early_stop": False})
    a = EditSession(model, gpt2_tok, "alphaedit", hp, **kw)
    b = EditSession(other, gpt2_tok, "alphaedit", hp, **kw)
    a.apply(REQUESTS[0])
    last = a.apply(REQUESTS[1])
    assert a.edit_history.columns(1) == 2
    a.undo(last.edit_id)
    assert a.edit_history.columns(1) == 1
    b.apply(REQUESTS[0])
    compare(session_deltas(a, REQUESTS[2:]), session_deltas(b, REQUESTS[2:]))


def test_reduced_solve_equals_dense():
    """X = U_r(U_rᵀ(K_pK_pᵀ + KKᵀ)U_r + L2·I)⁻¹U_rᵀK solves (P(K_pK_pᵀ + KKᵀ) + L2·I)X = PK."""
    gen = torch.Generator().manual_seed(1)
    d, n = 37, 3
    x = torch.randn(200, d, generator=gen, dtype=torch.float64)
    c = x.T @ x / 200
    s = torch.linalg.svdvals(c).sort().values
    threshold = float(s[17] + s[18]) / 2  # between two singular values
    u = null_space_basis(c, threshold)
    p = u @ u.T
    assert torch.allclose(p, plain.null_space_projection(c, threshold), atol=1e-12)
    by_eigh = null_space_basis(c, threshold, by_svd=False)
    assert torch.allclose(by_eigh @ by_eigh.T, p, atol=1e-12)
    prev = [torch.randn(d, 2, generator=gen, dtype=torch.float64) for _ in range(3)]
    core = GrowingCholesky(0.5 * torch.eye(u.shape[1], dtype=torch.float64))
    for kp in prev:
        core.update(u.T @ kp)
    k = torch.randn(d, n, generator=gen, dtype=torch.float64)
    gram = sum(kp @ kp.T for kp in prev)
    dense = alphaedit_solve(p, k, gram, 0.5)
    reduced = alphaedit_solve_reduced(u, k, core)
    assert float((reduced - dense).norm() / dense.norm()) < 1e-12
    assert torch.allclose((p @ (gram + k @ k.T) + 0.5 * torch.eye(d, dtype=torch.float64)) @ dense, p @ k, atol=1e-10)


def test_empty_null_space_fails_cleanly(gpt2_tok, tmp_path):
    model, hp, _, _ = setup("gpt2", tmp_path, nullspace_threshold=1e-9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sess = EditSession(model, gpt2_tok, "alphaedit", hp, templates=GROUPS, stats_dir=tmp_path, progress=False)
    with pytest.raises(EditFailedError, match="nullspace_threshold"):
        sess.apply(REQUESTS[0])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert sess.edit_history.columns(1) == 0


def test_reads_easyedit_yaml(tmp_path):
    """EasyEdit's AlphaEdit files: alg_name "AlphaEdit", its run-time keys and P_loc (not read)."""
    data = reference_file("llama-3-8b")
    del data["model_name"]
    lines = ['alg_name: "AlphaEdit"', 'model_name: "./hugging_cache/llama-3-8b-instruct"', 'stats_dir: "./data/stats"',
             'P_loc: "./null_space_project.pt"', "device: 0", "v_lr: 1e-1", "L2: 1"]
    lines += [f"{k}: {json.dumps(v)}" for k, v in data.items() if k not in ("v_lr", "L2")]
    path = tmp_path / "llama3-8b.yaml"
    path.write_text("\n".join(lines) + "\n")
    hp = AlphaEditHyperParams.from_yaml(path)
    assert (hp.v_lr, hp.L2, hp.P_loc, hp.stats_dir) == (0.1, 1, "./null_space_project.pt", "./data/stats")
    with pytest.raises(HyperParamsError, match="alg_name"):
        AlphaEditHyperParams.from_dict({**data, "alg_name": "MEMIT"})


def test_save_load_continues_identically(gpt2_tok, tmp_path):
    """A loaded session rebuilds its r × r factor from the saved edit history: its next edit equals
    the original session's."""
    model, hp, _, _ = setup("gpt2", tmp_path / "stats")
    copy_model = copy.deepcopy(model)  # the unedited base the saved session is loaded onto
    kw = dict(templates=GROUPS, stats_dir=tmp_path / "stats", progress=False, mode="fast")
    sess = EditSession(model, gpt2_tok, "alphaedit", hp, **kw)
    sess.apply(REQUESTS[:2])
    sess.save(tmp_path / "saved")
    loaded = EditSession.load(tmp_path / "saved", copy_model, gpt2_tok, stats_dir=tmp_path / "stats", progress=False)
    assert loaded.edit_history.columns(1) == 2
    compare(session_deltas(loaded, REQUESTS[2:]), session_deltas(sess, REQUESTS[2:]))
