"""Editing methods, one file per method, each registered by name (:mod:`fastedit.methods.registry`)."""

from . import rome, memit  # noqa: F401, I001  (importing a method's module registers it)
from .registry import EditMethod, get_method, method_names

__all__ = ["EditMethod", "get_method", "method_names"]
