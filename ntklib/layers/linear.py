"""Layers with weights: Dense and Conv, in neural-tangents' conventions (Novak et al. 2020).

A layer with fan_in inputs (features, or channels x filter size) computes

  * "ntk":      h = (W_std / sqrt(fan_in)) W a + b_std b,  W_ij ~ N(0, 1), b_i ~ N(0, 1);
  * "standard": h = W a + b,  W_ij ~ N(0, W_std^2 / fan_in), b_i ~ N(0, b_std^2).

Both give the same function at initialisation; they differ in which numbers are trained, hence
in the gradients and the NTK. A third, "mup" (the maximal update parameterisation), scales the
first and last weight layers differently so that features keep learning as the width grows
(Yang & Hu 2021); ``parameter_scales`` gives all three. ``b_std=None`` means no bias parameter (with "ntk", ``b_std=0``
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

from .._checks import PARAMETERIZATIONS, check_parameterization, nonnegative_real, nonnegative_scale, positive_int
from .base import Layer, LayerError
from .spatial import PADDINGS, pad_images, padding_amounts, patches, window_sum
from .state import KernelState, TensorPool, pair_gram, self_gram


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

    def __init__(self, out: int, W_std: float | Tensor, b_std: float | Tensor | None, parameterization: str) -> None:
        self.out = positive_int("out_features", out)
        # W_std = 0 is allowed: a zero-variance layer (a residual branch that is switched off).
        # A tensor that requires grad stays a tensor: the kernel rule is then differentiable in it.
        self.W_std = nonnegative_scale("W_std", W_std)
        self.b_std = None if b_std is None else nonnegative_scale("b_std", b_std)
        self.parameterization = check_parameterization(parameterization)

    def _scales(self) -> str:
        b_std = f"{float(self.b_std.detach()):g}" if isinstance(self.b_std, Tensor) else self.b_std
        return f"W_std={self.W_std:g}, b_std={b_std}, parameterization={self.parameterization!r}"

    def _no_mup_kernel(self) -> None:
        if self.parameterization == "mup":
            raise LayerError(
                f"{self!r}: the maximal update parameterisation has no fixed infinite-width kernels (its "
                "outputs vanish at initialisation and its NTK keeps moving while it trains, Yang & Hu 2021); "
                "measure finite networks instead (nk.empirical_ntk, nk.KernelTracker)"
            )

    def _update(self, state, fan_in: int, total, count: int, shape: tuple[int, ...]):
        """The kernel rule, with ``total(tensor, full)`` the layer's sum over the ``count``
        inputs each output sees (one feature for Dense, the filter window for Conv)."""
        self._no_mup_kernel()
        summed = state.map_tensors(total)
        return self._affine(state, summed.nngp, summed.ntk, summed.cov1, summed.cov2, fan_in, count, shape)

    def _from_features(self, A, B, same, layout, out_shape, in_shape):
        """The state after this layer from the features each output unit sees, (n, F, P)."""
        self._no_mup_kernel()
        spatial = out_shape[1:]
        sigma = pair_gram(A, B, spatial, layout.full, layout.pool)
        cov1 = None if same else self_gram(A, spatial, layout.cov_full)
        cov2 = None if same else self_gram(B, spatial, layout.cov_full)
        state = KernelState(sigma, sigma, cov1, cov2, in_shape, layout.full, same, cov_full=layout.cov_full,
                            pool=layout.pool)  # fmt: skip
        return self._affine(state, sigma, None, cov1, cov2, A.shape[1], 1, out_shape)

    def _affine(self, state, sigma, theta, cov1, cov2, fan_in: int, count: int, shape: tuple[int, ...]):
        """The new state from the input covariances summed over ``count`` inputs (their mean
        times count; theta None: the inputs' NTK is 0)."""
        W_var = self.W_std**2 / count  # W_std^2 times the mean
        b_var = 0.0 if self.b_std is None else self.b_std**2
        if self.parameterization == "ntk":
            # Theta' = W_var (Theta + Sigma) + b_var = W_var Theta + Sigma': one pass after Sigma'
            sigma = _scale_shift(sigma, W_var, b_var)
            if theta is None:
                theta = state.scratch_like(sigma).copy_(sigma)
            elif isinstance(W_var, Tensor):  # learnt W_std (ntklib.gpytorch_kernels): alpha is a number
                theta = theta.mul_(W_var).add_(sigma)
            else:
                theta = torch.add(sigma, theta, alpha=W_var, out=theta)
        else:
            mean_scale = fan_in / count
            theta = sigma * mean_scale if theta is None else theta.mul_(W_var).add_(sigma, alpha=mean_scale)
            if self.b_std is not None:
                theta.add_(1.0)
            sigma = _scale_shift(sigma, W_var, b_var)
        cov1 = None if cov1 is None else _scale_shift(cov1, W_var, b_var)
        cov2 = None if cov2 is None else _scale_shift(cov2, W_var, b_var)
        return state.replace(nngp=sigma, ntk=theta, cov1=cov1, cov2=cov2, shape=shape, is_gaussian=True, fresh=True)


def _scale_shift(tensor: Tensor, scale: float | Tensor, shift: float | Tensor) -> Tensor:
    """scale * tensor + shift in place, skipping the passes over the kernel that change nothing
    (W_std = 1 and no bias, the default MLP)."""
    if isinstance(scale, Tensor) or scale != 1.0:
        tensor = tensor.mul_(scale)
    if isinstance(shift, Tensor) or shift != 0.0:
        tensor = tensor.add_(shift)
    return tensor


class Dense(_Weighted):
    """Fully connected layer with ``out_features`` units (neural-tangents' ``stax.Dense``).

    Args:
        out_features: number of output units (the width; it matters only for "standard",
            whose NTK grows with it, and for the finite network).
        W_std: weight standard deviation sigma_w >= 0.
        b_std: bias standard deviation sigma_b >= 0, or None for no bias.
        parameterization: "ntk", "standard" or "mup" (module docstring; "mup" builds finite
            networks only: it has no fixed infinite-width kernels).

    W_std and b_std may also be one-element tensors that require grad: the kernels are then
    differentiable in them (autograd through the whole recursion; the finite network built by
    ``init`` uses their values). This is how ``ntklib.gpytorch_kernels`` learns them.
    """

    def __init__(self, out_features: int, W_std: float | Tensor = 1.0, b_std: float | Tensor | None = None,
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

    def build(self, in_shape, context):
        return DenseModule(in_shape[0], self.out, self.W_std, self.b_std, self.parameterization,
                           role=context.roles.get(id(self), "hidden"), generator=context.generator,
                           dtype=context.dtype, device=context.device)  # fmt: skip

    def kernel(self, state):
        state = self._single(state)
        self.output_shape(state.shape)
        return self._update(state, state.shape[0], lambda tensor, full: tensor, 1, (self.out,))

    def kernel_of_inputs(self, X: Tensor, Z: Tensor, same: bool, layout):
        """The kernel rule on the inputs directly: Sigma = x.z / d, and an NTK of 0 below."""
        out_shape = self.output_shape(tuple(X.shape[1:]))  # vectors only
        return self._from_features(X[:, :, None], Z[:, :, None], same, layout, out_shape, tuple(X.shape[1:]))


def parameter_scales(parameterization: str, W_std: float, b_std: float | None, fan_in: int, fan_out: int,
                     role: str) -> tuple[float, float, float, float]:  # fmt: skip
    """(weight init std, weight multiplier, bias init std, bias multiplier) of a layer: its
    effective weights are ``multiplier * parameter``, so that plain SGD with one learning rate
    trains every layer at the rate its parameterisation prescribes.

      * "ntk": parameters N(0, 1), multipliers W_std / sqrt(fan_in) and b_std;
      * "standard": parameters N(0, W_std^2 / fan_in) and N(0, b_std^2), multipliers 1;
      * "mup", the maximal update parameterisation for SGD (Yang & Hu 2021; Yang et al. 2021,
        Table 3): effective weights of variance v trained at the learning rate lr * m, with
        v = W_std^2 / fan_in and m = fan_out for the input layer, v = W_std^2 / fan_in and m = 1
        for hidden layers, v = W_std^2 / fan_in^2 and m = 1 / fan_in for the output layer, and
        v = b_std^2, m = fan_out for every bias; realised as parameters N(0, v / m) with the
        multiplier sqrt(m).
    """
    if parameterization == "ntk":
        return 1.0, W_std / math.sqrt(fan_in), 1.0, (b_std or 0.0)
    if parameterization == "standard":
        return W_std / math.sqrt(fan_in), 1.0, (b_std or 0.0), 1.0
    variance, rate = {"input": (W_std**2 / fan_in, fan_out), "hidden": (W_std**2 / fan_in, 1.0),
                      "output": (W_std**2 / fan_in**2, 1.0 / fan_in)}[role]  # fmt: skip
    bias = b_std or 0.0
    return (math.sqrt(variance / rate), math.sqrt(rate), bias / math.sqrt(fan_out), math.sqrt(fan_out))


class WeightModule(nn.Module):
    """What the finite Dense and Conv layers share: their parameters, drawn weights first, then
    biases, with the scales of ``parameter_scales``. ``bias`` is None when b_std is None.

    Attributes:
        weight: the weight parameter; bias: the bias parameter or None.
        weight_scale, bias_scale: the multipliers of the parameters in the forward pass.
    """

    def _init_parameters(self, weight_shape: tuple[int, ...], fan_in: int, fan_out: int, W_std: float,
                    b_std: float | None, parameterization: str, role: str, generator, dtype, device) -> None:  # fmt: skip
        self.W_std = nonnegative_real("W_std", W_std)
        self.b_std = None if b_std is None else nonnegative_real("b_std", b_std)
        self.parameterization = check_parameterization(parameterization)
        if role not in ROLES:
            raise ValueError(f"unknown muP role {role!r}; expected one of: {', '.join(ROLES)}")
        self.role = role
        dtype = torch.get_default_dtype() if dtype is None else dtype
        weight_std, self.weight_scale, bias_std, bias_scale = parameter_scales(
            self.parameterization, self.W_std, self.b_std, fan_in, fan_out, role)  # fmt: skip
        self.weight = nn.Parameter(_normal(weight_shape, weight_std, generator, dtype, device))
        if self.b_std is None:
            self.register_parameter("bias", None)
            self.bias_scale = 0.0
        else:
            self.bias = nn.Parameter(_normal((weight_shape[0],), bias_std, generator, dtype, device))
            self.bias_scale = bias_scale

    def _affine(self, out: Tensor, spatial_ndim: int) -> Tensor:
        """weight_scale * out + bias_scale * bias, the bias broadcast over pixels."""
        if self.weight_scale != 1.0:
            out = out * self.weight_scale
        if self.bias is not None:
            bias = self.bias if self.bias_scale == 1.0 else self.bias_scale * self.bias
            out = out + bias.view(-1, *([1] * spatial_ndim))
        return out

    def _scales_repr(self) -> str:
        role = f", role={self.role!r}" if self.parameterization == "mup" else ""
        return f"W_std={self.W_std:g}, b_std={self.b_std}, parameterization={self.parameterization!r}{role}"


ROLES = ("input", "hidden", "output")


class DenseModule(WeightModule):
    """The finite layer of :class:`~ntklib.Dense`: ``forward(x) = weight_scale x weight^T + bias_scale bias``.

    ======================  ======================  =========================
    parameterization        weight_scale            bias_scale
    ======================  ======================  =========================
    "ntk"                   W_std / sqrt(fan_in)    b_std
    "standard"              1                       1
    "mup"                   sqrt(m)                 sqrt(fan_out)
    ======================  ======================  =========================

    (m by role, see ``parameter_scales``), and ``bias_scale = 0`` when ``b_std is None``
    (then ``bias`` is None).

    Attributes:
        weight: (fan_out, fan_in) parameter.
        bias: (fan_out,) parameter, or None.
        weight_scale, bias_scale: the floats above.
    """

    def __init__(self, fan_in: int, fan_out: int, W_std: float = 1.0, b_std: float | None = 0.0,
                 parameterization: str = "ntk", *, role: str = "hidden", generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:  # fmt: skip
        super().__init__()
        self.fan_in = positive_int("fan_in", fan_in)
        self.fan_out = positive_int("fan_out", fan_out)
        self._init_parameters((self.fan_out, self.fan_in), self.fan_in, self.fan_out, W_std, b_std, parameterization,
                         role, generator, dtype, device)  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        """(n, fan_in) -> (n, fan_out)."""
        return self._affine(x @ self.weight.T, 0)

    def extra_repr(self) -> str:
        return f"fan_in={self.fan_in}, fan_out={self.fan_out}, {self._scales_repr()}"


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
        W_std, b_std, parameterization: as :class:`Dense` (tensors that require grad included);
            fan_in = C * fh * fw.
    """

    def __init__(self, out_channels: int, filter_shape: int | tuple[int, ...], stride: int | tuple[int, ...] = 1,
                 padding: str = "valid", W_std: float | Tensor = 1.0, b_std: float | Tensor | None = None,
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

    def build(self, in_shape, context):
        return ConvModule(in_shape[0], self.out, self.filter_shape, self.stride, self.padding, self.W_std, self.b_std,
                          self.parameterization, role=context.roles.get(id(self), "hidden"),
                          generator=context.generator, dtype=context.dtype, device=context.device)  # fmt: skip

    def kernel(self, state):
        state = self._single(state)
        out_shape = self.output_shape(state.shape)
        fan_in = state.shape[0] * math.prod(self.filter_shape)

        def total(tensor: Tensor, full: bool) -> Tensor:
            return self._window_total(tensor, state.spatial, full, state.pool)

        return self._update(state, fan_in, total, math.prod(self.filter_shape), out_shape)

    def _window_total(self, tensor: Tensor, spatial: tuple[int, ...], full: bool, pool: TensorPool | None) -> Tensor:
        """The sum over the filter window, in place (reading a copy in a scratch tensor from
        ``pool``) where the output keeps the input's size; the tensors it frees go to ``pool``."""
        pool = pool if pool is not None else TensorPool(capacity=0)  # new memory, nothing kept
        scratch = None if tensor.requires_grad else pool.take(tuple(tensor.shape), tensor)
        out = window_sum(tensor, spatial, self.filter_shape, self.stride, self.padding, full, paired=True,
                         scratch=scratch)  # fmt: skip
        pool.give(scratch, None if out is tensor else tensor)
        return out

    def kernel_of_inputs(self, X: Tensor, Z: Tensor, same: bool, layout):
        """The kernel rule applied to the inputs directly: the filter-window mean of the inputs'
        covariance is a Gram matrix of image patches, one matrix product instead of passes over
        pixel pairs."""
        out_shape = self.output_shape(tuple(X.shape[1:]))
        if not layout.full and not layout.cov_full:
            return self._diagonal_from_pixels(X, Z, same, layout, out_shape)
        patches_x = patches(X, self.filter_shape, self.stride, self.padding)  # (n1, C F, P)
        patches_z = patches_x if same else patches(Z, self.filter_shape, self.stride, self.padding)
        return self._from_features(patches_x, patches_z, same, layout, out_shape, tuple(X.shape[1:]))

    def _diagonal_from_pixels(self, X: Tensor, Z: Tensor, same: bool, layout, out_shape):
        """Only equal pixels of two images meet (no pooling later): the filter-window sum of
        the inputs' pixel-wise Gram, C products and then a few window passes, replaces the Gram
        of C F patch features, one product per feature (for 3 x 3 filters on 3 channels 9
        passes over the block instead of 27). Both give sums over the window, divided in the
        affine step (count = F)."""
        in_shape, spatial, pool = tuple(X.shape[1:]), tuple(X.shape[2:]), layout.pool
        A, B = X.flatten(2), Z.flatten(2)  # (n, C, P)

        def window(tensor: Tensor) -> Tensor:
            return self._window_total(tensor, spatial, False, pool)

        sigma = window(pair_gram(A, B, spatial, False, pool))
        cov1 = None if same else window(self_gram(A, spatial, False))
        cov2 = None if same else window(self_gram(B, spatial, False))
        state = KernelState(sigma, sigma, cov1, cov2, in_shape, False, same, cov_full=False, pool=pool)
        count = math.prod(self.filter_shape)
        return self._affine(state, sigma, None, cov1, cov2, X.shape[1] * count, count, out_shape)


class ConvModule(WeightModule):
    """The finite layer of :class:`~ntklib.Conv`: pad (JAX's rules), then
    ``weight_scale conv(x, weight) + bias_scale bias`` with the scales of :class:`DenseModule`,
    fan_in = in_channels * filter size and fan_out = out_channels.

    Attributes:
        weight: ``(out_channels, in_channels, *filter_shape)`` parameter.
        bias: (out_channels,) parameter, or None.
    """

    def __init__(self, in_channels: int, out_channels: int, filter_shape: tuple[int, ...], stride: tuple[int, ...],
                 padding: str, W_std: float = 1.0, b_std: float | None = None, parameterization: str = "ntk", *,
                 role: str = "hidden", generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:  # fmt: skip
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.filter_shape, self.stride, self.padding = tuple(filter_shape), tuple(stride), padding
        self.fan_in = in_channels * math.prod(self.filter_shape)
        self._init_parameters((out_channels, in_channels, *self.filter_shape), self.fan_in, out_channels, W_std, b_std,
                         parameterization, role, generator, dtype, device)  # fmt: skip

    def pad(self, x: Tensor) -> Tensor:
        """The input with this layer's padding, so that a "valid" convolution follows."""
        return pad_images(x, self.filter_shape, self.stride, self.padding)

    def forward(self, x: Tensor) -> Tensor:
        """``(n, in_channels, *S) -> (n, out_channels, *S_out)``."""
        conv = F.conv2d if len(self.filter_shape) == 2 else F.conv1d
        return self._affine(conv(self.pad(x), self.weight, stride=self.stride), len(self.filter_shape))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, filter_shape={self.filter_shape}, stride={self.stride}, "
                f"padding={self.padding!r}, {self._scales_repr()}")  # fmt: skip


__all__ = ["Conv", "ConvModule", "Dense", "DenseModule", "PARAMETERIZATIONS", "WeightModule", "parameter_scales"]
