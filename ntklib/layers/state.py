"""The infinite-width kernel state that flows through a network's layers, and its start.

At infinite width every unit of a layer is an independent Gaussian process over the inputs, so
one covariance describes the whole layer. For two batches of inputs, rows X (n1, ...) and
columns Z (n2, ...), a :class:`KernelState` holds

  * ``nngp``: the covariance of one unit's values at a row input and a column input;
  * ``ntk``: the NTK of one unit with respect to all parameters below it;
  * ``cov1``, ``cov2``: each input's covariance with itself (what the dual maps of activations
    and LayerNorm divide by), or None when the rows and columns are the same inputs, in which
    case they are read off the diagonal of ``nngp`` so that a point's correlation with itself is
    exactly 1;
  * the finite shape the layer would have (channels first), for shape checks and for the
    "standard" parameterisation, whose NTK depends on the widths.

For images with spatial shape S (H, W) or (L,), a unit's value differs per pixel, so the
covariances are indexed by pixel pairs: ``nngp`` is (n1, n2, *S, *S) in the *full* layout, or
(n1, n2, *S) in the *diagonal* layout, which keeps only pairs of equal pixels. A network whose
layers never mix pixel positions across a pair (no pooling) needs only the diagonal; global or
local average pooling needs every pair (Novak et al. 2019; Arora et al. 2019). ``cov1`` is
(n1, *S, *S) or (n1, *S) accordingly.

Kernel rules consume the state they are given: they may overwrite its tensors in place.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
from torch import Tensor


class Kernels(NamedTuple):
    """The NNGP kernel Sigma and the NTK Theta, each (n, m)."""

    nngp: Tensor
    ntk: Tensor


@dataclasses.dataclass(frozen=True)
class KernelState:
    """Covariances of one layer's units between a batch of row inputs and of column inputs.

    Attributes:
        nngp: (n1, n2, *P) with P = () for vectors, S or (*S, *S) for images (see ``full``).
        ntk: same shape as ``nngp``.
        cov1, cov2: (n1, *P) and (n2, *P), each input with itself; None when ``same``.
        shape: the per-input shape of the finite layer, (features,) or (channels, *S).
        full: images only: True when pixel pairs (p, q) are all kept, False for p = q only.
        same: rows and columns are the same inputs (a diagonal block of a symmetric kernel).
        is_gaussian: the units are zero-mean Gaussian processes (after Dense, Conv and linear
            layers), as an activation's dual map and LayerNorm require.
        fresh: the units come from weights drawn after the last FanOut (followed by linear
            layers only), so they are independent of every other branch: what makes the
            kernels of a FanInSum add up.
    """

    nngp: Tensor
    ntk: Tensor
    cov1: Tensor | None
    cov2: Tensor | None
    shape: tuple[int, ...]
    full: bool
    same: bool
    is_gaussian: bool = False
    fresh: bool = False

    def replace(self, **changes: object) -> "KernelState":
        return dataclasses.replace(self, **changes)

    @property
    def spatial(self) -> tuple[int, ...]:
        """The spatial shape S: () for vectors, (H, W) or (L,) for images."""
        return self.shape[1:]

    @property
    def pair_ndim(self) -> int:
        """Number of trailing pixel dimensions of ``nngp``: 0, len(S) or 2 len(S)."""
        return len(self.spatial) * (2 if self.full else 1)

    def pixel_variances(self) -> tuple[Tensor, Tensor]:
        """Per-pixel variances of the rows and the columns, shaped to broadcast against
        ``nngp``: (n1, 1, *S, 1...) and (1, n2, 1..., *S) in the full layout, (n1, 1, *S) and
        (1, n2, *S) in the diagonal one, (n1, 1) and (1, n2) for vectors."""
        if self.same:
            both = self.nngp.diagonal(dim1=0, dim2=1).movedim(-1, 0)  # (n, *P)
            q1 = q2 = pixel_diagonal(both, len(self.spatial), self.full).clone()
        else:
            q1 = pixel_diagonal(self.cov1, len(self.spatial), self.full)
            q2 = pixel_diagonal(self.cov2, len(self.spatial), self.full)
        k = len(self.spatial)
        ones = (1,) * k
        if self.full:
            return q1.reshape(q1.shape[0], 1, *self.spatial, *ones), q2.reshape(1, q2.shape[0], *ones, *self.spatial)
        return q1.unsqueeze(1), q2.unsqueeze(0)

    def map_tensors(self, fn) -> "KernelState":
        """Apply ``fn(tensor, batch_ndim)`` to nngp, ntk (batch_ndim 2) and cov1, cov2 (1):
        the shape of every linear layer's kernel rule."""
        return self.replace(
            nngp=fn(self.nngp, 2),
            ntk=fn(self.ntk, 2),
            cov1=None if self.cov1 is None else fn(self.cov1, 1),
            cov2=None if self.cov2 is None else fn(self.cov2, 1),
        )

    def clone(self) -> "KernelState":
        return self.map_tensors(lambda t, _: t.clone())


