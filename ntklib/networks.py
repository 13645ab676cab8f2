"""Finite-width MLPs in neural-tangents' ``stax.Dense`` conventions (Novak et al. 2020).

``MLP(d, width, depth)`` is ``stax.serial(Dense(width, W_std, b_std), Act(), ...,
Dense(out_features, W_std, b_std))``: ``depth`` hidden layers Dense -> activation, then a Dense
readout. A Dense layer with fan_in inputs computes, for x of shape (n, fan_in):

  * "ntk":      h = (W_std / sqrt(fan_in)) x W^T + b_std b,  W_ij ~ N(0, 1), b_i ~ N(0, 1);
  * "standard": h = x W^T + b,  W_ij ~ N(0, W_std^2 / fan_in), b_i ~ N(0, b_std^2).

Both give the same function at initialisation; they differ in which numbers are the trainable
parameters, hence in the gradients and the NTK. ``b_std=None`` means no bias parameter at all
(with "ntk", ``b_std=0`` keeps a bias parameter whose gradient is zero, as in neural-tangents).
Their infinite-width kernels are :func:`ntklib.infinite_width_kernels`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from ._checks import _real, nonnegative_real, positive_int, positive_real

PARAMETERIZATIONS = ("ntk", "standard")


def _relu_derivative(h: Tensor, negative_slope: float) -> Tensor:
    # 0 at h = 0, as torch's autograd, so the manual backward pass matches it exactly.
    return (h > 0).to(h.dtype)


def _leaky_relu_derivative(h: Tensor, negative_slope: float) -> Tensor:
    # negative_slope at h = 0, as torch's autograd for leaky_relu.
    # (torch.where with Python scalars would round the slope to the default dtype.)
    return torch.full_like(h, negative_slope).masked_fill_(h > 0, 1.0)


_ERF_SLOPE = 2.0 / math.sqrt(math.pi)

# name -> (phi(h, negative_slope), phi'(h, negative_slope)). An MLP stores only the name, so it
# still pickles.
ACTIVATIONS: dict[str, tuple[Callable[[Tensor, float], Tensor], Callable[[Tensor, float], Tensor]]] = {
    "relu": (lambda h, s: torch.relu(h), _relu_derivative),
    "erf": (lambda h, s: torch.special.erf(h), lambda h, s: _ERF_SLOPE * torch.exp(-h * h)),
    "identity": (lambda h, s: h, lambda h, s: torch.ones_like(h)),
    "leaky_relu": (lambda h, s: nn.functional.leaky_relu(h, s), _leaky_relu_derivative),
    # sign(0) = 0 is also autograd's derivative of |h| at 0.
    "abs": (lambda h, s: torch.abs(h), lambda h, s: torch.sign(h)),
}


def check_activation(activation: object) -> str:
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a string; got {type(activation).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of: {', '.join(sorted(ACTIVATIONS))}")
    return activation


def check_parameterization(parameterization: object) -> str:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"unknown parameterization {parameterization!r}; expected one of: {', '.join(PARAMETERIZATIONS)}"
        )
    return parameterization  # type: ignore[return-value]


def _normal(
    shape: tuple[int, ...],
    std: float,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> Tensor:
    """N(0, std^2) samples. With a generator they are drawn on the generator's device and then
    moved, so one seed gives the same network on every device."""
    if device is None:
        device = torch.empty(()).device  # torch's default device (honours torch.set_default_device)
    where = generator.device if generator is not None else device
    return (torch.randn(shape, generator=generator, dtype=dtype, device=where) * std).to(device)


class Dense(nn.Module):
    """One fully connected layer in neural-tangents' conventions (see the module docstring).

    ``forward(x) = weight_scale * x @ weight.T + bias_scale * bias``, where

    ======================  ======================  =========================
    parameterization        weight_scale            bias_scale
    ======================  ======================  =========================
    "ntk"                   W_std / sqrt(fan_in)    b_std
    "standard"              1                       1
    ======================  ======================  =========================

    and ``bias_scale = 0`` when ``b_std is None`` (then ``bias`` is None). The gradient of the
    output unit h_i is weight_scale * x w.r.t. row i of ``weight`` and bias_scale w.r.t. bias_i,
    which is all the structured NTK of :func:`ntklib.empirical_ntk` needs.

    Args:
        fan_in, fan_out: input and output sizes, >= 1.
        W_std: weight standard deviation sigma_w > 0.
        b_std: bias standard deviation sigma_b >= 0, or None for no bias.
        parameterization: "ntk" or "standard".
        generator: draws the initial parameters (on its own device, then moved to ``device``);
            the global generator when None.
        dtype, device: of the parameters; torch's defaults when None.

    Attributes:
        weight: (fan_out, fan_in) parameter.
        bias: (fan_out,) parameter, or None.
        weight_scale, bias_scale: the floats above.
    """

    def __init__(
        self,
        fan_in: int,
        fan_out: int,
        W_std: float = 1.0,
        b_std: float | None = 0.0,
        parameterization: str = "ntk",
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.fan_in = positive_int("fan_in", fan_in)
        self.fan_out = positive_int("fan_out", fan_out)
        self.W_std = positive_real("W_std", W_std)
        self.b_std = None if b_std is None else nonnegative_real("b_std", b_std)
        self.parameterization = check_parameterization(parameterization)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype; got {dtype!r}")

        standard = self.parameterization == "standard"
        # "standard" puts the scales into the initial values; "ntk" into the forward pass.
        weight_std = self.W_std / math.sqrt(self.fan_in) if standard else 1.0
        self.weight = nn.Parameter(_normal((self.fan_out, self.fan_in), weight_std, generator, dtype, device))
        self.weight_scale = 1.0 if standard else self.W_std / math.sqrt(self.fan_in)
        if self.b_std is None:
            self.register_parameter("bias", None)
            self.bias_scale = 0.0
        else:
            bias_std = self.b_std if standard else 1.0
            self.bias = nn.Parameter(_normal((self.fan_out,), bias_std, generator, dtype, device))
            self.bias_scale = 1.0 if standard else self.b_std

    def forward(self, x: Tensor) -> Tensor:
        """(n, fan_in) -> (n, fan_out)."""
        out = x @ self.weight.T
        if self.weight_scale != 1.0:
            out = out * self.weight_scale
        if self.bias is not None:
            out = out + (self.bias if self.bias_scale == 1.0 else self.bias_scale * self.bias)
        return out

    def extra_repr(self) -> str:
        return (
            f"fan_in={self.fan_in}, fan_out={self.fan_out}, W_std={self.W_std:g}, b_std={self.b_std}, "
            f"parameterization={self.parameterization!r}"
        )


class MLP(nn.Module):
    """A fully connected network in neural-tangents' ``stax`` conventions.

    f(x) = Dense_{depth+1}(phi(Dense_depth(... phi(Dense_1(x))))): ``depth`` hidden layers of
    ``width`` units, then a readout to ``out_features``. All layers share W_std, b_std and the
    parameterization (see :class:`Dense`). At infinite width its kernels are
    :func:`ntklib.infinite_width_kernels` with the same arguments.

    Example:
        >>> net = MLP(3, width=512, depth=2, activation="erf", generator=torch.Generator().manual_seed(0))
        >>> net(torch.randn(10, 3)).shape
        torch.Size([10, 1])

    Args:
        in_features: input dimension d >= 1.
        width: hidden width >= 1.
        depth: number of hidden layers (Dense + activation), >= 1.
        out_features: output dimension k >= 1.
        activation: "relu", "erf", "identity", "leaky_relu" or "abs".
        W_std: weight standard deviation sigma_w > 0.
        b_std: bias standard deviation sigma_b >= 0; None for no biases at all.
        parameterization: "ntk" or "standard".
        negative_slope: the slope for h < 0 of "leaky_relu" (ignored by the others).
        generator: draws every initial parameter, layer by layer (weight, then bias), on the
            generator's device; then they move to ``device``. The global generator when None.
        dtype, device: of the parameters; torch's defaults when None.

    Attributes:
        hidden: ``nn.ModuleList`` of the ``depth`` hidden :class:`Dense` layers.
        readout: the last :class:`Dense` layer, width -> out_features.
    """

    def __init__(
        self,
        in_features: int,
        width: int,
        depth: int,
        out_features: int = 1,
        activation: str = "relu",
        W_std: float = 1.0,
        b_std: float | None = 0.0,
        parameterization: str = "ntk",
        *,
        negative_slope: float = 0.01,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = positive_int("in_features", in_features)
        self.width = positive_int("width", width)
        self.depth = positive_int("depth", depth)
        self.out_features = positive_int("out_features", out_features)
        self.activation = check_activation(activation)
        self.negative_slope = _real("negative_slope", negative_slope)
        positive_real("W_std", W_std)
        if b_std is not None:
            nonnegative_real("b_std", b_std)
        check_parameterization(parameterization)
        self.parameterization = parameterization
        self.W_std, self.b_std = float(W_std), None if b_std is None else float(b_std)

        def dense(fan_in: int, fan_out: int) -> Dense:
            return Dense(fan_in, fan_out, W_std, b_std, parameterization, generator=generator, dtype=dtype, device=device)

        sizes = [self.in_features] + [self.width] * self.depth
        self.hidden = nn.ModuleList(dense(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.readout = dense(self.width, self.out_features)

    def phi(self, h: Tensor) -> Tensor:
        """The activation, elementwise."""
        return ACTIVATIONS[self.activation][0](h, self.negative_slope)

    def phi_prime(self, h: Tensor) -> Tensor:
        """The activation's derivative, elementwise, with autograd's value at kinks (h = 0)."""
        return ACTIVATIONS[self.activation][1](h, self.negative_slope)

    @property
    def layers(self) -> list[Dense]:
        """All depth + 1 Dense layers, input to readout."""
        return [*self.hidden, self.readout]

    def forward(self, x: Tensor) -> Tensor:
        """(n, in_features) -> (n, out_features).

        Checks shapes, dtype and device only (no NaN scan, which would force a device sync and
        break ``torch.func.vmap``); :func:`ntklib.empirical_ntk` validates values.
        """
        self.check_input("x", x)
        for layer in self.hidden:
            x = self.phi(layer(x))
        return self.readout(x)

    def check_input(self, name: str, x: object) -> None:
        """Raise a TypeError/ValueError naming ``name`` unless x is (n, in_features) on the
        parameters' device and dtype."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (n, {self.in_features}); got {type(x).__name__}")
        if x.ndim != 2:
            hint = f" (for a single point use {name}[None, :])" if x.ndim == 1 else ""
            raise ValueError(f"{name} must be 2-D of shape (n, {self.in_features}); got shape {tuple(x.shape)}{hint}")
        if x.shape[1] != self.in_features:
            raise ValueError(f"{name} has {x.shape[1]} features but this MLP expects in_features={self.in_features}")
        weight = self.readout.weight
        if x.dtype != weight.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but the MLP's parameters are {weight.dtype}; cast one of them")
        if x.device != weight.device:
            raise ValueError(f"{name} is on {x.device} but the MLP's parameters are on {weight.device}; move one of them")

    def extra_repr(self) -> str:
        slope = f", negative_slope={self.negative_slope:g}" if self.activation == "leaky_relu" else ""
        return f"activation={self.activation!r}{slope}"
