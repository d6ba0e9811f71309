"""The engine on a GPU: exact mode gives the CPU's updates, fast mode's bf16 path runs and edits.

Skipped without CUDA (``pytest -m gpu`` selects them; benchmarks/gpu_suite.sh runs them).
"""

import logging

import pytest
import torch
from gating import requires_cuda

from fastedit.engine import EditSession
from fastedit.hparams import MEMITHyperParams
from fastedit.methods.target import compute_target_values
from fastedit.models import get_adapter, random_model
from fastedit.profiling import PhaseTimer
from fastedit.requests import EditRequest
from fastedit.stats.synthetic import write_synthetic_second_moments

pytestmark = [pytest.mark.gpu, requires_cuda]

REQS = [
    {"case_id": 1, "prompt": "{} plays the sport of", "subject": "LeBron James", "target_new": "football"},
    {"case_id": 2, "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", "target_new": "English"},
]
GROUPS = [["{}"], ["The weather was cold. {}"]]
HP = {"layers": [1, 2], "v_num_grad_steps": 6, "v_loss_layer": 3, "mom2_update_weight": 10.0, "mom2_n_samples": 4}


def _session(tok, tmp_path, device, dtype=torch.float64, **kw):
    # a random model's keys span too few directions for a positive-definite C (a singular system is
    # solved differently by the CPU and GPU factorisations): synthetic, well-conditioned statistics
    model = random_model("gpt2", dtype=dtype)
    stats = tmp_path / f"stats-{device}-{dtype}"
    write_synthetic_second_moments(model, MEMITHyperParams.from_dict(HP), stats)
    return EditSession(model.to(device), tok, "memit", HP, stats_dir=stats, templates=GROUPS, progress=False, **kw)


def test_exact_mode_on_cuda_matches_cpu(gpt2_tok, tmp_path):
    cpu = _session(gpt2_tok, tmp_path, "cpu")
    gpu = _session(gpt2_tok, tmp_path, "cuda")
    for req in REQS:
        a, b = cpu.apply(req), gpu.apply(req)
        for ua, ub in zip(a.updates, b.updates):
            assert ub.keys_side.is_cuda and ua.weight_name == ub.weight_name
            da = (ua.keys_side.double() @ ua.values_side.double().T)
            db = (ub.keys_side.double() @ ub.values_side.double().T).cpu()
            err = ((da - db).norm() / da.norm()).item()
            assert err < 1e-6, (ua.weight_name, err)


def test_fast_mode_bf16_on_cuda_edits_and_undoes(gpt2_tok, tmp_path):
    sess = _session(gpt2_tok, tmp_path, "cuda", dtype=torch.bfloat16, mode="fast")
    before = {k: w.detach().clone() for k, w in sess.edited_weights().items()}
    res = sess.apply(REQS[0])
    assert all(torch.isfinite(torch.tensor(v)) and v > 0 for v in res.update_norms.values())
    changed = [k for k, w in sess.edited_weights().items() if not torch.equal(w, before[k])]
    assert changed, "the bf16 weights did not change"
    sess.undo(res.edit_id)
    for k, w in sess.edited_weights().items():
        assert torch.equal(w, before[k]), k


