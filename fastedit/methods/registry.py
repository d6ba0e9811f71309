"""The method registry: every editing method is one :class:`EditMethod` subclass, registered by name.

The engine, the CLI (``--method``), the drop-in entry points and the experiments look a method up
here (:func:`get_method`) and use what its class says: its hyperparameter class, its kind of context
templates, whether one call edits a batch. Adding a method is one file that defines its class with
``@register``, imported by :mod:`fastedit.methods`.

A method class is bound to one :class:`~fastedit.engine.EditSession` (``method(session)``); the
instance holds what the method derives from the statistics and the edit history (inverses,
factors, projections), so it lives as long as the session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Sequence

import torch

from ..errors import InputError
from .base import MethodOutput

if TYPE_CHECKING:
    from ..hparams import HyperParams
    from ..requests import EditRequest

__all__ = ["EditMethod", "register", "get_method", "method_names", "easyedit_names", "METHODS", "UnknownMethodError"]

METHODS: dict[str, type["EditMethod"]] = {}


class UnknownMethodError(InputError):
    """A method name that no registered method has."""


class EditMethod:
    """One locate-and-edit method, bound to a session.

    Class attributes (every subclass sets them):

    * ``name``: the ``--method`` value (``"memit"``);
    * ``hparams_class``: its :class:`~fastedit.hparams.HyperParams` subclass;
    * ``easyedit_name``: EasyEdit's ``alg_name`` for it (``"MEMIT"``), or None;
    * ``templates``: ``"flat"`` (a list of templates, ``"{}"`` first: the ROME family) or ``"groups"``
      (a list of groups, one of them ``["{}"]``: the MEMIT family);
    * ``batched``: whether one call edits a batch together (otherwise one request after another).
    """

    name: ClassVar[str] = ""
    hparams_class: ClassVar[type["HyperParams"]]
    easyedit_name: ClassVar[str | None] = None
    templates: ClassVar[str] = "groups"
    batched: ClassVar[bool] = True

    def __init__(self, session) -> None:
        self.session = session

    def compute(self, requests: "list[EditRequest]", precomputed_z: dict[int, torch.Tensor] | None = None) -> MethodOutput:
        """The updates for ``requests``, each written into the model with ``session.apply_update`` as it
        is computed (later layers see earlier ones). The session owns the transaction around it.
        ``precomputed_z``: request index → target value computed earlier (MEMIT family)."""
        raise NotImplementedError

    def history_added(self, layer: int, keys: torch.Tensor) -> None:
        """An edit was recorded that adds ``keys`` (d_ff, n) to ``layer``'s edit history."""

    def history_changed(self, layer: int) -> None:
        """``layer``'s edit history changed other than by an addition (undo, load): drop what was
        derived from it."""

    # ------------------------------------------------------------------ templates
    @classmethod
    def sample_templates(cls, model, tok, hp, seed: int):
        """Context templates sampled from ``model`` (seeded), in this method's layout."""
        from .templates import memit_templates, rome_templates

        if cls.templates == "flat":
            return rome_templates(model, tok, hp.context_template_length_params, seed=seed)
        return memit_templates(model, tok, seed=seed)

    @classmethod
    def check_templates(cls, templates: Sequence):
        """``templates`` in this method's layout as lists; :class:`InputError` names what is wrong."""
        ok = lambda t: isinstance(t, str) and t.count("{}") == 1  # noqa: E731
        if cls.templates == "flat":
            out = list(templates)
            if not out or not all(map(ok, out)):
                raise InputError(f"{cls.name} templates must be a list of strings, each with exactly one '{{}}'")
            return out
        out = [list(g) for g in templates]
        if not out or not all(g and all(map(ok, g)) for g in out):
            raise InputError(f"{cls.name} templates must be a list of groups of strings, each with exactly one '{{}}'")
        if "{}" not in [t for g in out for t in g]:
            raise InputError(f"{cls.name} templates must include the bare template '{{}}'")
        return out


def register(cls: type[EditMethod]) -> type[EditMethod]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or taken")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[EditMethod]:
    """The method class registered as ``name`` (case-insensitive)."""
    _load_all()
    key = str(name).lower()
    if key not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; methods: {', '.join(method_names())}")
    return METHODS[key]


def method_names() -> list[str]:
    """Every registered method's name, in registration order."""
    _load_all()
    return list(METHODS)


def easyedit_names() -> dict[str, str]:
    """EasyEdit's ``alg_name`` (upper case) → fastedit's method name, for the methods EasyEdit has."""
    _load_all()
    return {cls.easyedit_name.upper(): cls.name for cls in METHODS.values() if cls.easyedit_name}


def _load_all() -> None:
    from .. import methods  # noqa: F401  (importing the package registers every method)
