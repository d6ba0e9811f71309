"""Files that are either whole or absent.

Every file is written under a hidden temporary name beside its final one, flushed to disk and
renamed into place, so a reader never sees half a file. A set of files changes as one through a
single rename too: sessions by their manifest (:mod:`fastedit.engine.store`), command outputs by
:func:`replace_folder`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import safetensors.torch

__all__ = ["write_atomic", "write_safetensors", "write_json", "fsync_dir", "check_replaceable", "replace_folder",
           "new_token"]


def new_token() -> str:
    """A short random name part, unique enough for the files of one folder."""
    return uuid.uuid4().hex[:12]


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary name beside ``path``, flushed to disk, then renamed to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{new_token()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_safetensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> int:
    """Write ``tensors`` (contiguous CPU tensors) as a safetensors file; returns its size in bytes."""
    write_atomic(path, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=metadata))
    return Path(path).stat().st_size


def write_json(path: Path, obj: Any) -> int:
    """Write ``obj`` as indented JSON; returns its size in bytes."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1) + "\n"))
    return Path(path).stat().st_size


def fsync_dir(path: Path) -> None:
    """Make the renames inside folder ``path`` durable (where the platform allows opening folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_replaceable(path: Path, allowed: Iterable[str]) -> None:
    """Refuse (``FileExistsError``) a ``path`` that :func:`replace_folder` may not replace: anything
    but an absent or empty folder or one holding only entries named in ``allowed``."""
    path = Path(path).absolute()
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    others = sorted(p.name for p in path.iterdir() if p.name not in set(allowed))
    if others:
        raise FileExistsError(
            f"{path} holds other files ({', '.join(others[:5])}); its contents would be replaced: "
            "choose a new or empty folder"
        )


def replace_folder(path: Path, fill: Callable[[Path], None], allowed: Iterable[str]) -> Path:
    """Give folder ``path`` entirely new contents: ``fill(tmp)`` writes them into a fresh folder beside
    it, which is then renamed to ``path``. Until that rename ``path`` is untouched; a failure in
    ``fill`` leaves it as it was and removes the new folder.

    ``path`` must pass :func:`check_replaceable` (absent, empty, or holding only ``allowed`` entries:
    an earlier output of the same command), so no one's other files are replaced. A non-empty
    ``path`` is moved aside first and deleted after the swap (two renames; a crash between them
    leaves the old folder beside it under a hidden name, never a mix of old and new files).
    """
    path = Path(path).absolute()
    check_replaceable(path, allowed)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = new_token()
    tmp = path.with_name(f".{path.name}.new-{token}")
    tmp.mkdir()
    try:
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists() and any(path.iterdir()):
        old = path.with_name(f".{path.name}.old-{token}")
        os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(old, path)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)  # onto an absent or empty folder: one rename
    fsync_dir(path.parent)
    return path
