"""The target-value optimisation: packed suffixes over a cached prefix equal whole padded passes."""

import pytest
import torch

from fastedit.hparams import MEMITHyperParams, ROMEHyperParams
from fastedit.methods.target import compute_target_values
from fastedit.models import get_adapter, random_model
from fastedit.requests import EditRequest

REQS = [
    EditRequest.from_dict({"case_id": 0, "prompt": "{} plays the sport of", "subject": "LeBron James", "target_new": "football"}),
    EditRequest.from_dict({"case_id": 1, "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                           "target_new": "English language"}),
]
TEMPLATES = ["{}", "The weather was cold. {}", "Because of this, we know. {}"]


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama", "qwen2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("method", ["rome", "memit"])
def test_packed_equals_padded(arch, attn, method, gpt2_tok):
    model = random_model(arch, dtype=torch.float64)
    model.config._attn_implementation = attn
    ad = get_adapter(model)
    cls = ROMEHyperParams if method == "rome" else MEMITHyperParams
    hp = cls.from_dict({"layers": [1], "v_num_grad_steps": 5, "v_loss_layer": 2 if method == "memit" else 3,
                        "clamp_norm_factor": 4.0})
    site, source = ("mlp", "logits") if method == "rome" else ("block", "loss_layer")
    a = compute_target_values(model, gpt2_tok, ad, REQS, TEMPLATES, hp, 1, site, source, pack=True)
    b = compute_target_values(model, gpt2_tok, ad, REQS, TEMPLATES, hp, 1, site, source, pack=False)
    # float64 models; eager attention takes its softmax in float32 (and GPT-J and GPT-NeoX compute
    # parts of attention in float32 anyway), so different batch shapes agree to float32 rounding there
    tol = 1e-10 if attn == "sdpa" and arch not in ("gptj", "gpt_neox") else 1e-6
    assert torch.equal(a.v_init, b.v_init)
    assert torch.allclose(a.losses, b.losses, rtol=tol, atol=0, equal_nan=True)
    assert float((a.values - b.values).norm() / b.values.norm()) < tol
