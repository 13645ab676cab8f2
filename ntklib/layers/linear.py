"""Layers with weights: Dense and Conv, in neural-tangents' conventions (Novak et al. 2020).

A layer with fan_in inputs (features, or channels x filter size) computes

  * "ntk":      h = (W_std / sqrt(fan_in)) W a + b_std b,  W_ij ~ N(0, 1), b_i ~ N(0, 1);
  * "standard": h = W a + b,  W_ij ~ N(0, W_std^2 / fan_in), b_i ~ N(0, b_std^2).

Both give the same function at initialisation; they differ in which numbers are trained, hence
in the gradients and the NTK. ``b_std=None`` means no bias parameter (with "ntk", ``b_std=0``
keeps a bias whose gradient is zero, as in neural-tangents). Kernel rules, with Sigma the
covariance of the layer's input per feature (channel) and Theta its NTK:

  * "ntk":      Sigma <- W_std^2 Sigma + b_std^2,  Theta <- W_std^2 (Sigma + Theta) + b_std^2;
  * "standard": Theta <- fan_in Sigma + W_std^2 Theta (+ 1 with a bias), Sigma as above,

and for a convolution the same after averaging over the filter's offsets (pixel pairs at equal
offsets share weights).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._checks import PARAMETERIZATIONS, check_parameterization, nonnegative_real, positive_int
from .base import Layer, LayerError
from .spatial import PADDINGS, pad_images, padding_amounts, patches, window_sum
from .state import KernelState, pair_gram, self_gram


def _normal(shape: tuple[int, ...], std: float, generator: torch.Generator | None, dtype: torch.dtype,
            device: torch.device | str | None) -> Tensor:  # fmt: skip
    """N(0, std^2) samples. With a generator they are drawn on the generator's device and then
    moved, so one seed gives the same network on every device."""
    if device is None:
        device = torch.empty(()).device  # torch's default device (honours torch.set_default_device)
    where = generator.device if generator is not None else device
    return (torch.randn(shape, generator=generator, dtype=dtype, device=where) * std).to(device)


class _Weighted(Layer):
    """What Dense and Conv share: widths, scales, the parameterisation and the kernel update."""

    def __init__(self, out: int, W_std: float, b_std: float | None, parameterization: str) -> None:
        self.out = positive_int("out_features", out)
        # W_std = 0 is allowed: a zero-variance layer (a residual branch that is switched off).
        self.W_std = nonnegative_real("W_std", W_std)
        self.b_std = None if b_std is None else nonnegative_real("b_std", b_std)
        self.parameterization = check_parameterization(parameterization)

    def _scales(self) -> str:
        return f"W_std={self.W_std:g}, b_std={self.b_std}, parameterization={self.parameterization!r}"

    def _update(self, state, fan_in: int, total, count: int, shape: tuple[int, ...]):
        """The kernel rule, with ``total(tensor, full)`` the layer's sum over the ``count``
        inputs each output sees (one feature for Dense, the filter window for Conv)."""
        summed = state.map_tensors(total)
        return self._affine(state, summed.nngp, summed.ntk, summed.cov1, summed.cov2, fan_in, count, shape)

    def _from_features(self, A, B, same, layout, out_shape, in_shape):
        """The state after this layer from the features each output unit sees, (n, F, P)."""
        spatial = out_shape[1:]
        sigma = pair_gram(A, B, spatial, layout.full)
        cov1 = None if same else self_gram(A, spatial, layout.cov_full)
        cov2 = None if same else self_gram(B, spatial, layout.cov_full)
        state = KernelState(sigma, sigma, cov1, cov2, in_shape, layout.full, same, cov_full=layout.cov_full)
        return self._affine(state, sigma, None, cov1, cov2, A.shape[1], 1, out_shape)

    def _affine(self, state, sigma, theta, cov1, cov2, fan_in: int, count: int, shape: tuple[int, ...]):
        """The new state from the input covariances summed over ``count`` inputs (their mean
        times count; theta None: the inputs' NTK is 0)."""
        W_var = self.W_std**2 / count  # W_std^2 times the mean
        b_var = 0.0 if self.b_std is None else self.b_std**2
        if self.parameterization == "ntk":
            theta = sigma.clone() if theta is None else theta.add_(sigma)
            theta.mul_(W_var).add_(b_var)
        else:
            mean_scale = fan_in / count
            theta = sigma * mean_scale if theta is None else theta.mul_(W_var).add_(sigma, alpha=mean_scale)
            if self.b_std is not None:
                theta.add_(1.0)
        sigma = sigma.mul_(W_var).add_(b_var)
        cov1 = None if cov1 is None else cov1.mul_(W_var).add_(b_var)
        cov2 = None if cov2 is None else cov2.mul_(W_var).add_(b_var)
        return state.replace(nngp=sigma, ntk=theta, cov1=cov1, cov2=cov2, shape=shape, is_gaussian=True, fresh=True)


class Dense(_Weighted):
    """Fully connected layer with ``out_features`` units (neural-tangents' ``stax.Dense``).

    Args:
        out_features: number of output units (the width; it matters only for "standard",
            whose NTK grows with it, and for the finite network).
        W_std: weight standard deviation sigma_w >= 0.
        b_std: bias standard deviation sigma_b >= 0, or None for no bias.
        parameterization: "ntk" or "standard" (module docstring).
    """

    def __init__(self, out_features: int, W_std: float = 1.0, b_std: float | None = None,
                 parameterization: str = "ntk") -> None:  # fmt: skip
        super().__init__(out_features, W_std, b_std, parameterization)

    def __repr__(self) -> str:
        return f"Dense({self.out}, {self._scales()})"

    def output_shape(self, in_shape):
        in_shape = self._single(in_shape)
        if len(in_shape) != 1:
            raise LayerError(f"{self!r} expects vectors but receives inputs of shape {in_shape} (channels, "
                             "pixels): put Flatten() or GlobalAvgPool() before it")  # fmt: skip
        return (self.out,)

    def build(self, in_shape, generator, dtype, device):
        return DenseModule(in_shape[0], self.out, self.W_std, self.b_std, self.parameterization,
                           generator=generator, dtype=dtype, device=device)  # fmt: skip

    def kernel(self, state):
        state = self._single(state)
        self.output_shape(state.shape)
        return self._update(state, state.shape[0], lambda tensor, full: tensor, 1, (self.out,))

    def kernel_of_inputs(self, X: Tensor, Z: Tensor, same: bool, layout):
        """The kernel rule on the inputs directly: Sigma = x.z / d, and an NTK of 0 below."""
        out_shape = self.output_shape(tuple(X.shape[1:]))  # vectors only
        return self._from_features(X[:, :, None], Z[:, :, None], same, layout, out_shape, tuple(X.shape[1:]))


class DenseModule(nn.Module):
    """The finite layer of :class:`~ntklib.Dense`: ``forward(x) = weight_scale x weight^T + bias_scale bias``.

    ======================  ======================  =========================
    parameterization        weight_scale            bias_scale
    ======================  ======================  =========================
    "ntk"                   W_std / sqrt(fan_in)    b_std
    "standard"              1                       1
    ======================  ======================  =========================

    and ``bias_scale = 0`` when ``b_std is None`` (then ``bias`` is None).

    Attributes:
        weight: (fan_out, fan_in) parameter.
        bias: (fan_out,) parameter, or None.
        weight_scale, bias_scale: the floats above.
    """

    def __init__(self, fan_in: int, fan_out: int, W_std: float = 1.0, b_std: float | None = 0.0,
                 parameterization: str = "ntk", *, generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:  # fmt: skip
        super().__init__()
        self.fan_in = positive_int("fan_in", fan_in)
        self.fan_out = positive_int("fan_out", fan_out)
        self.W_std = nonnegative_real("W_std", W_std)
        self.b_std = None if b_std is None else nonnegative_real("b_std", b_std)
        self.parameterization = check_parameterization(parameterization)
        dtype = torch.get_default_dtype() if dtype is None else dtype
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
        return (f"fan_in={self.fan_in}, fan_out={self.fan_out}, W_std={self.W_std:g}, b_std={self.b_std}, "
                f"parameterization={self.parameterization!r}")  # fmt: skip


def _as_tuple(name: str, value: object, size: int) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * size
    if not isinstance(value, (tuple, list)) or len(value) != size:
        raise ValueError(f"{name} must be an int or a tuple of {size} ints; got {value!r}")
    return tuple(positive_int(name, v) for v in value)


def check_padding(padding: object) -> str:
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}; expected one of: {', '.join(map(repr, PADDINGS))}")
    return padding  # type: ignore[return-value]


def spatial_output(layer: Layer, spatial: tuple[int, ...], window: tuple[int, ...], strides: tuple[int, ...],
                   padding: str, what: str) -> tuple[int, ...]:  # fmt: skip
    """Output pixels of a window layer, or a LayerError naming it when the window does not fit."""
    out = []
    for axis, (size, w, s) in enumerate(zip(spatial, window, strides)):
        if padding == "valid" and w > size:
            raise LayerError(f"{layer!r}: the {what} {window} is larger than the input's pixels {spatial} "
                             f"(axis {axis}) with padding='valid'; use padding='same' or a smaller {what}")  # fmt: skip
        before, after, size_out = padding_amounts(size, w, s, padding)
        if padding == "circular" and max(before, after) > size:
            raise LayerError(f"{layer!r}: circular padding of {max(before, after)} pixels wraps more than once "
                             f"around an axis of {size} pixels")  # fmt: skip
        out.append(size_out)
    return tuple(out)


class Conv(_Weighted):
    """Convolution over images (n, C, H, W) or signals (n, C, L), channels first as in torch.

    Its kernel rule averages the input covariance over the filter's offsets at equal offsets
    for both pixels, the recursion of the CNN-GP and the CNTK (Novak et al. 2019; Arora et al.
    2019). Padding as neural-tangents/JAX: "valid"; "same" (zeros, ceil(S / stride) outputs,
    the odd pixel of padding after); "circular" (the image wrapped around).

    Args:
        out_channels: output channels (the width).
        filter_shape: (fh, fw) or (fl,); an int means a square filter of a 2-D convolution.
        stride: int or tuple, >= 1.
        padding: "valid", "same" or "circular".
        W_std, b_std, parameterization: as :class:`Dense`; fan_in = C * fh * fw.
    """

    def __init__(self, out_channels: int, filter_shape: int | tuple[int, ...], stride: int | tuple[int, ...] = 1,
                 padding: str = "valid", W_std: float = 1.0, b_std: float | None = None,
                 parameterization: str = "ntk") -> None:  # fmt: skip
        super().__init__(out_channels, W_std, b_std, parameterization)
        if isinstance(filter_shape, int) and not isinstance(filter_shape, bool):
            filter_shape = (filter_shape, filter_shape)
        if not isinstance(filter_shape, (tuple, list)) or len(filter_shape) not in (1, 2):
            raise ValueError(f"filter_shape must be (fh, fw) or (fl,); got {filter_shape!r}")
        self.filter_shape = tuple(positive_int("filter_shape", f) for f in filter_shape)
        self.stride = _as_tuple("stride", stride, len(self.filter_shape))
        self.padding = check_padding(padding)

    def __repr__(self) -> str:
        return (f"Conv({self.out}, {self.filter_shape}, stride={self.stride}, padding={self.padding!r}, "
                f"{self._scales()})")  # fmt: skip

    def output_shape(self, in_shape):
        in_shape = self._single(in_shape)
        dims = len(self.filter_shape)
        if len(in_shape) != dims + 1:
            kind = "(C, H, W) images" if dims == 2 else "(C, L) signals"
            raise LayerError(f"{self!r} expects {kind} but receives inputs of shape {in_shape}")
        return (self.out, *spatial_output(self, in_shape[1:], self.filter_shape, self.stride, self.padding, "filter"))

    def build(self, in_shape, generator, dtype, device):
        return ConvModule(in_shape[0], self.out, self.filter_shape, self.stride, self.padding, self.W_std, self.b_std,
                          self.parameterization, generator=generator, dtype=dtype, device=device)  # fmt: skip

    def kernel(self, state):
        state = self._single(state)
        out_shape = self.output_shape(state.shape)
        fan_in = state.shape[0] * math.prod(self.filter_shape)

        def total(tensor: Tensor, full: bool) -> Tensor:
            return window_sum(tensor, state.spatial, self.filter_shape, self.stride, self.padding, full, paired=True)

        return self._update(state, fan_in, total, math.prod(self.filter_shape), out_shape)

    def kernel_of_inputs(self, X: Tensor, Z: Tensor, same: bool, layout):
        """The kernel rule applied to the inputs directly: the filter-window mean of the inputs'
        covariance is a Gram matrix of image patches, one matrix product instead of passes over
        pixel pairs."""
        out_shape = self.output_shape(tuple(X.shape[1:]))
        patches_x = patches(X, self.filter_shape, self.stride, self.padding)  # (n1, C F, P)
        patches_z = patches_x if same else patches(Z, self.filter_shape, self.stride, self.padding)
        return self._from_features(patches_x, patches_z, same, layout, out_shape, tuple(X.shape[1:]))



class ConvModule(nn.Module):
    """The finite layer of :class:`~ntklib.Conv`: pad (JAX's rules), then
    ``weight_scale conv(x, weight) + bias_scale bias`` with the scales of :class:`DenseModule`
    and fan_in = in_channels * filter size.

    Attributes:
        weight: ``(out_channels, in_channels, *filter_shape)`` parameter.
        bias: (out_channels,) parameter, or None.
    """

    def __init__(self, in_channels: int, out_channels: int, filter_shape: tuple[int, ...], stride: tuple[int, ...],
                 padding: str, W_std: float = 1.0, b_std: float | None = None, parameterization: str = "ntk", *,
                 generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:  # fmt: skip
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.filter_shape, self.stride, self.padding = tuple(filter_shape), tuple(stride), padding
        self.W_std, self.b_std, self.parameterization = W_std, b_std, parameterization
        self.fan_in = in_channels * math.prod(self.filter_shape)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        standard = parameterization == "standard"
        weight_std = W_std / math.sqrt(self.fan_in) if standard else 1.0
        self.weight = nn.Parameter(_normal((out_channels, in_channels, *self.filter_shape), weight_std, generator,
                                           dtype, device))  # fmt: skip
        self.weight_scale = 1.0 if standard else W_std / math.sqrt(self.fan_in)
        if b_std is None:
            self.register_parameter("bias", None)
            self.bias_scale = 0.0
        else:
            self.bias = nn.Parameter(_normal((out_channels,), b_std if standard else 1.0, generator, dtype, device))
            self.bias_scale = 1.0 if standard else b_std

    def pad(self, x: Tensor) -> Tensor:
        """The input with this layer's padding, so that a "valid" convolution follows."""
        return pad_images(x, self.filter_shape, self.stride, self.padding)

    def forward(self, x: Tensor) -> Tensor:
        """``(n, in_channels, *S) -> (n, out_channels, *S_out)``."""
        conv = F.conv2d if len(self.filter_shape) == 2 else F.conv1d
        out = conv(self.pad(x), self.weight, stride=self.stride)
        if self.weight_scale != 1.0:
            out = out * self.weight_scale
        if self.bias is not None:
            bias = self.bias if self.bias_scale == 1.0 else self.bias_scale * self.bias
            out = out + bias.view(-1, *([1] * len(self.filter_shape)))
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, filter_shape={self.filter_shape}, stride={self.stride}, "
                f"padding={self.padding!r}, W_std={self.W_std:g}, b_std={self.b_std}, "
                f"parameterization={self.parameterization!r}")  # fmt: skip


__all__ = ["Conv", "ConvModule", "Dense", "DenseModule", "PARAMETERIZATIONS"]
