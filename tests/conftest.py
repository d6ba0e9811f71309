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


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"offline data folder {SHARED_DATA} not found (set FASTEDIT_DATA_DIR)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def gpt2_tok():
    from fastedit.models import gpt2_tokenizer

    return gpt2_tokenizer()
