"""The infinite-width kernel state that flows through a network's layers, and its start.

At infinite width every unit of a layer is an independent Gaussian process over the inputs, so
one covariance describes the whole layer. For two batches of inputs, rows X (n1, ...) and
columns Z (n2, ...), a :class:`KernelState` holds

  * ``nngp``: the covariance of one unit's values at a row input and a column input;
  * ``ntk``: the NTK of one unit with respect to all parameters below it;
  * ``cov1``, ``cov2``: each input's covariance with itself (what the dual maps of activations
    and LayerNorm divide by), or None when the rows and columns are the same inputs, in which
    case they are read off the diagonal of ``nngp`` so that a point's correlation with itself is
    exactly 1. They need pixel pairs only when a layer that mixes pixels (pooling) comes before
    one that uses the variances (an activation, LayerNorm); otherwise they are kept per pixel
    even when ``nngp`` holds all pairs, which saves most of their cost;
  * the finite shape the layer would have (channels first), for shape checks and for the
    "standard" parameterisation, whose NTK depends on the widths.

For images with spatial shape S (H, W) or (L,), a unit's value differs per pixel, so the
covariances are indexed by pixel pairs: ``nngp`` is (n1, n2, *S, *S) in the *full* layout, or
(n1, n2, *S) in the *diagonal* layout, which keeps only pairs of equal pixels. A network whose
layers never mix pixel positions across a pair (no pooling) needs only the diagonal; global or
local average pooling needs every pair (Novak et al. 2019; Arora et al. 2019). ``cov1`` is
(n1, *S, *S) or (n1, *S) accordingly.

Kernel rules consume the state they are given: they may overwrite its tensors in place, all
but those of an :class:`ActivationRecord`, which are shared and never written.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

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
        cov_full: the same for ``cov1`` and ``cov2``.
        same: rows and columns are the same inputs (a diagonal block of a symmetric kernel).
        is_gaussian: the units are zero-mean Gaussian processes (after Dense, Conv and linear
            layers), as an activation's dual map and LayerNorm require.
        fresh: the units come from weights drawn after the last FanOut (followed by linear
            layers only), so they are independent of every other branch: what makes the
            kernels of a FanInSum add up.
        variances_known: False after pooling when ``cov_full`` is False: no later layer needs
            them then (the driver checked), so they are not computed.
        pool: the :class:`TensorPool` of free block tensors that the rules of one ``kernels``
            call share (None: every rule allocates).
        record: when the units are phi(h) elementwise with h Gaussian (an activation's output),
            phi and the state of h, kept only where a later activation may need them (see
            :class:`ActivationRecord`). :meth:`replace` drops it unless it is passed: it
            survives only the layers that pass their input's units on unchanged.
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
    cov_full: bool = False
    variances_known: bool = True
    pool: TensorPool | None = None
    record: ActivationRecord | None = None

    def scratch_like(self, tensor: Tensor) -> Tensor:
        """A contiguous tensor of ``tensor``'s shape, dtype and device with undefined values,
        from the pool when it has one; return it with :meth:`recycle` once done."""
        if self.pool is None:
            return torch.empty_like(tensor, memory_format=torch.contiguous_format)
        return self.pool.take(tuple(tensor.shape), tensor)

    def recycle(self, *tensors: Tensor | None) -> None:
        """Give tensors that nothing uses any more to the pool (no-op without one)."""
        if self.pool is not None:
            self.pool.give(*tensors)

    def replace(self, **changes: object) -> "KernelState":
        """A copy with ``changes``, without the activation record unless ``record=`` is given
        (a layer that is not elementwise-transparent makes the record false)."""
        changes.setdefault("record", None)
        return dataclasses.replace(self, **changes)

    @property
    def spatial(self) -> tuple[int, ...]:
        """The spatial shape S: () for vectors, (H, W) or (L,) for images."""
        return self.shape[1:]

    def pixel_variances(self) -> tuple[Tensor, Tensor]:
        """Per-pixel variances of the rows and the columns, shaped to broadcast against
        ``nngp``: (n1, 1, *S, 1...) and (1, n2, 1..., *S) in the full layout, (n1, 1, *S) and
        (1, n2, *S) in the diagonal one, (n1, 1) and (1, n2) for vectors."""
        if self.same:
            q1 = q2 = self.self_pairs(self.nngp).clone()
        elif not self.variances_known:
            raise RuntimeError("ntklib: the inputs' variances were not tracked through pooling (a bug in ntklib)")
        else:
            q1 = pixel_diagonal(self.cov1, len(self.spatial), self.cov_full)
            q2 = pixel_diagonal(self.cov2, len(self.spatial), self.cov_full)
        k = len(self.spatial)
        ones = (1,) * k
        if self.full:
            return q1.reshape(q1.shape[0], 1, *self.spatial, *ones), q2.reshape(1, q2.shape[0], *ones, *self.spatial)
        return q1.unsqueeze(1), q2.unsqueeze(0)

    def self_pairs(self, tensor: Tensor) -> Tensor:
        """For a block of the same inputs on both sides (``same``): the view (n, *S) of a
        tensor shaped like ``nngp`` holding the entries that pair each input with itself at the
        same pixel."""
        both = tensor.diagonal(dim1=0, dim2=1).movedim(-1, 0)  # (n, *P)
        return pixel_diagonal(both, len(self.spatial), self.full)

    def map_tensors(self, fn) -> "KernelState":
        """Apply ``fn(tensor, full)`` to nngp, ntk and cov1, cov2, with ``full`` their pixel
        layout: the shape of every linear layer's kernel rule."""
        return self.replace(
            nngp=fn(self.nngp, self.full),
            ntk=fn(self.ntk, self.full),
            cov1=None if self.cov1 is None else fn(self.cov1, self.cov_full),
            cov2=None if self.cov2 is None else fn(self.cov2, self.cov_full),
        )

    def clone(self) -> "KernelState":
        """The same state with tensors of its own (the record, never written, is shared)."""
        return self.map_tensors(lambda t, _: t.clone()).replace(record=self.record)

    def snapshot(self) -> "KernelState":
        """A copy to keep in an :class:`ActivationRecord`: tensors of its own, no record."""
        return self.map_tensors(lambda t, _: t.clone())


