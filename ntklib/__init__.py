"""ntklib: kernels, feature maps and the Neural Tangent Kernel in torch.

Kernels are pure functions ``(X, Z=None) -> K`` on tensors of shape (n, d) and (m, d) that return
(n, m) on the inputs' device and dtype. ``import ntklib as nk``.
"""

from .descent import dual_gradient_descent, primal_gradient_descent
from .devices import available_devices, default_device
from .empirical import LinearizedModel, empirical_ntk, linearize, monte_carlo_kernels
from .features import (
    monomial_exponents,
    polynomial_feature_count,
    polynomial_features,
    random_fourier_features,
)
from .infinite import Kernels, infinite_width_kernels
from .kernels import gaussian_kernel, linear_kernel, polynomial_kernel, squared_distances
from .networks import MLP, Dense
from .mercer import MercerReport, mercer_check
from .ridge import KernelRidge, solve_kernel_system

__version__ = "0.1.0"

__all__ = [
    "Dense",
    "LinearizedModel",
    "MLP",
    "empirical_ntk",
    "linearize",
    "monte_carlo_kernels",
    "KernelRidge",
    "Kernels",
    "MercerReport",
    "available_devices",
    "default_device",
    "dual_gradient_descent",
    "gaussian_kernel",
    "infinite_width_kernels",
    "linear_kernel",
    "mercer_check",
    "monomial_exponents",
    "polynomial_feature_count",
    "polynomial_features",
    "polynomial_kernel",
    "primal_gradient_descent",
    "random_fourier_features",
    "solve_kernel_system",
    "squared_distances",
]
