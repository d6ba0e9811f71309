"""Runtime shims that let the public reference code (kmeng01/rome, kmeng01/memit, 2022, and the
successors built on it: jianghoucheng/AlphaEdit, scalable-model-editing/unified-model-editing (EMMET)
and scalable-model-editing/knowledge-editing-regularization (ENCORE), which share its ``util`` and
``rome`` packages) run unchanged under torch 2.x / transformers 5, with or without CUDA. Used by
``benchmarks/compare_reference.py``.

Nothing here edits the reference checkout or copies its code: every shim is a monkeypatch that
:func:`reference_shims` installs and removes again when it exits (the import-time ones are installed
by :func:`import_reference` and affect only the reference's own modules). Each shim is listed, with
why it is needed, in :data:`SHIMS`, which the comparison writes into its results.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
import types
from pathlib import Path
from typing import Iterator

import torch

__all__ = ["SHIMS", "ReferenceModules", "import_reference", "import_method", "reference_shims", "has_method"]

# One line per shim, in the order they appear below.
SHIMS = {
    "cuda_redirect": (
        "the reference hard-codes 'cuda' (.to('cuda'), device='cuda'); when the model is not on a CUDA "
        "device, Tensor.to/.cuda, BatchEncoding.to and the tensor factory functions map a CUDA device to "
        "the model's device while the reference runs"
    ),
    "datasets_stub": (
        "rome/layer_stats.py imports `datasets` at import time; where it is not installed a stub module "
        "is used for that import (its load_dataset raises: the statistics caches exist, so it is never "
        "called)"
    ),
    "matplotlib_stub": (
        "rome/compute_v.py imports an unused name from matplotlib.style; stubbed only where matplotlib "
        "is not installed"
    ),
    "config_aliases": (
        "configs without n_embd / n_positions (Llama, GPT-NeoX) get them as aliases of hidden_size / "
        "max_position_embeddings on the reference's model copy (compute_v/compute_z size delta with "
        "n_embd; layer_stats reads n_positions)"
    ),
    "block_output_tuple": (
        "transformers 5 decoder layers return a bare tensor where the reference (written for "
        "transformers 4.2x, whose blocks returned (hidden_states, present, ...)) indexes output[0]; for "
        "hooks on decoder-layer modules, util.nethook.Trace's hook sees (output,) and its result is "
        "unwrapped before it goes back to the model, so edit_output edits output[0] = the hidden "
        "states in place and the retained output is the 1-tuple, as under transformers 4"
    ),
    "tied_parameter_lookup": (
        "util.nethook.get_parameter walks named_parameters(), which lists a tied weight once, under the "
        "input embedding's name; with tied embeddings (SmolLM2) 'lm_head.weight' is then not found. "
        "The shim walks named_parameters(remove_duplicate=False): same tensor, found by either name"
    ),
    "quiet": "the reference prints every step: its stdout and stderr go to a log file",
    "working_directory": (
        "util/globals.py reads globals.yml from the working directory at import and the statistics "
        "are looked up under its relative STATS_DIR (data/stats): the reference is imported and run "
        "with the working directory set to a scratch folder holding a copy of the checkout's "
        "globals.yml and the statistics fastedit computed; its module-level caches "
        "(CONTEXT_TEMPLATES_CACHE, inv_mom2_cache, COV_CACHE, ENCORE's SEQ_CACHE) are set or emptied before each run"
    ),
}

_MISSING = object()
_REFERENCE_TOP_LEVEL = ("rome", "memit", "util")


def has_method(reference_dir: Path, method: str) -> bool:
    """Whether the checkout holds the reference package for ``method`` (``rome`` or ``memit``)."""
    main = {"rome": "rome/rome_main.py", "memit": "memit/memit_main.py"}[method]
    return (Path(reference_dir) / main).is_file()


class ReferenceModules(types.SimpleNamespace):
    """The imported reference modules: ``nethook``, ``rome_main``, ``compute_u``, ``ROMEHyperParams``,
    ``apply_rome_to_model``; and where the checkout has MEMIT ``memit_main``, ``MEMITHyperParams``,
    ``apply_memit_to_model``."""


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def _stub_module(name: str, attrs: dict) -> Iterator[None]:
    """``sys.modules[name]`` is a stub while the block runs, unless the real module is importable."""
    try:
        importlib.import_module(name)
        importable = True
    except ImportError:
        importable = False
    if importable:
        yield
        return
    parts = name.split(".")
    added = []
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            mod = types.ModuleType(sub)
            mod.__path__ = []  # a package, so submodules can hang below it
            sys.modules[sub] = mod
            added.append(sub)
    for k, v in attrs.items():
        setattr(sys.modules[name], k, v)
    try:
        yield
    finally:
        for sub in reversed(added):
            sys.modules.pop(sub, None)


def _no_load_dataset(*args, **kwargs):
    raise RuntimeError(
        "compare_reference: the `datasets` package is not installed here (stubbed for the reference's "
        "import); the reference asked for its statistics from a dataset, which means the cache written by "
        "fastedit was not found or was rejected"
    )


def import_reference(reference_dir: Path, workdir: Path) -> ReferenceModules:
    """Import the reference packages from ``reference_dir`` (a checkout of kmeng01/memit, which also
    holds ``rome/``, or of kmeng01/rome). ``workdir`` must hold ``globals.yml`` (read at import)."""
    reference_dir = Path(reference_dir).resolve()
    _check_top_level(reference_dir, _REFERENCE_TOP_LEVEL)
    if str(reference_dir) not in sys.path:
        sys.path.insert(0, str(reference_dir))
    # Shim datasets_stub / matplotlib_stub: only for the duration of the import.
    with _working_directory(workdir), _stub_module("datasets", {"load_dataset": _no_load_dataset}), _stub_module(
        "matplotlib.style", {"context": None}
    ):
        ns = ReferenceModules()
        ns.nethook = importlib.import_module("util.nethook")
        ns.rome_main = importlib.import_module("rome.rome_main")
        ns.compute_u = importlib.import_module("rome.compute_u")
        ns.ROMEHyperParams = ns.rome_main.ROMEHyperParams
        ns.apply_rome_to_model = ns.rome_main.apply_rome_to_model
        ns.memit_main = None
        if has_method(reference_dir, "memit"):
            ns.memit_main = importlib.import_module("memit.memit_main")
            ns.MEMITHyperParams = ns.memit_main.MEMITHyperParams
            ns.apply_memit_to_model = ns.memit_main.apply_memit_to_model
    return ns


def _check_top_level(reference_dir: Path, names) -> None:
    for name in names:
        mod = sys.modules.get(name)
        if mod is not None:
            where = Path(getattr(mod, "__file__", "") or "").resolve()
            if reference_dir not in where.parents:
                raise RuntimeError(
                    f"a module named {name!r} is already imported from {where}; the reference's top-level "
                    f"package of that name cannot be imported beside it"
                )


def import_method(reference_dir: Path, workdir: Path, module: str) -> ReferenceModules:
    """Import ``module`` (``AlphaEdit.AlphaEdit_main``, ``emmet.emmet_main``, ...) and the checkout's
    ``util.nethook`` from ``reference_dir``, with the import-time shims; ``workdir`` must hold
    ``globals.yml``. Returns a namespace with ``nethook`` and ``main`` (the module)."""
    reference_dir = Path(reference_dir).resolve()
    _check_top_level(reference_dir, _REFERENCE_TOP_LEVEL + (module.split(".")[0],))
    if str(reference_dir) not in sys.path:
        sys.path.insert(0, str(reference_dir))
    with _working_directory(workdir), _stub_module("datasets", {"load_dataset": _no_load_dataset}), _stub_module(
        "matplotlib.style", {"context": None}
    ):
        return ReferenceModules(nethook=importlib.import_module("util.nethook"), main=importlib.import_module(module))


# ---------------------------------------------------------------------------- the patches
class _Patcher:
    """Records attribute replacements and undoes them in reverse order."""

    def __init__(self) -> None:
        self._undo: list[tuple[object, str, object]] = []

    def set(self, owner, name: str, value) -> None:
        # On a class, only its own attribute is saved: an inherited one (Tensor.to comes from
        # TensorBase) is restored by deleting the override.
        if isinstance(owner, type):
            old = owner.__dict__.get(name, _MISSING)
        else:
            old = getattr(owner, name, _MISSING)
        self._undo.append((owner, name, old))
        setattr(owner, name, value)

    def restore(self) -> None:
        while self._undo:
            owner, name, old = self._undo.pop()
            if old is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, old)


_FACTORIES = (
    "tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "rand", "randn", "randint",
    "eye", "linspace", "zeros_like", "ones_like", "empty_like", "full_like",
)


def _install_cuda_redirect(p: _Patcher, target: torch.device) -> None:
    """Shim cuda_redirect: any CUDA device named while the reference runs means ``target``."""

    def fix(d):
        if isinstance(d, str) and (d == "cuda" or d.startswith("cuda:")):
            return target
        if isinstance(d, torch.device) and d.type == "cuda":
            return target
        return d

    tensor_to = torch.Tensor.to

    @functools.wraps(tensor_to)
    def to(self, *args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = fix(kwargs["device"])
        return tensor_to(self, *(fix(a) for a in args), **kwargs)

    def cuda(self, device=None, non_blocking=False, **kwargs):
        return tensor_to(self, target, non_blocking=non_blocking)

    p.set(torch.Tensor, "to", to)
    p.set(torch.Tensor, "cuda", cuda)

    from transformers.tokenization_utils_base import BatchEncoding

    batch_to = BatchEncoding.to

    @functools.wraps(batch_to)
    def batch_encoding_to(self, device, *args, **kwargs):
        return batch_to(self, fix(device), *args, **kwargs)

    p.set(BatchEncoding, "to", batch_encoding_to)

    for name in _FACTORIES:
        orig = getattr(torch, name)

        def factory(*args, __orig=orig, **kwargs):
            if "device" in kwargs:
                kwargs["device"] = fix(kwargs["device"])
            return __orig(*args, **kwargs)

        functools.update_wrapper(factory, orig)
        p.set(torch, name, factory)


def _install_config_aliases(p: _Patcher, config) -> None:
    """Shim config_aliases."""
    for alias, real in (("n_embd", "hidden_size"), ("n_positions", "max_position_embeddings")):
        if not hasattr(config, alias):
            p.set(config, alias, getattr(config, real))


def _install_block_output_tuple(p: _Patcher, nethook, block_modules: list[torch.nn.Module]) -> None:
    """Shim block_output_tuple: wraps the forward hook that ``util.nethook.Trace`` registers on a
    decoder-layer module. The wrapper replaces the hook in place in the module's hook dictionary, so
    the hook order and the Trace's own handle (used to remove it) are unchanged."""
    blocks = {id(m) for m in block_modules}
    trace_init = nethook.Trace.__init__

    @functools.wraps(trace_init)
    def init(self, module, layer=None, *args, **kwargs):
        trace_init(self, module, layer, *args, **kwargs)
        hooked = nethook.get_module(module, layer) if layer is not None else module
        if id(hooked) not in blocks:
            return
        hooks = hooked._forward_hooks
        hook_id = self.registered_hook.id
        inner = hooks[hook_id]

        def as_tuple_hook(m, inputs, output):
            if not isinstance(output, torch.Tensor):
                return inner(m, inputs, output)
            result = inner(m, inputs, (output,))
            # the reference's hook returns the (possibly edited) tuple; the model gets the tensor back
            if isinstance(result, tuple):
                if len(result) != 1:
                    raise RuntimeError(f"reference hook on {layer} returned a {len(result)}-tuple for a 1-tuple")
                return result[0]
            return result

        hooks[hook_id] = as_tuple_hook

    p.set(nethook.Trace, "__init__", init)