@dataclasses.dataclass(frozen=True)
class ActivationRecord:
    """The units of a state are ``activation(h)`` elementwise, h Gaussian with state ``pre``.

    An activation applied to these units is then the elementwise function (phi2 o phi1)(h) of
    the same Gaussian h, and its kernel rule is that of the composite applied to ``pre``
    (``ntklib.layers.activations.compose``). Kept only where such an activation may follow
    (the next layer is an activation, a FanOut or an Identity), since it costs a copy of the
    pre-activation tensors. Shared by the branches of a FanOut: nobody writes into ``pre``;
    a rule that uses it works on a clone.

    Attributes:
        activation: the Activation phi (a composite after several activations in a row).
        pre: the state of h (``is_gaussian`` True).
    """

    activation: Any
    pre: KernelState


def pixel_diagonal(cov: Tensor, spatial_ndim: int, full: bool) -> Tensor:
    """(n, *S, *S) -> (n, *S): each pixel's variance; the diagonal layout is returned as is."""
    if not full or spatial_ndim == 0:
        return cov
    out = cov  # (n, p_1..p_k, q_1..q_k)
    for remaining in range(spatial_ndim, 0, -1):
        # Pair the first remaining p-dim with its q-dim; diagonal() appends the pair at the end.
        out = out.diagonal(dim1=1, dim2=1 + remaining)
    return out


class Layout(NamedTuple):
    """Which pixel pairs a network's kernel state keeps (see :class:`KernelState`), and the pool
    its block tensors come from."""

    full: bool  # nngp and ntk over all pixel pairs
    cov_full: bool  # the inputs' variances over all pixel pairs
    pool: TensorPool | None = None


