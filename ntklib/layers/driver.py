"""Evaluate a network's kernels block by block, so memory stays bounded whatever n is.

The kernel rules act on a state whose tensors hold one block of input pairs: rows X[I] and
columns Z[J]. Every entry of the result depends only on its own pair of inputs, so blocks can
be computed in any order and independently. When Z is None the kernel is symmetric: only the
blocks on and above the diagonal are computed and the others are their transposes, which halves
the work and makes K exactly symmetric. A diagonal block has the same inputs on both sides; its
per-input variances are read off the diagonal of its own covariance, so each point's
correlation with itself is exactly 1 (the arc-cosine kernels are infinitely sensitive there).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import as_inputs, positive_int
from .base import Layer, LayerError, layout_for
from .state import Kernels, KernelState, TensorPool

# Kernel entries per block (with pixel pairs counted): large enough that the Python overhead
# per block is small, small enough that the elementwise passes of a block run in cache.
BLOCK_ENTRIES = 1 << 18


def compute_kernels(net: Layer, X: Tensor, Z: Tensor | None, block_size: int | None):
    X, Z = as_inputs(X, Z)
    symmetric = Z is None or Z is X
    Z = X if symmetric else Z
    in_shape = tuple(X.shape[1:])
    out_shape = net.output_shape(in_shape)
    outputs = _leaves(out_shape)
    for shape in outputs:
        if len(shape) != 1:
            raise LayerError(
                f"the network's output has shape {shape} per input (channels, pixels): kernels between "
                "inputs need vector outputs; end it with Flatten() or GlobalAvgPool() (and a Dense readout)"
            )
    spatial = in_shape[1:]
    layout = layout_for(net, spatial)._replace(pool=TensorPool())
    pair_size = math.prod(spatial) ** (2 if layout.full else 1) if spatial else 1
    n, m = X.shape[0], Z.shape[0]
    if block_size is None:
        # Blocks of equal size: a thin last block would cost as many Python calls as a full one.
        largest = max(1, math.isqrt(BLOCK_ENTRIES // pair_size))
        block_size = -(-n // -(-n // largest))
    else:
        block_size = positive_int("block_size", block_size)

    results = [Kernels(X.new_empty(n, m), X.new_empty(n, m)) for _ in outputs]
    for row in range(0, n, block_size):
        rows = slice(row, min(row + block_size, n))
        for col in range(row if symmetric else 0, m, block_size):
            cols = slice(col, min(col + block_size, m))
            same = symmetric and row == col
            final = net.kernel_of_inputs(X[rows], Z[cols], same, layout)
            for result, block in zip(results, _leaves(final)):
                _check_finite(block, X, rows)
                _store(result, block, rows, cols, symmetric, same)
                block.recycle(block.nngp, block.ntk)  # stored: the next block may write into them
    return _nest(iter(results), out_shape)


def _check_finite(block: KernelState, X: Tensor, rows: slice) -> None:
    """Never a silent NaN: a block that overflowed raises, naming the inputs most involved (an
    input whose own variance overflows spoils its whole row and column)."""
    for name, K in (("nngp", block.nngp), ("ntk", block.ntk)):
        # One read: a sum is finite only if every term is (an inf or NaN term makes it inf or
        # NaN); only a sum that overflows without one needs the entrywise scan.
        if math.isfinite(float(K.detach().sum())):
            continue
        bad = ~torch.isfinite(K)
        if bool(bad.any()):
            per_row = bad.sum(dim=1)
            worst = ((per_row == per_row.max()).nonzero().flatten()[:5] + rows.start).tolist()
            norms = X.reshape(X.shape[0], -1)[worst].norm(dim=1).tolist()
            raise ValueError(
                f"the {name} overflowed to inf/NaN in {X.dtype}, most at rows {worst} of X (input norms "
                f"{[f'{v:.3g}' for v in norms]}): rescale the inputs, use float64, or lower W_std/depth"
            )


def _leaves(value) -> list:
    """The outputs of a network, in order, from nested lists of branches."""
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def _nest(leaves, like):
    """Rebuild the nesting of ``like`` from an iterator over its leaves."""
    if isinstance(like, list):
        return [_nest(leaves, item) for item in like]
    return next(leaves)


def _store(result: Kernels, block: KernelState, rows: slice, cols: slice, symmetric: bool, same: bool) -> None:
    for out, values in ((result.nngp, block.nngp), (result.ntk, block.ntk)):
        if same:
            # Sums over pixel pairs and matrix products need not round (i, j) and (j, i) alike.
            # Halves are exact and a sum is commutative: the mean of the two is exactly symmetric.
            if values.requires_grad:  # W_std, b_std learnt by autograd (ntklib.gpytorch_kernels)
                values = values * 0.5 + values.T * 0.5
            else:
                scratch = block.scratch_like(values)
                out[rows, cols] = torch.mul(values, 0.5, out=scratch).add_(values.T, alpha=0.5)
                block.recycle(scratch)
                continue
        out[rows, cols] = values
        if symmetric and not same:
            out[cols, rows] = values.T
