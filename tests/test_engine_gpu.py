"""The engine on a GPU: exact mode gives the CPU's updates, fast mode's bf16 path runs and edits.

Skipped without CUDA (``pytest -m gpu`` selects them; benchmarks/gpu_suite.sh runs them).
"""

import pytest
import torch
from gating import requires_cuda

from fastedit.engine import EditSession
from fastedit.hparams import MEMITHyperParams
from fastedit.models import random_model
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
