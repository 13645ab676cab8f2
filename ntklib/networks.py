"""Fully connected networks: the one place where the MLP's shape is written.

``mlp(width, depth)`` is the description ``serial(Dense(width), phi, ..., Dense(width), phi,
Dense(out_features))``: ``depth`` hidden layers Dense -> activation, then a Dense readout, every
Dense with the same W_std, b_std and parameterisation (neural-tangents' conventions, see
:mod:`ntklib.layers.linear`). :class:`MLP` is its finite network and
:func:`ntklib.infinite_width_kernels` its kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import _real, check_parameterization, nonnegative_real, positive_int
from .layers.activations import Activation, activation_by_name
from .layers.base import Network, Serial, serial
from .layers.linear import Dense, DenseModule


def mlp(width: int, depth: int, out_features: int = 1, activation: str | Activation = "relu", W_std: float = 1.0,
        b_std: float | None = 0.0, parameterization: str = "ntk", *, negative_slope: float = 0.01) -> Serial:  # fmt: skip
    """The description of an MLP: ``depth`` hidden layers of ``width`` units, then a readout.

    Args:
        width: hidden width >= 1.
        depth: number of hidden layers (Dense + activation), >= 1.
        out_features: output dimension >= 1.
        activation: a name ("relu", "leaky_relu", "abs", "erf", "gelu", "identity") or an
            activation layer such as ``nk.Elementwise(torch.tanh)``.
        W_std, b_std, parameterization: of every Dense layer; ``b_std=None``: no biases.
        negative_slope: the slope for h < 0 of "leaky_relu".
    """
    width, depth = positive_int("width", width), positive_int("depth", depth)
    out_features = positive_int("out_features", out_features)
    if not isinstance(activation, Activation):
        activation = activation_by_name(activation, _real("negative_slope", negative_slope))
    layers = []
    for _ in range(depth):
        layers += [Dense(width, W_std, b_std, parameterization), activation]
    return serial(*layers, Dense(out_features, W_std, b_std, parameterization))


class MLP(Network):
    """A finite fully connected network in neural-tangents' ``stax`` conventions.

    f(x) = Dense_{depth+1}(phi(Dense_depth(... phi(Dense_1(x))))), built from :func:`mlp`; at
    infinite width its kernels are :func:`ntklib.infinite_width_kernels` with the same arguments.

    Example:
        >>> net = MLP(3, width=512, depth=2, activation="erf", generator=torch.Generator().manual_seed(0))
        >>> net(torch.randn(10, 3)).shape
        torch.Size([10, 1])

    Args:
        in_features: input dimension d >= 1.
        width: hidden width; it, ``depth``, ``out_features``, ``activation``, ``W_std``,
            ``b_std``, ``parameterization`` and ``negative_slope`` are as in :func:`mlp`.
        generator: draws every initial parameter, layer by layer (weight, then bias), on the
            generator's device; then they move to ``device``. The global generator when None.
        dtype, device: of the parameters; torch's defaults when None.

    Attributes:
        hidden: the ``depth`` hidden :class:`~ntklib.layers.DenseModule` layers, input first.
        readout: the last DenseModule, width -> out_features.
    """

    def __init__(self, in_features: int, width: int, depth: int, out_features: int = 1,
                 activation: str | Activation = "relu", W_std: float = 1.0, b_std: float | None = 0.0,
                 parameterization: str = "ntk", *, negative_slope: float = 0.01,
                 generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:  # fmt: skip
        in_features = positive_int("in_features", in_features)
        if b_std is not None:
            nonnegative_real("b_std", b_std)
        check_parameterization(parameterization)
        description = mlp(width, depth, out_features, activation, W_std, b_std, parameterization,
                          negative_slope=negative_slope)  # fmt: skip
        built = description.init(in_features, generator=generator, dtype=dtype, device=device)
        super().__init__(description, built.in_shape, built.body)
        self.in_features, self.width, self.depth, self.out_features = in_features, width, depth, out_features
        self.W_std, self.b_std, self.parameterization = float(W_std), None if b_std is None else float(b_std), parameterization
        self.activation_layer: Activation = description.layers[1]
        self.activation = self.activation_layer.name if not isinstance(activation, str) else activation

    @property
    def layers(self) -> list[DenseModule]:
        """All depth + 1 Dense modules, input to readout."""
        return [module for module in self.body if isinstance(module, DenseModule)]

    @property
    def hidden(self) -> nn.ModuleList:
        """The ``depth`` hidden Dense modules (a view: freezing them freezes the network's)."""
        return nn.ModuleList(self.layers[:-1])

    @property
    def readout(self) -> DenseModule:
        return self.layers[-1]

    def phi(self, h: Tensor) -> Tensor:
        """The activation, elementwise."""
        return self.activation_layer.fn(h)

    def phi_prime(self, h: Tensor) -> Tensor:
        """The activation's derivative, elementwise, with autograd's value at kinks (h = 0)."""
        return self.activation_layer.derivative(h)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, activation={self.activation_layer!r}"
