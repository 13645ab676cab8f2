"""The one place that chooses a device."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """``cuda`` when a CUDA GPU is available, else ``cpu``.

    ntklib itself never moves tensors: every function computes on the device of its inputs.
    This helper is for the caller who creates them.
    """
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def available_devices() -> list[torch.device]:
    """Every device this machine can run ntklib on (cpu always, cuda when present)."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return devices
