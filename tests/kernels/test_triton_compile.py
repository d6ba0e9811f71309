"""The Triton kernels compile for the GPU (sm_90), not just run in the interpreter, without a GPU.

The interpreter accepts programs the real compiler rejects (layouts, dot shapes, scalar types) and
says nothing about registers, so tests/kernels/triton_aot.py lowers each kernel, for the
configurations its launcher uses and with the specialisation a launch on aligned tensors gets, down
to a cubin, and checks that ptxas reports (almost) no register spills.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gating import requires_triton

HERE = Path(__file__).resolve().parent


@requires_triton
def test_triton_kernels_compile_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compile for real, not from a cache
    done = subprocess.run(
        [sys.executable, str(HERE / "triton_aot.py"), "--arch", "90"],
        capture_output=True,
        text=True,
        env=env,
        cwd=HERE.parents[1],
        timeout=300,
    )
    print(done.stdout)
    assert done.returncode == 0, f"Triton AOT compile failed:\n{done.stdout}\n{done.stderr[-4000:]}"
    assert done.stdout.count("ok ") >= 11
