"""Window sums over pixel pairs: the kernel rules of convolution and average pooling.

A covariance tensor T has leading batch dims, then its pixel dims: (..., *S) in the diagonal
layout, (..., *S, *S) (the p-dims, then the q-dims) in the full one. Padding follows
neural-tangents and JAX: "valid" keeps only windows inside the image; "same" and "circular"
give ceil(S / stride) outputs, padding ``total = (out - 1) stride + window - S`` pixels,
``total // 2`` before and the rest after, with zeros or with the image wrapped around.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

PADDINGS = ("valid", "same", "circular")


def padding_amounts(size: int, window: int, stride: int, padding: str) -> tuple[int, int, int]:
    """(pad before, pad after, output size) along one spatial axis."""
    if padding == "valid":
        return 0, 0, (size - window) // stride + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2, out


def pad_dim(T: Tensor, dim: int, before: int, after: int, mode: str) -> Tensor:
    """Zero ("same") or wrap-around ("circular") padding of one dimension."""
    if before == 0 and after == 0:
        return T
    size = T.shape[dim]
    if mode == "circular":
        index = torch.arange(-before, size + after, device=T.device).remainder_(size)
        return T.index_select(dim, index)
    shape = list(T.shape)
    shape[dim] = size + before + after
    out = T.new_zeros(shape)
    out.narrow(dim, before, size).copy_(T)
    return out


def _strided(T: Tensor, dims: tuple[int, ...], start: int, stride: int, count: int) -> Tensor:
    """The view T[..., start : start + stride (count - 1) + 1 : stride, ...] on each of ``dims``."""
    index = [slice(None)] * T.ndim
    for dim in dims:
        index[dim] = slice(start, start + stride * (count - 1) + 1, stride)
    return T[tuple(index)]


def window_mean(
    T: Tensor,
    spatial: tuple[int, ...],
    window: tuple[int, ...],
    strides: tuple[int, ...],
    padding: str,
    full: bool,
    paired: bool,
) -> Tensor:
    """Average of T over windows of pixels, on its trailing pixel dims.

    ``paired=True`` is the rule of a convolution, whose weights are shared by a pixel pair
    only at equal offsets: out[p', q'] = mean_d T[s p' + d, s q' + d] (in the diagonal layout
    out[p'] = mean_d T[s p' + d]). ``paired=False`` is average pooling of both pixels
    independently: out[p', q'] = mean_{d, e} T[s p' + d, s q' + e] (full layout only).
    Either way the window factorises over the spatial axes, so it is applied axis by axis.
    """
    k = len(spatial)
    batch_ndim = T.ndim - k * (2 if full else 1)
    for axis in range(k):
        before, after, out = padding_amounts(spatial[axis], window[axis], strides[axis], padding)
        p_dim = batch_ndim + axis
        dims = (p_dim, p_dim + k) if full else (p_dim,)
        for dim in dims:
            T = pad_dim(T, dim, before, after, padding)
        if paired or not full:
            total = _strided(T, dims, 0, strides[axis], out).clone()
            for offset in range(1, window[axis]):
                total += _strided(T, dims, offset, strides[axis], out)
        else:
            total = T
            for dim in dims:
                summed = _strided(total, (dim,), 0, strides[axis], out).clone()
                for offset in range(1, window[axis]):
                    summed += _strided(total, (dim,), offset, strides[axis], out)
                total = summed
        T = total
    scale = math.prod(window) if (paired or not full) else math.prod(window) ** 2
    return T.div_(scale)


def pixel_pair_mean(T: Tensor, spatial_ndim: int, full: bool) -> Tensor:
    """Global average pooling: the mean over all pixel pairs (full) or pixels (diagonal)."""
    pixel_dims = tuple(range(T.ndim - spatial_ndim * (2 if full else 1), T.ndim))
    return T.mean(dim=pixel_dims) if pixel_dims else T


def diagonal_mean(T: Tensor, spatial_ndim: int, full: bool) -> Tensor:
    """Flatten: the mean over equal-pixel pairs p = q (the only ones a flattened readout sees)."""
    if not full:
        return pixel_pair_mean(T, spatial_ndim, False)
    batch_ndim = T.ndim - 2 * spatial_ndim
    out = T
    for remaining in range(spatial_ndim, 0, -1):
        out = out.diagonal(dim1=batch_ndim, dim2=batch_ndim + remaining)
    return out.mean(dim=tuple(range(batch_ndim, out.ndim)))
