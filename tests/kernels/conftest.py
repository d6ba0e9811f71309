"""Fixtures and hooks for the kernel tests (tests/conftest.py, which runs first, sets TRITON_INTERPRET)."""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent

# triton 3.6's interpreter turns one-element arrays into Python ints the way numpy 2 deprecates; it is
# the interpreter's business, not the kernels'.
_INTERPRETER_NOISE = "ignore:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.filterwarnings(_INTERPRETER_NOISE))


@pytest.fixture
def generator() -> "torch.Generator":  # noqa: F821
    import torch

    return torch.Generator().manual_seed(0)
