"""Hardware gating for tests, in one place: skip markers with the reason, and device parameters.

Usage::

    from gating import gpu_test, requires_ext, device_params

    @gpu_test                      # marked `gpu` (selected by `pytest -m gpu`) and skipped without CUDA
    def test_on_gpu(): ...

    @requires_ext                  # skipped when fastedit._C is not built
    def test_cpp(): ...

    pytestmark = [pytest.mark.gpu, requires_cuda]   # a whole module

``device_params()`` gives ``"cpu"`` and, where CUDA exists, a ``"cuda"`` parameter marked ``gpu``.
tests/conftest.py (imported first) puts Triton in interpreter mode when there is no GPU, so the
Triton kernels run on CPU tensors there.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

CUDA = torch.cuda.is_available()

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except Exception:  # not installed or broken
    HAS_TRITON = False

TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _ext_state() -> tuple[bool, bool, str]:
    from fastedit import _ext

    loaded = _ext.available()
    return loaded, loaded and _ext.has_cuda(), _ext.unavailable_reason() or ""


EXT, EXT_CUDA, EXT_REASON = _ext_state()
NVCC = shutil.which("nvcc") or (
    os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
    if os.environ.get("CUDA_HOME") and os.path.exists(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    else None
)

requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
requires_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
requires_triton_gpu = pytest.mark.skipif(
    not (CUDA and HAS_TRITON and not TRITON_INTERPRET), reason="needs triton and a CUDA device (not interpreter mode)"
)
requires_triton_interpreter = pytest.mark.skipif(
    not (HAS_TRITON and TRITON_INTERPRET), reason="needs triton in interpreter mode (TRITON_INTERPRET=1)"
)
requires_ext = pytest.mark.skipif(not EXT, reason=f"needs the compiled extension fastedit._C ({EXT_REASON})")
requires_ext_cuda = pytest.mark.skipif(
    not (CUDA and EXT_CUDA), reason="needs a CUDA device and fastedit._C built with its CUDA kernels"
)
requires_nvcc = pytest.mark.skipif(NVCC is None, reason="needs nvcc (CUDA toolkit) on PATH or in CUDA_HOME")

GPU_MARKS = (pytest.mark.gpu, requires_cuda)


def gpu_test(fn):
    """Mark a test `gpu` and skip it (with the reason) where there is no CUDA device."""
    for mark in GPU_MARKS:
        fn = mark(fn)
    return fn


def device_params() -> list:
    """pytest parameters: "cpu", and "cuda" (marked gpu, skipped without CUDA)."""
    return ["cpu", pytest.param("cuda", marks=GPU_MARKS)]


def backend_params(op_backends: dict[str, tuple[str, ...]]) -> list:
    """pytest parameters (device, backend) for the backends an op has on each device, gated.

    op_backends: e.g. {"cpu": ("torch", "triton", "cpp"), "cuda": ("torch", "triton", "cuda")}.
    CPU Triton runs only in interpreter mode; "cpp"/"cuda" need the extension.
    """
    params = []
    for device, backends in op_backends.items():
        for backend in backends:
            marks = list(GPU_MARKS) if device == "cuda" else []
            if backend == "triton":
                marks.append(requires_triton_interpreter if device == "cpu" else requires_triton_gpu)
            elif backend == "cpp":
                marks.append(requires_ext)
            elif backend == "cuda":
                marks.append(requires_ext_cuda)
            params.append(pytest.param(device, backend, marks=marks, id=f"{device}-{backend}"))
    return params


__all__ = [
    "CUDA",
    "EXT",
    "EXT_CUDA",
    "GPU_MARKS",
    "HAS_TRITON",
    "NVCC",
    "backend_params",
    "device_params",
    "gpu_test",
    "requires_cuda",
    "requires_ext",
    "requires_ext_cuda",
    "requires_nvcc",
    "requires_triton",
    "requires_triton_gpu",
    "requires_triton_interpreter",
]
