"""Shared pieces of the robustness sweep: a tiny model with healthy statistics, and guards that
check a refused input changed nothing (weights bit for bit, files outside the chosen folders)."""

import os
from pathlib import Path

import pytest
import torch

from fastedit.engine import EditSession
from fastedit.models import random_model
from textdata import write_stats_corpus

HP = {"layers": [1, 2], "v_num_grad_steps": 2, "v_loss_layer": 3, "mom2_update_weight": 10.0, "mom2_n_samples": 6}
GROUPS = [["{}"], ["The weather was cold. {}"]]
GOOD = {"case_id": 1, "prompt": "{} plays the sport of", "subject": "LeBron James", "target_new": "football",
        "target_true": "basketball"}


@pytest.fixture(scope="session")
def healthy_stats(tmp_path_factory, gpt2_tok):
    """(stats_dir, corpus) with full-rank statistics of layers 1 and 2 of ``random_model("gpt2")``."""
    root = tmp_path_factory.mktemp("robust-stats")
    corpus = write_stats_corpus(root / "corpus.jsonl")
    model = random_model("gpt2")
    EditSession(model, gpt2_tok, "memit", HP, stats_dir=root / "stats", stats_source=str(corpus),
                templates=GROUPS, progress=False).stats.ensure([1, 2])
    return root / "stats", corpus


def session(tok, stats_dir, hp=None, method="memit", **kw):
    """A session of a fresh tiny model on ``stats_dir`` (no text source: nothing is computed)."""
    kw.setdefault("templates", GROUPS if method == "memit" else ["{}", "The weather was cold. {}"])
    return EditSession(random_model("gpt2"), tok, method, hp or HP, stats_dir=stats_dir, progress=False, **kw)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    assert not changed, f"weights changed: {changed}"


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath, f)
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def assert_names_problem(err: BaseException, *words: str) -> None:
    """The message (or that of the error it was raised from) names the problem."""
    text = str(err) + " " + str(err.__cause__ or "")
    missing = [w for w in words if w.lower() not in text.lower()]
    assert not missing, f"{type(err).__name__}: {text!r} does not name {missing}"
