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
from torch.nn import functional as F

PADDINGS = ("valid", "same", "circular")


def padding_amounts(size: int, window: int, stride: int, padding: str) -> tuple[int, int, int]:
    """(pad before, pad after, output size) along one spatial axis."""
    if padding == "valid":
        return 0, 0, (size - window) // stride + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2, out


def pad_images(x: Tensor, window: tuple[int, ...], stride: tuple[int, ...], padding: str) -> Tensor:
    """A finite layer's input (n, C, *S) padded so that a "valid" window operation follows."""
    if padding == "valid":
        return x
    amounts: list[int] = []
    for axis in reversed(range(len(window))):  # F.pad lists the last dim first
        before, after, _ = padding_amounts(x.shape[2 + axis], window[axis], stride[axis], padding)
        amounts += [before, after]
    return F.pad(x, amounts, mode="circular" if padding == "circular" else "constant")


def patches(x: Tensor, window: tuple[int, ...], stride: tuple[int, ...], padding: str) -> Tensor:
    """The windows of a padded input, (n, C * window size, output positions), as F.unfold lays
    them out (channel-major, then the window's pixels). Strided views and one copy (F.unfold
    loops over the images, ten times slower on small ones)."""
    padded = pad_images(x, window, stride, padding)
    k = len(window)
    for axis in range(k):  # appends a window dim per axis: (n, C, *S_out, *window)
        padded = padded.unfold(2 + axis, window[axis], stride[axis])
    n, channels, *outputs = padded.shape[: 2 + k]
    order = (0, 1, *range(2 + k, 2 + 2 * k), *range(2, 2 + k))
    return padded.permute(order).reshape(n, channels * math.prod(window), math.prod(outputs))


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
    """Average of T over windows of pixels: :func:`window_sum` divided by the window's count."""
    total = window_sum(T, spatial, window, strides, padding, full, paired)
    return total.div_(math.prod(window) if (paired or not full) else math.prod(window) ** 2)


def window_sum(
    T: Tensor,
    spatial: tuple[int, ...],
    window: tuple[int, ...],
    strides: tuple[int, ...],
    padding: str,
    full: bool,
    paired: bool,
    scratch: Tensor | None = None,
) -> Tensor:
    """Sum of T over windows of pixels, on its trailing pixel dims.

    ``paired=True`` is the rule of a convolution, whose weights are shared by a pixel pair
    only at equal offsets: out[p', q'] = sum_d T[s p' + d, s q' + d] (in the diagonal layout
    out[p'] = sum_d T[s p' + d]). ``paired=False`` is average pooling of both pixels
    independently: out[p', q'] = sum_{d, e} T[s p' + d, s q' + e] (full layout only).
    Either way the window factorises over the spatial axes, so it is applied axis by axis;
    zero padding is never materialised: each offset adds its in-range part only.

    ``scratch`` (optional, T's shape, values undefined) lets an axis whose output keeps its size
    (stride 1, zero padding "same") sum in place into T, from a copy of T in ``scratch``,
    instead of into new memory. T may be overwritten either way.
    """
    k = len(spatial)
    batch_ndim = T.ndim - k * (2 if full else 1)
    for axis in range(k):
        p_dim = batch_ndim + axis
        dims = (p_dim, p_dim + k) if full else (p_dim,)
        groups = [dims] if (paired or not full) else [(dim,) for dim in dims]
        for group in groups:
            fits = scratch is not None and scratch.shape == T.shape and scratch.dtype == T.dtype
            T = _window_sum(T, group, spatial[axis], window[axis], strides[axis], padding, scratch if fits else None)
    return T


def _window_sum(T: Tensor, dims: tuple[int, ...], size: int, window: int, stride: int, padding: str,
                scratch: Tensor | None = None) -> Tensor:  # fmt: skip
    """out[p'] = sum_d T[stride p' + d - before] on each of ``dims`` at once (the same p' and d
    on all of them), with zero or wrap-around padding; in place into T (reading a copy in
    ``scratch``) when the output keeps T's size and zero padding is used."""
    if window == 1 and stride == 1:  # each output is its own input, whatever the padding
        return T
    before, after, out = padding_amounts(size, window, stride, padding)
    if padding == "circular":
        for dim in dims:
            T = pad_dim(T, dim, before, after, padding)
        total = _strided(T, dims, 0, stride, out).clone()
        for offset in range(1, window):
            total += _strided(T, dims, offset, stride, out)
        return total
    # Zero or no padding: offset d reaches out[p'] for stride p' + d - before in [0, size).
    # The offset d = before reads T[stride p'] and so covers every output.
    if scratch is not None and stride == 1 and out == size:
        total, T = T, scratch.copy_(T)
    else:
        total = _strided(T, dims, 0, stride, out).clone()
    for offset in range(window):
        if offset == before:
            continue
        first = max(0, -(-(before - offset) // stride))
        last = min(out - 1, (size - 1 + before - offset) // stride)
        if first > last:
            continue
        index = [slice(None)] * T.ndim
        for dim in dims:
            index[dim] = slice(first, last + 1)
        total[tuple(index)] += _strided(T, dims, stride * first + offset - before, stride, last - first + 1)
    return total


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
