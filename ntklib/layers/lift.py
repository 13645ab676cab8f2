"""From plain PyTorch: the layer description of a ``torch.nn.Sequential``, for its kernels."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.nn import functional as F

from .activations import Elementwise, Gelu, LeakyRelu, Relu
from .base import Identity, Layer, serial
from .linear import Conv, Dense
from .normalization import LayerNorm
from .pooling import AvgPool, Flatten, GlobalAvgPool

# Elementwise modules without a closed-form dual map: their function, for Elementwise.
_ELEMENTWISE = {
    nn.Tanh: lambda m: torch.tanh,
    nn.Sigmoid: lambda m: torch.sigmoid,
    nn.SiLU: lambda m: F.silu,
    nn.Softplus: lambda m: functools.partial(F.softplus, beta=m.beta, threshold=m.threshold),
    nn.ELU: lambda m: functools.partial(F.elu, alpha=m.alpha),
    nn.Mish: lambda m: F.mish,
}


def lift(module: nn.Module, *, W_std: float | None = None, b_std: float | None = None,
         parameterization: str = "standard") -> Layer:  # fmt: skip
    """The ntklib description of a ``torch.nn.Sequential``, so that a torch model gets its
    infinite-width kernels: ``nk.lift(model).kernels(X)``.

    Translated modules: ``nn.Linear``; ``nn.Conv1d``/``nn.Conv2d`` (groups 1, dilation 1,
    padding 0/"valid", or "same"-sized padding at stride 1 with zeros or circular);
    ``nn.ReLU``, ``nn.LeakyReLU``, ``nn.GELU`` (closed forms), ``nn.Tanh``, ``nn.Sigmoid``,
    ``nn.SiLU``, ``nn.Softplus``, ``nn.ELU``, ``nn.Mish`` (Hermite series); ``nn.AvgPool1d``/
    ``nn.AvgPool2d`` (no padding); ``nn.AdaptiveAvgPool1d/2d(1)`` (global average pooling);
    ``nn.Flatten``; ``nn.LayerNorm`` over the last dim without affine parameters; ``nn.Identity``;
    nested ``nn.Sequential``. Anything else raises, naming the module.

    The initialisation scale the kernel assumes: torch's default for ``nn.Linear`` and
    ``nn.Conv*`` draws weights from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (variance 1/(3 fan_in))
    and biases from the same range. By default the kernel is that of the network whose weights
    and biases are Gaussian with these variances, in the "standard" parameterisation (what a
    torch model is), with the widths of the given modules: W_std = 1/sqrt(3) and
    b_std = 1/sqrt(3 fan_in) per layer. At infinite width only the second moments of the weights
    matter; torch's uniform biases differ from Gaussian ones only in the first layer, whose
    fan_in stays finite. Pass W_std/b_std (the same for every layer) for a model you initialised
    as W ~ N(0, W_std^2 / fan_in), b ~ N(0, b_std^2).

    Args:
        module: an ``nn.Sequential`` (or a single translatable module).
        W_std, b_std: override torch's default scales (above) for every Linear/Conv layer.
        parameterization: "standard" (default, as torch trains) or "ntk".
    """
    return _lift(module, "", W_std, b_std, parameterization)


def _lift(module: nn.Module, name: str, W_std, b_std, parameterization) -> Layer:
    label = f"{name or 'module'} ({type(module).__name__})"
    if isinstance(module, nn.Sequential):
        return serial(*(_lift(child, f"{name}.{key}" if name else key, W_std, b_std, parameterization)
                        for key, child in module.named_children()))  # fmt: skip
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        fan_in = module.weight[0].numel()
        w = 1 / math.sqrt(3) if W_std is None else W_std
        b = None if module.bias is None else (1 / math.sqrt(3 * fan_in) if b_std is None else b_std)
        if isinstance(module, nn.Linear):
            return Dense(module.out_features, w, b, parameterization)
        return Conv(module.out_channels, tuple(module.kernel_size), stride=tuple(module.stride),
                    padding=_conv_padding(module, label), W_std=w, b_std=b, parameterization=parameterization)  # fmt: skip
    if isinstance(module, nn.ReLU):
        return Relu()
    if isinstance(module, nn.LeakyReLU):
        return LeakyRelu(module.negative_slope)
    if isinstance(module, nn.GELU):
        if module.approximate == "none":
            return Gelu()
        return Elementwise(functools.partial(F.gelu, approximate=module.approximate), "gelu_tanh")
    if type(module) in _ELEMENTWISE:
        return Elementwise(_ELEMENTWISE[type(module)](module), type(module).__name__)
    if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d)):
        if _nonzero(module.padding) or module.ceil_mode:
            raise ValueError(f"lift: {label} has padding or ceil_mode; only padding=0 pooling is translated")
        return AvgPool(_tuple(module.kernel_size, module), _tuple(module.stride, module), "valid")
    if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        if set(_tuple(module.output_size, module)) != {1}:
            raise ValueError(f"lift: {label} has output_size {module.output_size}; only 1 (global pooling) is translated")
        return GlobalAvgPool()
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise ValueError(f"lift: {label} flattens dims {module.start_dim}..{module.end_dim}; only 1..-1 is translated")
        return Flatten()
    if isinstance(module, nn.LayerNorm):
        if module.elementwise_affine:
            raise ValueError(f"lift: {label} has trainable scale and shift (elementwise_affine=True), which add to "
                             "the NTK and have no infinite-width rule here; use elementwise_affine=False")  # fmt: skip
        if len(module.normalized_shape) != 1:
            raise ValueError(f"lift: {label} normalises over {tuple(module.normalized_shape)}; only the last "
                             "(feature) dim of vectors is translated")  # fmt: skip
        return LayerNorm(module.eps)
    if isinstance(module, nn.Identity):
        return Identity()
    raise ValueError(f"lift cannot translate {label}: supported are Linear, Conv1d/2d, elementwise activations, "
                     "AvgPool1d/2d, AdaptiveAvgPool(1), Flatten, LayerNorm, Identity and nested Sequential")  # fmt: skip


def _tuple(value, module) -> tuple[int, ...]:
    dims = 2 if "2d" in type(module).__name__ else 1
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


def _nonzero(value) -> bool:
    return any(value) if isinstance(value, (tuple, list)) else bool(value)


def _conv_padding(module: nn.Module, label: str) -> str:
    if module.groups != 1 or any(d != 1 for d in module.dilation):
        raise ValueError(f"lift: {label} is grouped or dilated; only groups=1, dilation=1 is translated")
    padding = module.padding
    if padding == "valid" or (not isinstance(padding, str) and not any(padding)):
        return "valid"
    same_sized = padding == "same" or (all(s == 1 for s in module.stride) and
                                       all(2 * p == k - 1 for p, k in zip(padding, module.kernel_size)))  # fmt: skip
    if not same_sized:
        raise ValueError(f"lift: {label} has padding {padding} with kernel {module.kernel_size} and stride "
                         f"{module.stride}; only 0, or (k - 1) / 2 at stride 1 ('same'), is translated")  # fmt: skip
    if module.padding_mode == "zeros":
        return "same"
    if module.padding_mode == "circular":
        return "circular"
    raise ValueError(f"lift: {label} pads with mode {module.padding_mode!r}; only zeros and circular are translated")
