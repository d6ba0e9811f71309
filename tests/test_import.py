"""Importing fastedit needs no compiled extension, no triton and initialises no CUDA (checked in a fresh process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **env},
        timeout=120,
    )


def test_import_fastedit_loads_no_extension_and_no_cuda():
    done = _run(
        """
        import sys
        import fastedit
        import torch
        assert "fastedit._C" not in sys.modules, "import fastedit loaded the compiled extension"
        assert "triton" not in sys.modules, "import fastedit imported triton"
        assert not torch.cuda.is_initialized(), "import fastedit initialised CUDA"
        print("ok")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_import_ops_is_lazy_too():
    """fastedit.ops defines its torch.library ops at import but loads the extension only when asked."""
    done = _run(
        """
        import sys
        import torch
        from fastedit import ops
        assert "fastedit._C" not in sys.modules, "import fastedit.ops loaded the compiled extension"
        assert not torch.cuda.is_initialized(), "import fastedit.ops initialised CUDA"
        print("ok")
        """
    )
    assert done.returncode == 0, done.stderr


def test_fastedit_works_when_the_extension_cannot_be_imported():
    """An extension that is missing (or built for another torch) is logged and the torch path is used."""
    done = _run(
        """
        import importlib.abc, logging, sys

        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "fastedit._C":
                    raise ImportError("simulated: no compiled extension")
                return None

        sys.meta_path.insert(0, Refuse())
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
        import torch
        from fastedit import _ext, ops
        A = 2 * torch.eye(3, dtype=torch.float64)
        x = ops.spd_solve(A, torch.ones(3, dtype=torch.float64))
        assert torch.allclose(x, torch.full((3,), 0.5, dtype=torch.float64))
        assert not _ext.available()
        print("reason:", _ext.unavailable_reason())
        """
    )
    assert done.returncode == 0, done.stderr
    assert "simulated: no compiled extension" in done.stdout
    assert "not loaded" in done.stdout  # the one log line saying why


def test_fastedit_works_without_triton():
    """Without triton the kernels package still imports; ops use torch and say why Triton is out."""
    done = _run(
        """
        import importlib.abc, sys

        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "triton" or name.startswith("triton."):
                    raise ImportError("simulated: triton not installed")
                return None

        sys.meta_path.insert(0, Refuse())
        import torch
        from fastedit import ops
        from fastedit.kernels import HAS_TRITON
        assert not HAS_TRITON
        W = torch.zeros(3, 4, dtype=torch.bfloat16)
        ops.lowrank_update_(W, torch.ones(3), torch.ones(4))
        assert ops.last_backend("lowrank_update_") == "torch"
        print(ops.available_backends("lowrank_update_", W, torch.ones(3, 1), torch.ones(4, 1))["triton"])
        """,
        TRITON_INTERPRET="1",
    )
    assert done.returncode == 0, done.stderr
    assert "triton is not importable" in done.stdout