def pixel_diagonal(cov: Tensor, spatial_ndim: int, full: bool) -> Tensor:
    """(n, *S, *S) -> (n, *S): each pixel's variance; the diagonal layout is returned as is."""
    if not full or spatial_ndim == 0:
        return cov
    out = cov  # (n, p_1..p_k, q_1..q_k)
    for remaining in range(spatial_ndim, 0, -1):
        # Pair the first remaining p-dim with its q-dim; diagonal() appends the pair at the end.
        out = out.diagonal(dim1=1, dim2=1 + remaining)
    return out


def input_state(X: Tensor, Z: Tensor, same: bool, full: bool) -> KernelState:
    """The state of the inputs: covariances averaged over features (channels for images).

    Vectors (n, d): Sigma(x, z) = x.z / d. Images (n, C, *S): Sigma(x, z)[p, q] =
    sum_c x_c(p) z_c(q) / C, for all pixel pairs (``full``) or p = q only.
    """
    n1, n2 = X.shape[0], Z.shape[0]
    channels = X.shape[1]
    spatial = tuple(X.shape[2:])
    size = math.prod(spatial)
    if not spatial:
        nngp = (X @ Z.T).div_(channels)  # (n1, n2)
        cov1 = None if same else (X * X).sum(1).div_(channels)
        cov2 = None if same else (Z * Z).sum(1).div_(channels)
    elif full:
        A = X.reshape(n1, channels, size).transpose(1, 2).reshape(n1 * size, channels)
        B = Z.reshape(n2, channels, size).transpose(1, 2).reshape(n2 * size, channels)
        nngp = (A @ B.T).div_(channels).view(n1, size, n2, size).transpose(1, 2)  # (n1, n2, P, P)
        nngp = nngp.reshape(n1, n2, *spatial, *spatial)
        cov1 = cov2 = None
        if not same:
            cov1 = _self_gram(X, n1, channels, size).reshape(n1, *spatial, *spatial)
            cov2 = _self_gram(Z, n2, channels, size).reshape(n2, *spatial, *spatial)
    else:
        Xf, Zf = X.reshape(n1, channels, size), Z.reshape(n2, channels, size)
        nngp = torch.einsum("icp,jcp->ijp", Xf, Zf).div_(channels).reshape(n1, n2, *spatial)
        cov1 = None if same else (Xf * Xf).sum(1).div_(channels).reshape(n1, *spatial)
        cov2 = None if same else (Zf * Zf).sum(1).div_(channels).reshape(n2, *spatial)
    return KernelState(
        nngp=nngp,
        ntk=torch.zeros_like(nngp),
        cov1=cov1,
        cov2=cov2,
        shape=tuple(X.shape[1:]),
        full=full and bool(spatial),
        same=same,
        is_gaussian=False,
        fresh=False,
    )


def _self_gram(X: Tensor, n: int, channels: int, size: int) -> Tensor:
    """(n, C, P) -> (n, P, P): each image's pixel-pair Gram over channels, / C."""
    flat = X.reshape(n, channels, size)
    return torch.bmm(flat.transpose(1, 2), flat).div_(channels)