def _install_tied_parameter_lookup(p: _Patcher, nethook) -> None:
    """Shim tied_parameter_lookup."""

    def get_parameter(model, name):
        for n, param in model.named_parameters(remove_duplicate=False):
            if n == name:
                return param
        raise LookupError(name)

    p.set(nethook, "get_parameter", get_parameter)


@contextlib.contextmanager
def reference_shims(
    ref: ReferenceModules,
    model: torch.nn.Module,
    block_modules: list[torch.nn.Module],
    workdir: Path,
    log_path: Path,
) -> Iterator[None]:
    """While the block runs, the reference code can edit ``model`` here: CUDA names map to the model's
    device, its config has the GPT-2 attribute names, decoder-layer hooks see tuples, tied parameters
    are found by either name, the working directory is ``workdir`` and the reference's output goes to
    ``log_path`` (appended). Everything is restored on exit."""
    p = _Patcher()
    device = next(model.parameters()).device
    try:
        if device.type != "cuda":
            _install_cuda_redirect(p, device)
        _install_config_aliases(p, model.config)
        _install_block_output_tuple(p, ref.nethook, block_modules)
        _install_tied_parameter_lookup(p, ref.nethook)
        with open(log_path, "a") as log, _working_directory(workdir), contextlib.redirect_stdout(
            log
        ), contextlib.redirect_stderr(log):
            yield
    finally:
        p.restore()
