"""What the engine tests share: requests, a small MEMIT configuration, a session maker."""

import torch

from fastedit.engine import EditSession
from fastedit.models import random_model

REQS = [
    {"case_id": 5, "prompt": "{} plays the sport of", "subject": "LeBron James", "target_new": "football"},
    {"case_id": 6, "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", "target_new": "English"},
    {"case_id": 7, "prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Rome"},
]
GROUPS = [["{}"], ["The weather was cold. {}"]]
HP = {"layers": [1, 2], "v_num_grad_steps": 4, "v_loss_layer": 3, "mom2_update_weight": 10.0, "mom2_n_samples": 6}


def make(gpt2_tok, tmp_path, corpus, dtype=torch.float32, model=None, **kw):
    """A MEMIT session on a tiny random GPT-2 (or ``model``), statistics from ``corpus``."""
    model = model if model is not None else random_model("gpt2", dtype=dtype)
    kw.setdefault("templates", GROUPS)
    return EditSession(model, gpt2_tok, "memit", HP, stats_dir=tmp_path / "stats",
                       stats_source=str(corpus), progress=False, **kw)


def weights(sess):
    """Copies of the session's edited weights."""
    return {k: w.detach().clone() for k, w in sess.edited_weights().items()}


def all_parameters(model):
    """Copies of every parameter of ``model``."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def assert_unchanged(model, before):
    for k, w in model.named_parameters():
        assert w.dtype == before[k].dtype and torch.equal(w, before[k]), f"{k} changed"
