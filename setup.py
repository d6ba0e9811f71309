"""Build script: package layout plus the optional compiled extension (see csrc/README.md).

The extension ``fastedit._C`` is built when torch is importable at build time (use
``pip install --no-build-isolation -e .`` so the build sees the installed torch):

- its C++ part (CPU kernels and the operator schemas) whenever torch is importable;
- its CUDA part only with a CUDA build of torch (``torch.version.cuda``) and an nvcc.

Whatever is skipped is said in one line on stderr. Environment switches:

- ``FASTEDIT_SKIP_EXT=1``: build no extension (pure-Python package; Triton and torch paths only).
- ``FASTEDIT_SKIP_CUDA=1``: build the C++ part only.
- ``FASTEDIT_FORCE_CUDA=1``: fail instead of skipping the CUDA part when it cannot be built.
- ``FASTEDIT_CUDA_ARCHS``: semicolon- or comma-separated targets, default ``90a;80``. ``90a`` gives
  sm_90a machine code (H100/H200), ``80`` sm_80 machine code, ``80+PTX`` adds compute_80 PTX that
  newer GPUs JIT-compile.
- ``MAX_JOBS``: parallel compile jobs (read by torch's ninja build).
- ``FASTEDIT_DEBUG=1``: ``-O0 -g`` (and ``-G`` for nvcc).
"""

from __future__ import annotations

import os
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _say(message: str) -> None:
    print(f"fastedit setup: {message}", file=sys.stderr)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _arch_flags(spec: str) -> list[str]:
    flags = []
    for raw in spec.replace(",", ";").split(";"):
        arch = raw.strip().replace(".", "").replace("sm_", "").replace("compute_", "")
        if not arch:
            continue
        ptx = arch.endswith("+PTX")
        arch = arch.removesuffix("+PTX")
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{arch},code=compute_{arch}")
    return flags


def _sources(*names: str) -> list[str]:
    # setuptools wants paths relative to setup.py
    return [os.path.join("csrc", name) for name in names]


def _extension_kwargs() -> dict:
    """ext_modules and cmdclass for setup(), or {} when the extension is skipped (with a one-line reason)."""
    if _flag("FASTEDIT_SKIP_EXT"):
        _say("FASTEDIT_SKIP_EXT is set: building without the compiled extension fastedit._C")
        return {}
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # not installed, or broken
        _say(
            f"torch is not importable at build time ({type(exc).__name__}): building without the compiled "
            "extension fastedit._C (install torch, then `pip install --no-build-isolation -e .`)"
        )
        return {}

    debug = _flag("FASTEDIT_DEBUG")
    cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
    nvcc_flags = ["-O0", "-g", "-G"] if debug else ["-O3", "-lineinfo"]
    sources = _sources("init.cpp", "schemas.cpp", "cpu_ops.cpp", "chol_update.cpp")

    why_no_cuda = None
    nvcc = None
    if _flag("FASTEDIT_SKIP_CUDA"):
        why_no_cuda = "FASTEDIT_SKIP_CUDA is set"
    elif not torch.version.cuda:
        why_no_cuda = f"torch {torch.__version__} is not a CUDA build"
    else:
        home = cpp_extension.CUDA_HOME
        nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
        if not nvcc or not os.path.exists(nvcc):
            why_no_cuda = "no nvcc found (set CUDA_HOME)"

    if why_no_cuda is not None:
        if _flag("FASTEDIT_FORCE_CUDA"):
            raise RuntimeError(f"FASTEDIT_FORCE_CUDA is set but the CUDA kernels cannot be built: {why_no_cuda}")
        _say(f"{why_no_cuda}: building fastedit._C with its C++ (CPU) kernels only, no CUDA kernels")
        ext = cpp_extension.CppExtension(
            "fastedit._C",
            sources,
            extra_compile_args={"cxx": cxx_flags + ["-DFASTEDIT_WITH_CUDA=0"]},
        )
    else:
        archs = os.environ.get("FASTEDIT_CUDA_ARCHS", "90a;80")
        arch_flags = _arch_flags(archs)
        if not arch_flags:
            raise RuntimeError(f"FASTEDIT_CUDA_ARCHS={archs!r} names no architecture")
        _say(f"building fastedit._C with CUDA kernels for {archs} (nvcc {nvcc})")
        ext = cpp_extension.CUDAExtension(
            "fastedit._C",
            sources
            + _sources(
                "cuda_ops.cpp", "cuda/syrk.cu", "cuda/spd_solve.cu", "cuda/lowrank_update.cu", "cuda/chol_update.cu"
            ),
            extra_compile_args={
                "cxx": cxx_flags + ["-DFASTEDIT_WITH_CUDA=1"],
                "nvcc": nvcc_flags + arch_flags + ["-DFASTEDIT_WITH_CUDA=1"],
            },
        )
    return {
        "ext_modules": [ext],
        "cmdclass": {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
    }


setup(
    packages=[
        "fastedit",
        "fastedit.models",
        "fastedit.stats",
        "fastedit.methods",
        "fastedit.eval",
        "fastedit.experiments",
        "fastedit.kernels",
        # data folders, listed so setuptools ships them (fastedit/data: see its LICENSES.md)
        "fastedit.data",
        "fastedit.presets",
        "fastedit.presets.ROME",
        "fastedit.presets.MEMIT",
    ],
    # Triton kernels live in the top-level kernels/ folder and import as fastedit.kernels.
    package_dir={"fastedit": "fastedit", "fastedit.kernels": "kernels"},
    package_data={"fastedit.data": ["*.json", "*.md", "wikipedia/*.xz", "glue/*.xz", "counterfact/*.xz"],
                  "fastedit.presets.ROME": ["*.json"], "fastedit.presets.MEMIT": ["*.json"]},
    **_extension_kwargs(),
)
