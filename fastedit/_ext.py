"""Loads the compiled extension ``fastedit._C`` once, on first use, and declares its fake kernels.

Nothing here runs at ``import fastedit``: :func:`load` is called by :mod:`fastedit.ops` the first time
an op asks whether the compiled backends exist. A missing or broken extension is not an error: it is
logged once with the reason, and the Triton and torch paths are used. ``FASTEDIT_NO_EXT=1`` keeps
the extension unloaded (to test the fallbacks).

Loading the extension registers its operators as ``torch.ops.fastedit.*`` (schemas in
``csrc/schemas.cpp``); :func:`load` then registers their fake (meta) implementations so that they
trace under ``torch.compile`` without running.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from types import ModuleType

logger = logging.getLogger(__name__)

_lock = threading.RLock()
_loaded = False
_module: ModuleType | None = None
_error: str | None = None


def load() -> ModuleType | None:
    """The extension module, or None when it is unavailable (the reason is in :func:`unavailable_reason`)."""
    global _loaded, _module, _error
    if _loaded:
        return _module
    with _lock:
        if _loaded:
            return _module
        if os.environ.get("FASTEDIT_NO_EXT", "").strip().lower() in ("1", "true", "yes", "on"):
            _error = "FASTEDIT_NO_EXT is set"
        else:
            try:
                import torch  # noqa: F401  (libtorch must be loaded before the extension's symbols resolve)

                _module = importlib.import_module("fastedit._C")
                _register_fakes()
            except Exception as exc:  # ImportError when not built; OSError/RuntimeError when built for another torch
                _module = None
                _error = f"{type(exc).__name__}: {exc}"
        if _module is None:
            logger.info(
                "fastedit: compiled extension fastedit._C not loaded (%s); using the Triton and torch paths", _error
            )
        else:
            with_cuda = bool(getattr(_module, "with_cuda", 0))
            logger.info(
                "fastedit: compiled extension fastedit._C loaded (CUDA kernels: %s)", "yes" if with_cuda else "no"
            )
        _loaded = True
    return _module


def available() -> bool:
    """Whether the extension is loaded (its C++ CPU kernels at least)."""
    return load() is not None


def has_cuda() -> bool:
    """Whether the extension was built with its CUDA kernels."""
    module = load()
    return module is not None and bool(getattr(module, "with_cuda", 0))


def unavailable_reason() -> str | None:
    """Why the extension is not loaded, or None when it is."""
    load()
    return _error


def _register_fakes() -> None:
    """Fake (meta) kernels: output shapes and dtypes only, for torch.compile and FakeTensor tracing."""
    import torch

    @torch.library.register_fake("fastedit::syrk_accumulate_")
    def _syrk_accumulate_fake(acc, x, valid):
        return None

    @torch.library.register_fake("fastedit::cholesky_ex")
    def _cholesky_ex_fake(A):
        return torch.empty_like(A, memory_format=torch.contiguous_format), A.new_empty(A.shape[:1], dtype=torch.int32)

    @torch.library.register_fake("fastedit::cholesky_solve")
    def _cholesky_solve_fake(L, B):
        return torch.empty_like(B, memory_format=torch.contiguous_format)

    @torch.library.register_fake("fastedit::spd_solve_ex")
    def _spd_solve_ex_fake(A, B):
        return torch.empty_like(B, memory_format=torch.contiguous_format), A.new_empty(A.shape[:1], dtype=torch.int32)

    @torch.library.register_fake("fastedit::lowrank_update_")
    def _lowrank_update_fake(W, U, V, transpose, compensation):
        return None

    @torch.library.register_fake("fastedit::cholesky_update_")
    def _cholesky_update_fake(L, K):
        return None


__all__ = ["available", "has_cuda", "load", "unavailable_reason"]
