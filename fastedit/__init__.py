"""fastedit: fast locate-and-edit knowledge editing (ROME, r-ROME, MEMIT) for thousands of edits.

    import fastedit
    model, tok = fastedit.load_model("smollm2-135m")
    session = fastedit.EditSession(model, tok, "memit", "smollm2-135m", stats_source="wikipedia")
    result = session.apply({"prompt": "{} is located in", "subject": "The Eiffel Tower", "target_new": "Rome"})

Importing fastedit loads no compiled extension and initialises no CUDA; the names below load on use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "edit": "fastedit.api",
    "EditSession": "fastedit.engine",
    "EditResult": "fastedit.engine",
    "EditFailedError": "fastedit.engine",
    "EditRequest": "fastedit.requests",
    "RequestError": "fastedit.requests",
    "ROMEHyperParams": "fastedit.hparams",
    "RROMEHyperParams": "fastedit.hparams",
    "MEMITHyperParams": "fastedit.hparams",
    "HyperParamsError": "fastedit.hparams",
    "load_model": "fastedit.models.loading",
    "load_tokenizer": "fastedit.models.loading",
    "random_model": "fastedit.models.configs",
    "apply_rome_to_model": "fastedit.compat",
    "apply_memit_to_model": "fastedit.compat",
    "execute_rome": "fastedit.compat",
    "execute_memit": "fastedit.compat",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastedit' has no attribute {name!r}")


def __dir__():
    return __all__
