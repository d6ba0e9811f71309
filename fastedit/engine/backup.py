"""Put weights back as they were when a change to them fails: the one backup/restore of the engine.

An edit, an undo, loading a session and applying an edit pack all change several weights (and the
compensation buffers of low-precision ones) in place; each runs inside :func:`restoring`, so an
exception or Ctrl-C half way leaves every tensor it names exactly as it was.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch

__all__ = ["WeightBackup", "restoring"]


class WeightBackup:
    """Copies of ``tensors`` (name → tensor, modified in place later), on their own devices.

    Costs one copy of each tensor in its own dtype: the price of putting a failed change back
    exactly, whatever it had written.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self._saved = {name: (t, t.detach().clone()) for name, t in tensors.items()}

    def restore(self) -> None:
        """Write every saved copy back into its tensor."""
        with torch.no_grad():
            for t, copy in self._saved.values():
                t.copy_(copy)

    def original(self, name: str) -> torch.Tensor:
        """The saved copy of ``name``."""
        return self._saved[name][1]


@contextlib.contextmanager
def restoring(tensors: Mapping[str, torch.Tensor]) -> Iterator[WeightBackup]:
    """Run the block; if it raises anything (Ctrl-C included), restore ``tensors`` and re-raise."""
    backup = WeightBackup(tensors)
    try:
        yield backup
    except BaseException:
        backup.restore()
        raise
