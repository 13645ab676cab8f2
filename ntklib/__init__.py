"""ntklib: kernels, feature maps and the Neural Tangent Kernel in torch.

Kernels are pure functions ``(X, Z=None) -> K`` on tensors of shape (n, d) and (m, d) that return
(n, m) on the inputs' device and dtype. ``import ntklib as nk``.
"""

from . import benchmark
from .descent import dual_gradient_descent, primal_gradient_descent
from .devices import available_devices, default_device
from .dynamics import FlowPrediction, Gaussian, gp_inference, gradient_flow, nngp_ensemble, ntk_ensemble
from .empirical import LinearizedModel, empirical_ntk, linearize, monte_carlo_kernels
from .features import (
    monomial_exponents,
    polynomial_feature_count,
    polynomial_features,
    random_fourier_features,
)
from .infinite import Kernels, infinite_width_kernels, infinite_width_kernels_by_depth
from .kernels import gaussian_kernel, linear_kernel, polynomial_kernel, squared_distances
from .networks import MLP, Dense
from .mercer import MercerReport, mercer_check
from .ridge import KernelRidge, solve_kernel_system
from .training import Trajectory, train

__version__ = "0.1.0"

__all__ = [
    "available_devices",
    "default_device",
    "Dense",
    "dual_gradient_descent",
    "empirical_ntk",
    "FlowPrediction",
    "Gaussian",
    "gaussian_kernel",
    "gp_inference",
    "gradient_flow",
    "infinite_width_kernels",
    "infinite_width_kernels_by_depth",
    "KernelRidge",
    "Kernels",
    "linear_kernel",
    "linearize",
    "LinearizedModel",
    "mercer_check",
    "MercerReport",
    "MLP",
    "monomial_exponents",
    "monte_carlo_kernels",
    "nngp_ensemble",
    "ntk_ensemble",
    "polynomial_feature_count",
    "polynomial_features",
    "polynomial_kernel",
    "primal_gradient_descent",
    "random_fourier_features",
    "solve_kernel_system",
    "squared_distances",
    "train",
    "Trajectory",
]