class TensorPool:
    """Free block tensors of one ``kernels`` call, reused by later layers and blocks.

    A block's tensors have the same few shapes from block to block, and fresh memory costs page
    faults: on the development machine a new 2 MiB block costs about as much as 15 passes over
    one. A tensor given to the pool must not be used by its giver again; ``take`` removes it,
    so no two users hold the same one. Only tensors that own their whole storage are kept, and
    at most ``capacity`` of them.
    """

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self._free: list[Tensor] = []

    def take(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A free tensor of ``shape`` with ``like``'s dtype and device, or a new one. Any free
        tensor of as many entries will do (viewed as ``shape``): a first layer's Gram over
        (n1, n2, H W) pixels is a later layer's (n1, n2, H, W) block."""
        numel = math.prod(shape)
        for index, tensor in enumerate(self._free):
            if tensor.numel() == numel and tensor.dtype == like.dtype and tensor.device == like.device:
                tensor = self._free.pop(index)
                return tensor if tuple(tensor.shape) == shape else tensor.view(shape)
        return like.new_empty(shape)

    def give(self, *tensors: Tensor | None) -> None:
        for tensor in tensors:
            if (tensor is None or tensor.requires_grad or not tensor.is_contiguous() or tensor.storage_offset() != 0
                    or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size()
                    or any(tensor.untyped_storage().data_ptr() == kept.untyped_storage().data_ptr()
                           for kept in self._free)):  # fmt: skip
                continue
            self._free.append(tensor)
        del self._free[: max(0, len(self._free) - self.capacity)]


def pair_gram(A: Tensor, B: Tensor, spatial: tuple[int, ...], full: bool, pool: TensorPool | None = None) -> Tensor:
    """sum_f A[i, f, p] B[j, f, q] / F: (n1, n2, *S, *S) over all pixel pairs, (n1, n2, *S) for
    p = q only, (n1, n2) for vectors.

    A: (n1, F, P), B: (n2, F, P) features per pixel (channels, or patches for a convolution);
    P = 1 for vectors. The output, and the matrix product it is rearranged from, come from
    ``pool`` when there is one (new memory otherwise).
    """
    n1, features, size = A.shape
    n2 = B.shape[0]
    pool = pool if pool is not None else TensorPool(capacity=0)
    tracking = tracks_grad(A, B)

    def out(*shape: int) -> Tensor | None:
        return None if tracking else pool.take(shape, A)  # out= is not differentiable

    if size == 1:
        return torch.mm(A[:, :, 0], B[:, :, 0].T, out=out(n1, n2)).div_(features).reshape(n1, n2, *spatial)
    if full:
        rows = A.transpose(1, 2).reshape(n1 * size, features)
        cols = B.transpose(1, 2).reshape(n2 * size, features)
        product = torch.mm(rows, cols.T, out=out(n1 * size, n2 * size))
        # (n1 P, n2 P) -> (n1, n2, P, P), divided on the way: one pass, then the product is free
        gram = torch.div(product.view(n1, size, n2, size).transpose(1, 2), features, out=out(n1, n2, size, size))
        pool.give(product)
        return gram.view(n1, n2, *spatial, *spatial)
    if features <= _FEW_FEATURES:
        # Few features (a first convolution of 1-3 channels): F broadcast products give the
        # (n1, n2, P) layout directly, where a batched matrix product over P would give P first
        # and leave every later pass over the kernel strided.
        gram = torch.mul(A[:, None, 0, :], B[None, :, 0, :], out=out(n1, n2, size))
        for feature in range(1, features):
            gram.addcmul_(A[:, None, feature, :], B[None, :, feature, :])
    else:
        gram = torch.einsum("ifp,jfp->ijp", A, B).contiguous()
    return gram.div_(features).reshape(n1, n2, *spatial)


_FEW_FEATURES = 32


def self_gram(A: Tensor, spatial: tuple[int, ...], full: bool) -> Tensor:
    """Each input with itself, as :func:`pair_gram`: (n, *S, *S), (n, *S) or (n,)."""
    n, features, _ = A.shape
    if full:
        return torch.bmm(A.transpose(1, 2), A).div_(features).reshape(n, *spatial, *spatial)
    return (A * A).sum(1).div_(features).reshape(n, *spatial)


def input_state(X: Tensor, Z: Tensor, same: bool, layout: Layout) -> KernelState:
    """The state of the inputs: covariances averaged over features (channels for images).

    Vectors (n, d): Sigma(x, z) = x.z / d. Images (n, C, *S): Sigma(x, z)[p, q] =
    sum_c x_c(p) z_c(q) / C, for all pixel pairs (``layout.full``) or p = q only.
    """
    spatial = tuple(X.shape[2:])
    A = X.reshape(X.shape[0], X.shape[1], -1)  # (n1, C, P); P = 1 for vectors
    B = Z.reshape(Z.shape[0], Z.shape[1], -1)
    full, cov_full = layout.full and bool(spatial), layout.cov_full and bool(spatial)
    nngp = pair_gram(A, B, spatial, full, layout.pool)
    cov1 = None if same else self_gram(A, spatial, cov_full)
    cov2 = None if same else self_gram(B, spatial, cov_full)
    return KernelState(nngp=nngp, ntk=torch.zeros_like(nngp), cov1=cov1, cov2=cov2, shape=tuple(X.shape[1:]),
                       full=full, same=same, cov_full=cov_full, pool=layout.pool)  # fmt: skip


def pair_norms(q_a: Tensor, q_b: Tensor, out: Tensor | None = None, *, divisor: bool = False) -> Tensor:
    """sqrt(q_a q_b) for broadcastable variances, the denominator of cos t = s / sqrt(q_a q_b).

    sqrt(q_a q_b), not sqrt(q_a) sqrt(q_b): for an input with itself (or a duplicate) sqrt(q^2) = q
    exactly, so cos t = 1 exactly there (arccos is infinitely sensitive at 1). Only where q_a q_b
    would overflow or underflow (float32 inputs of norm ~1e15 or ~1e-10, deep nets with large
    W_std) the product of the square roots is used. A zero variance (a zero input) gives a zero
    norm; with ``divisor`` such norms are raised to the smallest normal number, so they divide.
    """
    limits = torch.finfo(q_a.dtype)
    low_a, high_a, low_b, high_b = torch.stack([*torch.aminmax(q_a.detach()), *torch.aminmax(q_b.detach())]).tolist()
    has_zero, low, high = min(low_a, low_b) <= 0.0, min(low_a, low_b), max(high_a, high_b)
    if has_zero:  # the range that matters is that of the positive variances
        variances = torch.cat([q_a.detach().reshape(-1), q_b.detach().reshape(-1)])
        positive = variances[variances > 0]
        low = float(positive.min()) if positive.numel() else 1.0
    exact = math.sqrt(limits.tiny) < low and high < math.sqrt(limits.max) / 2
    norms = torch.mul(q_a, q_b, out=out).sqrt_() if exact else torch.mul(q_a.sqrt(), q_b.sqrt(), out=out)
    # sqrt(q_a q_b) >= low > 0 unless a variance is 0; a product of small roots may underflow
    if divisor and (has_zero or not exact):
        norms.clamp_min_(limits.tiny)
    return norms


def tracks_grad(*tensors: Tensor) -> bool:
    """Whether autograd records operations on any of ``tensors`` (then no in-place arithmetic
    may overwrite a value that a backward formula needs)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
