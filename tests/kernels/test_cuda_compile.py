"""The CUDA sources compile with this machine's nvcc, compile only (no GPU needed).

Each .cu file is compiled once for sm_90a (H100/H200 machine code) and for a generic target
(compute_80 PTX, which newer GPUs JIT-compile), with the flags torch's extension build adds
(no implicit half/bf16 conversions). The torch-facing binding (csrc/cuda_ops.cpp) is syntax-checked
with the host compiler against the installed torch headers and the CUDA headers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from gating import NVCC, requires_nvcc

CSRC = Path(__file__).resolve().parents[2] / "csrc"
CU_FILES = sorted((CSRC / "cuda").glob("*.cu"))

# what torch.utils.cpp_extension adds to every nvcc call (COMMON_NVCC_FLAGS)
TORCH_NVCC_FLAGS = [
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr",
]
TARGETS = [
    "-gencode=arch=compute_90a,code=sm_90a",
    "-gencode=arch=compute_80,code=compute_80",
]


def _cuda_include_dir() -> str | None:
    if NVCC is None:
        return None
    from torch.utils.cpp_extension import CUDA_HOME

    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), CUDA_HOME, Path(NVCC).resolve().parent.parent]
    roots.append("/usr/local/cuda")
    for root in filter(None, roots):
        for candidate in (Path(root) / "include", Path(root) / "targets" / "x86_64-linux" / "include"):
            if (candidate / "cuda_runtime.h").exists():
                return str(candidate)
    return None


def _binding_command() -> list[str] | None:
    from torch.utils.cpp_extension import include_paths

    cuda_include = _cuda_include_dir()
    if cuda_include is None or shutil.which("g++") is None:
        return None
    return [
        "g++",
        "-std=c++20",
        "-fsyntax-only",
        "-Wall",
        "-Wno-unused-function",
        "-DFASTEDIT_WITH_CUDA=1",
        # a CPU wheel of torch ships c10/cuda headers without their generated config header
        "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
        *[f"-I{d}" for d in include_paths()],
        f"-I{cuda_include}",
        f"-I{CSRC}",
        str(CSRC / "cuda_ops.cpp"),
    ]


@pytest.fixture(scope="module")
def compile_jobs(tmp_path_factory):
    """Start every compile at once (they are independent) and collect them as the tests ask."""
    if NVCC is None:
        pytest.skip("needs nvcc (CUDA toolkit) on PATH or in CUDA_HOME")
    out = tmp_path_factory.mktemp("nvcc")
    jobs = {}
    for src in CU_FILES:
        cmd = [NVCC, "-c", str(src), "-o", str(out / (src.stem + ".o")), "-std=c++17", "-O3", "-Xptxas=-warn-spills",
               *TORCH_NVCC_FLAGS, *TARGETS]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        jobs[src.name] = (proc, out / (src.stem + ".o"))
    binding = _binding_command()
    if binding is not None:
        jobs["cuda_ops.cpp"] = (subprocess.Popen(binding, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), None)
    results = {}

    def result(name):
        if name not in results:
            proc, obj = jobs[name]
            try:
                _, stderr = proc.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, stderr = proc.communicate()
            results[name] = (proc.returncode, stderr, obj)
        return results[name]

    yield jobs, result
    for name in jobs:
        result(name)


@requires_nvcc
def test_cuda_sources_compile_for_sm90a_and_generic(compile_jobs):
    jobs, result = compile_jobs
    assert CU_FILES, f"no .cu files under {CSRC / 'cuda'}"
    failures = []
    for src in CU_FILES:
        rc, stderr, obj = result(src.name)
        if rc != 0:
            failures.append(f"{src.name}:\n{stderr}")
            continue
        assert obj.stat().st_size > 0, f"{obj} is empty"
        assert "spilled" not in stderr, f"{src.name} spills registers:\n{stderr}"
    assert not failures, "nvcc failed:\n" + "\n".join(failures)


@requires_nvcc
def test_cuda_binding_compiles_against_torch_headers(compile_jobs):
    jobs, result = compile_jobs
    if "cuda_ops.cpp" not in jobs:
        pytest.skip("needs g++ and cuda_runtime.h next to nvcc for the host-side syntax check")
    rc, stderr, _ = result("cuda_ops.cpp")
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert rc == 0, "cuda_ops.cpp does not compile:\n" + "\n".join(errors or stderr.splitlines()[-30:])
