"""Shared test setup.

Triton kernels run in interpreter mode on CPU tensors when no GPU is present: TRITON_INTERPRET must be
set before any ``@triton.jit`` function is defined, so it is set here, before fastedit is imported.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FASTEDIT_DATA_DIR", REPO.parent / "shared" / "data"))

# Keep converted models and statistics out of the user's home during CI runs.
os.environ.setdefault("FASTEDIT_CACHE", str(REPO / ".fastedit-cache"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Property-based cases are the same at every run (a failure reproduces; nothing is written to disk).
# The transformers 4.x environment runs no property-based test and has no hypothesis.
try:
    from hypothesis import settings
except ImportError:
    pass
else:
    settings.register_profile("fastedit", derandomize=True, database=None)
    settings.load_profile("fastedit")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"offline data folder {SHARED_DATA} not found (set FASTEDIT_DATA_DIR)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def gpt2_tok():
    from fastedit.models import gpt2_tokenizer

    return gpt2_tokenizer()


@pytest.fixture(scope="session")
def own_guess_request():
    """``own_guess_request(model, tok)``: a request whose target is the model's own top single-token
    guess for "LeBron James plays the sport of", so its target optimisation can stop at once (a random
    model barely moves its output in a few steps)."""

    def make(model, tok):
        import torch

        from fastedit.requests import EditRequest

        with torch.no_grad():
            logits = model(**tok("LeBron James plays the sport of", return_tensors="pt").to(model.device)).logits
        top = logits[0, -1].topk(50).indices.tolist()
        guess = next(t for t in top if tok.decode([t]).startswith(" ") and tok(tok.decode([t]))["input_ids"] == [t])
        return EditRequest.from_dict({"prompt": "{} plays the sport of", "subject": "LeBron James",
                                      "target_new": tok.decode([guess]).strip()})

    return make

