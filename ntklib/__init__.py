"""ntklib: kernels, feature maps and the Neural Tangent Kernel in torch.

Kernels are pure functions ``(X, Z=None) -> K`` on tensors of shape (n, d) and (m, d) that return
(n, m) on the inputs' device and dtype. Networks are described once with layers
(``nk.serial(nk.Conv(...), nk.Relu(), ...)``): ``net.kernels(X, Z)`` gives their infinite-width
NNGP and NTK, ``net.init(in_shape)`` a finite torch module. ``import ntklib as nk``.
"""

from .descent import dual_gradient_descent, kernel_gradient_descent, primal_gradient_descent
from .devices import available_devices, default_device
from .dynamics import FlowPrediction, Gaussian, gp_inference, gradient_flow, nngp_ensemble, ntk_ensemble
from .empirical import empirical_ntk
from .linearization import LinearizedModel, linearize
from .monte_carlo import MonteCarloKernels, monte_carlo_kernels
from .features import monomial_exponents, polynomial_feature_count, polynomial_features, random_fourier_features
from .infinite import infinite_width_kernels, infinite_width_kernels_by_depth
from .kernels import gaussian_kernel, linear_kernel, polynomial_kernel, squared_distances
from .layers import (
    ABRelu,
    Abs,
    AvgPool,
    Conv,
    Dense,
    Elementwise,
    Erf,
    FanInSum,
    FanOut,
    Flatten,
    Gelu,
    GlobalAvgPool,
    Identity,
    Kernels,
    Layer,
    LayerError,
    LayerNorm,
    LeakyRelu,
    Network,
    Relu,
    lift,
    parallel,
    serial,
)
from .mercer import MercerReport, mercer_check
from .networks import MLP, mlp
from .pcg import SolveInfo
from .propagation import SignalPropagation, signal_propagation
from .ridge import KernelRidge, solve_kernel_system
from .tiled import kernel_matrix
from .training import Trajectory, TrainingDiverged, train
from .trajectory import KernelTracker, critical_learning_rate, kernel_distance

__version__ = "0.2.0"

__all__ = [
    # kernels and feature maps
    "gaussian_kernel", "linear_kernel", "polynomial_kernel", "squared_distances", "monomial_exponents",
    "polynomial_feature_count", "polynomial_features", "random_fourier_features", "mercer_check", "MercerReport",
    # regression and gradient descent
    "KernelRidge", "solve_kernel_system", "SolveInfo", "primal_gradient_descent", "kernel_gradient_descent",
    "dual_gradient_descent",
    # kernels larger than memory
    "kernel_matrix",
    # layers: one description, finite network and infinite-width kernels
    "Layer", "LayerError", "Network", "serial", "parallel", "FanOut", "FanInSum", "Identity", "Dense", "Conv",
    "AvgPool", "GlobalAvgPool", "Flatten", "LayerNorm", "Relu", "LeakyRelu", "Abs", "ABRelu", "Erf", "Gelu",
    "Elementwise", "lift", "Kernels", "MLP", "mlp", "infinite_width_kernels", "infinite_width_kernels_by_depth",
    # finite networks
    "empirical_ntk", "linearize", "LinearizedModel", "monte_carlo_kernels", "MonteCarloKernels", "train",
    "Trajectory", "TrainingDiverged", "KernelTracker", "critical_learning_rate", "kernel_distance",
    # signal propagation
    "signal_propagation", "SignalPropagation",
    # dynamics
    "gradient_flow", "FlowPrediction", "Gaussian", "gp_inference", "nngp_ensemble", "ntk_ensemble",
    # devices
    "available_devices", "default_device",
]  # fmt: skip
