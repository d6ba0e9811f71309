"""The errors fastedit raises on purpose, in two kinds that the command line maps to exit codes.

* :class:`InputError` (exit code 2): an input that cannot be used as given (hyperparameters, a
  request, a statistics file, a path, an option). It is raised before anything is changed.
* :class:`RunError` (exit code 1): a run that could not complete with good inputs, such as a solve
  that fails its numerical checks; the edit it belonged to is rolled back.

Each module keeps its own named subclass (``HyperParamsError``, ``RequestError``,
``StatsMismatchError``, ...) so callers can catch what they expect; all derive from
:class:`FasteditError`. This module imports nothing, so ``import fastedit`` stays light.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "FasteditError", "InputError", "RunError", "UsageError", "PathEscapeError", "NumericalError",
    "safe_component", "confined",
]


class FasteditError(Exception):
    """Base of the errors fastedit raises on purpose."""


class InputError(FasteditError, ValueError):
    """Bad input; nothing was changed."""


class RunError(FasteditError, RuntimeError):
    """A run that could not complete."""


class UsageError(InputError):
    """Options that do not go together, or a choice the command cannot make on its own."""


class PathEscapeError(InputError):
    """A name read from a file or a request would place a file outside its folder."""


class NumericalError(RunError):
    """A solve or a matrix that fails its numerical checks (residual, conditioning, finiteness)."""


def safe_component(name, what: str) -> str:
    """``name`` as one path component: a non-empty string without separators, ``..`` or NUL.
    Raises :class:`PathEscapeError` naming ``what`` otherwise."""
    text = str(name)
    bad = (
        not text
        or text in (".", "..")
        or any(c in text for c in ("/", "\\", "\0"))
        or (os.altsep is not None and os.altsep in text)
    )
    if bad:
        raise PathEscapeError(f"{what} {text!r} cannot be used in a file name (it must be one plain path component)")
    return text


def confined(root: str | os.PathLike, path: str | os.PathLike, what: str) -> Path:
    """``path`` (absolute, or relative to ``root``) if it stays under ``root`` once ``..`` and links
    are resolved; :class:`PathEscapeError` naming ``what`` otherwise."""
    root_r = Path(root).resolve()
    full = Path(root, path).resolve()
    if full != root_r and root_r not in full.parents:
        raise PathEscapeError(f"{what}: {str(path)!r} leads outside {str(root)!r}")
    return Path(root, path)
