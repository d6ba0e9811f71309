"""Named regions: ``torch.profiler`` ranges always, NVTX ranges when enabled, per-phase timers.

Wrap each phase of an edit in :func:`region`::

    with region("target/forward"):
        ...

Inside a :class:`PhaseTimer` block the wall time of every region is summed by name (regions nest;
a name is charged its own inclusive time). NVTX ranges are emitted when ``FASTEDIT_NVTX=1`` or
:func:`enable_nvtx` was called, through the ``nvtx`` package if installed, else ``torch.cuda.nvtx``;
they cost nothing without a profiler attached. :func:`chrome_trace` writes a Chrome trace of a block.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import defaultdict
from typing import Iterator

import torch

__all__ = ["region", "PhaseTimer", "enable_nvtx", "chrome_trace"]

_state = threading.local()
_nvtx = {"enabled": os.environ.get("FASTEDIT_NVTX", "") == "1", "push": None, "pop": None}


def enable_nvtx(on: bool = True) -> None:
    """Emit NVTX ranges for every region (for Nsight Systems)."""
    _nvtx["enabled"] = on


def _nvtx_fns():
    if _nvtx["push"] is None:
        try:
            import nvtx  # type: ignore

            _nvtx["push"], _nvtx["pop"] = (lambda name: nvtx.push_range(name)), (lambda: nvtx.pop_range())
        except ImportError:
            _nvtx["push"], _nvtx["pop"] = torch.cuda.nvtx.range_push, torch.cuda.nvtx.range_pop
    return _nvtx["push"], _nvtx["pop"]


class PhaseTimer:
    """Collects the wall time of every :func:`region` entered in its block, by name (seconds).

    With ``sync=True`` the clock waits for queued device work at region boundaries, so GPU time is
    charged to the phase that launched it (slower; off by default).
    """

    def __init__(self, sync: bool = False) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.sync = sync
        self._prev = None

    def __enter__(self) -> "PhaseTimer":
        self._prev = getattr(_state, "timer", None)
        _state.timer = self
        return self

    def __exit__(self, *exc) -> None:
        _state.timer = self._prev

    def as_dict(self) -> dict[str, float]:
        return dict(self.totals)


@contextlib.contextmanager
def region(name: str) -> Iterator[None]:
    """A named phase: profiler range, NVTX range when enabled, and timer entry when timing."""
    timer: PhaseTimer | None = getattr(_state, "timer", None)
    nvtx_on = _nvtx["enabled"]
    if nvtx_on:
        push, pop = _nvtx_fns()
        push(name)
    if timer is not None and timer.sync and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    try:
        with torch.profiler.record_function(name):
            yield
    finally:
        if timer is not None:
            if timer.sync and torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
            timer.totals[name] += time.perf_counter() - t0
        if nvtx_on:
            pop()


@contextlib.contextmanager
def chrome_trace(path: str | os.PathLike | None) -> Iterator[None]:
    """Profile the block with ``torch.profiler`` and write a Chrome trace to ``path`` (no-op if None)."""
    if not path:
        yield
        return
    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts, record_shapes=False) as prof:
        yield
    prof.export_chrome_trace(str(path))
