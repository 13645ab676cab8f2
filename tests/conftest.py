import pytest
import torch

import ntklib as nk


@pytest.fixture(params=nk.available_devices(), ids=str)
def device(request) -> torch.device:
    """Every device test runs on cpu, and on cuda too when this machine has one."""
    return request.param


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def randn(*shape, generator, device, dtype=torch.float64) -> torch.Tensor:
    """Seeded normal samples drawn on the CPU, so every device sees the same numbers."""
    return torch.randn(*shape, generator=generator, dtype=dtype).to(device)
