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
