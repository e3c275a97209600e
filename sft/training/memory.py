"""Peak memory of one training run, also when several run one after another in one process (a multirun)."""

from __future__ import annotations

import ctypes
import gc
import resource
from pathlib import Path

import torch

_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak() -> None:
    """Start counting the peak afresh: the process's resident high-water mark (Linux) and CUDA's."""
    # Memory an earlier run of this process freed may still be held by the allocator, and would count as
    # this run's: collect it and hand it back to the system first.
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    try:
        _CLEAR_REFS.write_text("5")  # Linux >= 4.0: resets VmHWM to the current resident size
    except OSError:
        pass  # elsewhere the peak is the process's since it started (getrusage)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_rss_gb() -> float:
    """The highest resident memory of this process since `reset_peak`, in GiB."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 2**20, 3)  # kB
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # kB on Linux


def peak_cuda_gb() -> float | None:
    """The highest CUDA memory allocated since `reset_peak`, in GiB; None without CUDA."""
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None
