"""Architecture adapters, tracing hooks and model loading."""

from .adapters import SUPPORTED_MODEL_TYPES, ModelAdapter, UnsupportedModelError, get_adapter, get_module
from .configs import random_model
from .loading import gpt2_tokenizer, load_model, load_tokenizer
from .tracing import record

__all__ = [
    "ModelAdapter",
    "SUPPORTED_MODEL_TYPES",
    "UnsupportedModelError",
    "get_adapter",
    "get_module",
    "gpt2_tokenizer",
    "load_model",
    "load_tokenizer",
    "random_model",
    "record",
]
