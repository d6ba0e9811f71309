"""Low-precision copies of weights for the target-value optimisation on CPUs.

On a GPU, fast mode runs the layers above the edit layer under ``torch.autocast``: casting a weight
costs little there. On a CPU autocast casts every weight at every call, which costs as much as the
bf16 matmul saves. :class:`LowPrecisionWeights` instead keeps bf16 copies of the weights of chosen
modules across edits and swaps them in (``param.data``) for the duration of the optimisation. On a
CPU with native bf16 instructions (AVX512-BF16 or AMX) a bf16 matmul of the optimisation's shapes
runs about 2.3x a float32 one; elsewhere bf16 is emulated and slower, so fast mode uses this only
where :func:`cpu_has_native_bf16` says so.

A copy is refreshed when its weight changes: it is keyed by the weight's storage address, version
counter and shape (every in-place torch operation bumps the version counter). The weights swapped
are those above the layer where δ enters, which the edit itself never writes.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterable, Iterator

import torch
from torch import nn

__all__ = ["LowPrecisionWeights", "cpu_has_native_bf16"]


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises bf16 arithmetic (``avx512_bf16`` or ``amx_bf16`` in Linux's
    /proc/cpuinfo flags); False where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


class LowPrecisionWeights:
    """Copies of floating-point parameters in ``dtype``, kept between uses.

    ``with lp.swapped(modules): ...`` makes every floating parameter of ``modules`` (that is not
    already ``dtype``) hold its ``dtype`` copy and restores the original tensors on exit, also on
    errors and Ctrl-C. Parameters shared between modules (tied embeddings) are swapped once.
    """

    def __init__(self, dtype: torch.dtype = torch.bfloat16) -> None:
        self.dtype = dtype
        self._copies: dict[int, tuple[tuple, torch.Tensor]] = {}
        self.casts = 0  # how many copies were made (for tests and profiling)

    def _copy_of(self, p: nn.Parameter) -> torch.Tensor:
        key = (p.data_ptr(), p._version, tuple(p.shape), p.dtype, p.device)
        hit = self._copies.get(id(p))
        if hit is None or hit[0] != key:
            hit = (key, p.detach().to(self.dtype, copy=True))
            self._copies[id(p)] = hit
            self.casts += 1
        return hit[1]

    def clear(self) -> None:
        self._copies.clear()

    @contextlib.contextmanager
    def swapped(self, modules: Iterable[nn.Module]) -> Iterator[None]:
        seen: set[int] = set()
        params = []
        for m in modules:
            for p in m.parameters():
                if id(p) not in seen and p.is_floating_point() and p.dtype != self.dtype:
                    seen.add(id(p))
                    params.append(p)
        saved: list[tuple[nn.Parameter, torch.Tensor]] = []
        try:
            for p in params:
                low = self._copy_of(p)
                saved.append((p, p.data))
                p.data = low
            yield
        finally:
            for p, original in reversed(saved):
                p.data = original