TARGET_REQS = [
    EditRequest.from_dict({"case_id": 0, "prompt": "{} plays the sport of", "subject": "LeBron James",
                           "target_new": "football"}),
    EditRequest.from_dict({"case_id": 1, "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                           "target_new": "English language"}),
]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_replays_the_step(arch, dtype, gpt2_tok, caplog):
    """The optimisation step captured as a CUDA graph and replayed gives the eager loop's result (up
    to Adam's capturable rounding and bf16), and the capture did not fall back to the eager loop."""
    model = random_model(arch, dtype=dtype, device="cuda")
    ad = get_adapter(model)
    hp = MEMITHyperParams.from_dict({"layers": [1], "v_num_grad_steps": 12, "v_loss_layer": 2, "clamp_norm_factor": 4.0})
    templates = ["{}", "The weather was cold. {}"]
    eager = compute_target_values(model, gpt2_tok, ad, TARGET_REQS, templates, hp, 1, "block", "loss_layer")
    with caplog.at_level(logging.WARNING), PhaseTimer() as timer:
        graphed = compute_target_values(model, gpt2_tok, ad, TARGET_REQS, templates, hp, 1, "block", "loss_layer",
                                        cuda_graph=True)
    assert not [r for r in caplog.records if "capture" in r.getMessage()], caplog.text
    assert "target/replay" in timer.totals and "target/capture" in timer.totals
    assert graphed.steps == eager.steps
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert torch.allclose(graphed.losses, eager.losses, rtol=tol, atol=0, equal_nan=True)
    rel = float((graphed.values - eager.values).norm() / eager.values.norm())
    assert rel < tol, rel


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cuda_graph_kept_across_edits(arch, gpt2_tok, caplog):
    """Through a session's kept programs the graph is captured by the first edit of a shape and
    replayed by later ones (A, B, A): each edit gives the eager loop's result, the third captures
    nothing and replays the first one's graph."""
    from fastedit.methods.stepping import StepPrograms

    model = random_model(arch, dtype=torch.float32, device="cuda")
    ad = get_adapter(model)
    hp = MEMITHyperParams.from_dict({"layers": [1], "v_num_grad_steps": 12, "v_loss_layer": 2, "clamp_norm_factor": 4.0})
    templates = ["{}", "The weather was cold. {}"]
    programs, captured = StepPrograms(), []
    for reqs in ([TARGET_REQS[0]], [TARGET_REQS[1]], [TARGET_REQS[0]]):
        eager = compute_target_values(model, gpt2_tok, ad, reqs, templates, hp, 1, "block", "loss_layer")
        with caplog.at_level(logging.WARNING), PhaseTimer() as timer:
            kept = compute_target_values(model, gpt2_tok, ad, reqs, templates, hp, 1, "block", "loss_layer",
                                         cuda_graph=True, programs=programs)
        assert not [r for r in caplog.records if "capture" in r.getMessage()], caplog.text
        assert "target/replay" in timer.totals
        captured.append("target/capture" in timer.totals)
        assert kept.steps == eager.steps
        assert torch.allclose(kept.losses, eager.losses, rtol=1e-4, atol=0, equal_nan=True)
        assert float((kept.values - eager.values).norm() / eager.values.norm()) < 1e-4
    assert captured[0] and not captured[2] and programs.built == sum(captured)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_device_map_over_two_gpus(gpt2_tok, tmp_path):
    """A model split over two GPUs by a device_map (edited layers on different cards) edits as the
    same model on one GPU, and each update's factors live on its weight's device."""
    from accelerate import dispatch_model

    hp = {**HP, "layers": [1, 2]}
    one = random_model("llama", dtype=torch.float64)
    split = random_model("llama", dtype=torch.float64)
    stats = tmp_path / "stats"
    write_synthetic_second_moments(one, MEMITHyperParams.from_dict(hp), stats)
    n = split.config.num_hidden_layers
    dmap = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": 1, "lm_head": 1}
    dmap.update({f"model.layers.{i}": 0 if i < 2 else 1 for i in range(n)})
    dispatch_model(split, device_map=dmap)
    sessions = [
        EditSession(m, gpt2_tok, "memit", hp, stats_dir=stats, templates=GROUPS, progress=False)
        for m in (one.to("cuda:0"), split)
    ]
    for req in REQS:
        a, b = (s.apply(req) for s in sessions)
        for ua, ub in zip(a.updates, b.updates):
            w = sessions[1].model.get_parameter(ub.weight_name)
            assert ub.keys_side.device == w.device and ub.values_side.device == w.device
            da = ua.keys_side.double().cpu() @ ua.values_side.double().cpu().T
            db = ub.keys_side.double().cpu() @ ub.values_side.double().cpu().T
            assert float((da - db).norm() / da.norm()) < 1e-8, ua.weight_name
