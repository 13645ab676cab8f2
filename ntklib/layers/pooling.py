"""Layers without weights that change the spatial layout: AvgPool, GlobalAvgPool, Flatten.

Average pooling mixes pixels, so its kernel rule needs the covariances of every pixel pair;
a flattened readout sees only equal pixels (p = q), which is why a CNN with a Flatten readout
has the kernel of a locally connected network, translation structure lost, while global
average pooling keeps it (Novak et al. 2019).
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F

from .base import Layer, LayerError
from .linear import _as_tuple, check_padding, spatial_output
from .spatial import diagonal_mean, pad_images, pixel_pair_mean, window_mean


def _images(layer: Layer, in_shape) -> tuple[int, ...]:
    in_shape = layer._single(in_shape)
    if len(in_shape) < 2:
        raise LayerError(f"{layer!r} expects images (C, H, W) or signals (C, L) but receives vectors of shape {in_shape}")
    return in_shape


def _pooled(state, shape):
    """A pooled state; per-pixel variances cannot be pooled (pixel pairs are needed), and the
    layout was chosen so that no later layer asks for them."""
    if state.cov1 is None and not state.same:
        state = state.replace(variances_known=False)
    return state.replace(shape=shape)


class AvgPool(Layer):
    """Average over windows of pixels, each channel on its own (torch's ``AvgPool2d`` with
    ``count_include_pad=True``).

    Args:
        window: (wh, ww) or (wl,); an int means a square window over images.
        stride: int or tuple; None means the window (torch's default; neural-tangents' is 1).
        padding: "valid", "same" (zeros, counted in the average, as neural-tangents'
            ``normalize_edges=False``) or "circular".
    """

    def __init__(self, window: int | tuple[int, ...], stride: int | tuple[int, ...] | None = None,
                 padding: str = "valid") -> None:  # fmt: skip
        if isinstance(window, int) and not isinstance(window, bool):
            window = (window, window)
        if not isinstance(window, (tuple, list)) or len(window) not in (1, 2):
            raise ValueError(f"window must be (wh, ww) or (wl,); got {window!r}")
        self.window = _as_tuple("window", tuple(window), len(window))
        self.stride = self.window if stride is None else _as_tuple("stride", stride, len(self.window))
        self.padding = check_padding(padding)

    def __repr__(self) -> str:
        return f"AvgPool({self.window}, stride={self.stride}, padding={self.padding!r})"

    def output_shape(self, in_shape):
        in_shape = _images(self, in_shape)
        if len(in_shape) != len(self.window) + 1:
            raise LayerError(f"{self!r} has a {len(self.window)}-D window but receives inputs of shape {in_shape}")
        return (in_shape[0], *spatial_output(self, in_shape[1:], self.window, self.stride, self.padding, "window"))

    def build(self, in_shape, context):
        return AvgPoolModule(self.window, self.stride, self.padding)

    def kernel(self, state):
        state = self._single(state)
        out_shape = self.output_shape(state.shape)

        def pool(tensor: Tensor, full: bool) -> Tensor | None:
            if not full:  # per-pixel variances, which no later layer uses (see layout_for)
                return None
            return window_mean(tensor, state.spatial, self.window, self.stride, self.padding, True, paired=False)

        return _pooled(state.map_tensors(pool), out_shape)

    mixes_pixels = True


class AvgPoolModule(nn.Module):
    def __init__(self, window: tuple[int, ...], stride: tuple[int, ...], padding: str) -> None:
        super().__init__()
        self.window, self.stride, self.padding = window, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        pool = F.avg_pool2d if len(self.window) == 2 else F.avg_pool1d
        return pool(pad_images(x, self.window, self.stride, self.padding), self.window, self.stride)

    def extra_repr(self) -> str:
        return f"window={self.window}, stride={self.stride}, padding={self.padding!r}"


class GlobalAvgPool(Layer):
    """Average over all pixels: ``(C, *S) -> (C,)``. Its kernel is the mean over all pixel pairs."""

    def output_shape(self, in_shape):
        return (_images(self, in_shape)[0],)

    def build(self, in_shape, context):
        return GlobalAvgPoolModule()

    def kernel(self, state):
        state = self._single(state)
        out_shape = self.output_shape(state.shape)
        k = len(state.spatial)
        pooled = state.map_tensors(lambda tensor, full: pixel_pair_mean(tensor, k, True) if full else None)
        state.recycle(state.nngp, state.ntk)  # the pixel pairs, for the next block's first layer
        return _pooled(pooled, out_shape)

    mixes_pixels = True


class GlobalAvgPoolModule(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=tuple(range(2, x.ndim)))


class Flatten(Layer):
    """``(C, *S) -> (C |S|,)`` features, channel by channel as ``torch.flatten`` (vectors pass).

    Its kernel is the mean over equal pixels p = q: a Dense readout after it weighs each
    pixel's features separately. The flattened units are not identically distributed (each
    pixel has its own variance), so an activation cannot follow directly (as in
    neural-tangents): put a Dense layer in between.
    """

    def output_shape(self, in_shape):
        in_shape = self._single(in_shape)
        return (math.prod(in_shape),)

    def build(self, in_shape, context):
        return nn.Flatten()

    def kernel(self, state):
        state = self._single(state)
        if not state.spatial:
            return state
        k = len(state.spatial)
        flat = state.map_tensors(lambda tensor, full: diagonal_mean(tensor, k, full))
        state.recycle(state.nngp, state.ntk)  # the pixels, for the next block's first layer
        return flat.replace(shape=self.output_shape(state.shape), is_gaussian=False)
