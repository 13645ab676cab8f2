"""Compositional layers: one description gives a finite network and its infinite-width kernels.

    net = serial(Conv(64, (3, 3), padding="same"), Relu(), GlobalAvgPool(), Dense(1))
    K = net.kernels(X)               # Kernels(nngp, ntk), each (n, n)
    model = net.init((1, 8, 8))      # a finite torch.nn.Module

Module map: ``state`` (the kernel state and the inputs' state), ``base`` (Layer, serial,
parallel, FanOut, FanInSum, Identity, Network), ``linear`` (Dense, Conv), ``pooling``
(AvgPool, GlobalAvgPool, Flatten), ``normalization`` (LayerNorm), ``activations`` (Relu,
LeakyRelu, Abs, Erf, Gelu, Elementwise, ...), ``spatial`` (window sums over pixel pairs),
``driver`` (evaluation in blocks of input pairs), ``lift`` (torch.nn.Sequential -> layers).
"""

from .activations import ABRelu, Abs, Activation, Elementwise, Erf, Gelu, LeakyRelu, Linear, Relu
from .base import FanInSum, FanOut, Identity, Layer, LayerError, Network, parallel, serial
from .lift import lift
from .linear import Conv, ConvModule, Dense, DenseModule, WeightModule, parameter_scales
from .normalization import LayerNorm
from .pooling import AvgPool, Flatten, GlobalAvgPool
from .state import Kernels, KernelState

__all__ = [
    "ABRelu", "Abs", "Activation", "AvgPool", "Conv", "ConvModule", "Dense", "DenseModule", "Elementwise", "Erf",
    "FanInSum", "FanOut", "Flatten", "Gelu", "GlobalAvgPool", "Identity", "Kernels", "KernelState", "Layer",
    "LayerError", "LayerNorm", "LeakyRelu", "Linear", "Network", "Relu", "WeightModule", "lift", "parallel",
    "parameter_scales", "serial",
]  # fmt: skip
