"""What the benchmarks record about the machine they ran on (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

__all__ = ["machine"]


def machine() -> dict:
    """Python, torch and transformers versions, CPU model and count, torch threads, the GPU if any,
    and the load average when called (these machines are shared: a loaded one times slower)."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info
