"""Forward hooks that read a module's input or output, optionally stopping the forward pass there.

The reference code's ``nethook.Trace`` does the same with monkey-patching; this uses plain
``register_forward_hook`` / ``register_forward_pre_hook`` and always removes its hooks.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .adapters import get_module

__all__ = ["Recorder", "record", "StopForward", "first_tensor"]


class StopForward(Exception):
    """Raised inside a hook to end a forward pass once everything needed has been read."""


def first_tensor(x):
    """Decoder layers return a bare tensor in transformers 5 and a tuple before; take the tensor."""
    return x[0] if isinstance(x, (tuple, list)) else x


class Recorder:
    """What :func:`record` captured: ``inputs[name]`` and ``outputs[name]``, each (batch, seq, width)."""

    def __init__(self) -> None:
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}


@contextlib.contextmanager
def record(
    model: nn.Module,
    inputs: tuple[str, ...] | list[str] = (),
    outputs: tuple[str, ...] | list[str] = (),
    stop_after: str | None = None,
    detach: bool = True,
) -> Iterator[Recorder]:
    """Capture the first positional input of the modules named in ``inputs`` and the (first tensor
    of the) output of those in ``outputs``. With ``stop_after``, the forward pass ends (by
    :class:`StopForward`, swallowed on exit of the block) right after that module has run.

    Use as::

        with record(model, inputs=[name]) as rec:
            model(**batch)
        keys = rec.inputs[name]
    """
    rec = Recorder()
    handles = []

    def make_pre(name):
        def hook(_mod, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            rec.inputs[name] = x.detach() if detach else x

        return hook

    def make_post(name):
        def hook(_mod, _args, out):
            t = first_tensor(out)
            if name in outputs:
                rec.outputs[name] = t.detach() if detach else t
            if name == stop_after:
                raise StopForward

        return hook

    try:
        for name in inputs:
            handles.append(get_module(model, name).register_forward_pre_hook(make_pre(name), with_kwargs=True))
        post = set(outputs) | ({stop_after} if stop_after else set())
        for name in post:
            handles.append(get_module(model, name).register_forward_hook(make_post(name)))
        try:
            yield rec
        except StopForward:
            pass
    finally:
        for h in handles:
            h.remove()
