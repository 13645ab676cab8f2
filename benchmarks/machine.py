"""What every benchmark script records next to its numbers: the machine they came from."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def describe() -> dict:
    """Platform, CPU count, torch threads and version, the GPU (if any) and the load at the end."""
    import torch

    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "load_average_at_end": list(os.getloadavg()),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}  # fmt: skip


def write_results(path: Path, **sections: object) -> None:
    """Write ``{"machine": describe(), **sections}`` as JSON to ``path`` and say so."""
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"machine": describe(), **sections}, indent=1))
    print(f"wrote {path}")


def proc_MiB(path: str, field: str) -> float:
    """A ``field: value kB`` line of a /proc file (Linux), in MiB."""
    with open(path) as lines:
        for line in lines:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in {path}")


def reset_peak_memory() -> float:
    """Reset this process's peak resident memory to its current value (Linux), which it returns."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return proc_MiB("/proc/self/status", "VmRSS")


def peak_memory() -> float:
    """This process's peak resident memory (VmHWM) in MiB, since start or the last reset."""
    return proc_MiB("/proc/self/status", "VmHWM")


def available_MiB() -> float:
    """The memory available to new processes (MemAvailable), in MiB."""
    return proc_MiB("/proc/meminfo", "MemAvailable")
