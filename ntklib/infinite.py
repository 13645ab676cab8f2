"""NNGP and NTK kernels of infinitely wide MLPs, in neural-tangents' ``stax`` conventions.

The network is ``depth`` hidden layers Dense -> activation, then a Dense readout, exactly as
:class:`ntklib.MLP`. Each layer maps the pair (Sigma, Theta) of NNGP and NTK entrywise, given
the diagonals Sigma(x, x) and Sigma(z, z), so a row block of the kernel matrices can go through
all layers on its own: memory stays at a few (block, m) buffers whatever n is.

Conventions (neural-tangents 0.6.5, Novak et al. 2020):
  * inputs: Sigma = x.z / d, Theta = 0;
  * Dense, "ntk":      Sigma <- W^2 Sigma + b^2,  Theta <- W^2 (Sigma + Theta) + b^2;
  * Dense, "standard": Theta <- fan_in Sigma + W^2 Theta (+ 1 with a bias), Sigma as above,
    with fan_in = d for the first layer and ``width`` after it (old values on the right);
  * activation phi: Sigma <- E[phi(u) phi(v)], Theta <- Theta E[phi'(u) phi'(v)], with
    (u, v) ~ N(0, [[Sigma(x,x), Sigma], [Sigma, Sigma(z,z)]]).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ._checks import as_matrix_pair, nonnegative_real, positive_int, positive_real

PARAMETERIZATIONS = ("ntk", "standard")


class Kernels(NamedTuple):
    """The NNGP kernel Sigma and the NTK Theta, each (n, m)."""

    nngp: Tensor
    ntk: Tensor


# An activation's dual maps: (Sigma(x,x) as a (B, 1) column, Sigma(z,z) as a (1, m) row,
# Sigma(x,z) as (B, m)) -> (E[phi phi], E[phi' phi']), each (B, m). It may overwrite its third
# argument (and return it), to keep the passes over n x m memory few.
DualMap = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def abrelu_dual(a: float, b: float) -> DualMap:
    """Dual maps of phi(u) = b u for u > 0, a u for u < 0 (ReLU: a=0, b=1; |u|: a=-1, b=1).

    With rho = Sigma / sqrt(Sigma_xx Sigma_zz) = cos(t) (Cho & Saul 2009, arc-cosine kernel):
      E[phi(u) phi(v)]   = (a - b)^2 / (2 pi) sqrt(Sigma_xx Sigma_zz) (sin t - t cos t) + (a^2 + b^2)/2 Sigma
      E[phi'(u) phi'(v)] = (a^2 + b^2) / 2 - (a - b)^2 t / (2 pi)
    """
    half_sum_sq, gap_sq = (a * a + b * b) / 2, (a - b) ** 2 / (2 * math.pi)

    def dual(sigma_xx: Tensor, sigma_zz: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        norms = (sigma_xx * sigma_zz).sqrt_()  # (B, m)
        # Zero-norm inputs give 0/0: any angle works there, the norms factor kills it.
        cos_t = torch.div(sigma, norms.clamp_min(torch.finfo(sigma.dtype).tiny)).clamp_(-1.0, 1.0)
        # sin t from cos t, not from Sigma_xx Sigma_zz - Sigma^2: at cos t = 1 it is exactly 0.
        nngp = torch.mul(cos_t, cos_t).neg_().add_(1.0).clamp_min_(0.0).sqrt_().mul_(norms)  # norms sin t
        t = cos_t.arccos_()
        nngp.addcmul_(t, sigma, value=-1.0).mul_(gap_sq).add_(sigma, alpha=half_sum_sq)
        derivative = t.mul_(-gap_sq).add_(half_sum_sq)
        return nngp, derivative

    return dual


def erf_dual(sigma_xx: Tensor, sigma_zz: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """Dual maps of phi = erf (Williams 1997, the arcsine kernel):
      E[erf(u) erf(v)]   = 2/pi arcsin(2 Sigma / sqrt((1 + 2 Sigma_xx)(1 + 2 Sigma_zz)))
      E[erf'(u) erf'(v)] = 4/pi / sqrt((1 + 2 Sigma_xx)(1 + 2 Sigma_zz) - 4 Sigma^2)
    The last radicand is >= 1 + 2 Sigma_xx + 2 Sigma_zz >= 1 in exact arithmetic (Cauchy-Schwarz),
    so clamping it at 1 only removes rounding.
    """
    product = (1.0 + 2.0 * sigma_xx) * (1.0 + 2.0 * sigma_zz)  # (B, m)
    derivative = (product - 4.0 * sigma * sigma).clamp_min_(1.0).rsqrt_().mul_(4.0 / math.pi)
    nngp = torch.arcsin((2.0 * sigma).div_(product.sqrt_()).clamp_(-1.0, 1.0)).mul_(2.0 / math.pi)
    return nngp, derivative


ACTIVATIONS: dict[str, DualMap] = {
    "relu": abrelu_dual(0.0, 1.0),
    "abs": abrelu_dual(-1.0, 1.0),
    "identity": abrelu_dual(1.0, 1.0),
    "erf": erf_dual,
}


def activation_dual(activation: str, negative_slope: float = 0.01) -> DualMap:
    """The dual map of an activation by name; "leaky_relu" uses ``negative_slope``."""
    if activation == "leaky_relu":
        return abrelu_dual(float(negative_slope), 1.0)
    if activation not in ACTIVATIONS:
        valid = ", ".join(sorted([*ACTIVATIONS, "leaky_relu"]))
        raise ValueError(f"unknown activation {activation!r}; expected one of: {valid}")
    return ACTIVATIONS[activation]


def infinite_width_kernels(
    X: Tensor,
    Z: Tensor | None = None,
    depth: int = 1,
    activation: str = "relu",
    W_std: float = 1.0,
    b_std: float | None = 0.0,
    parameterization: str = "ntk",
    width: int | None = None,
    negative_slope: float = 0.01,
    block_size: int | None = None,
) -> Kernels:
    """NNGP and NTK of :class:`ntklib.MLP` in the infinite-width limit.

    Matches ``stax.serial(Dense(w, W_std, b_std), Act(), ..., Dense(1, W_std, b_std))`` with
    ``kernel_fn(X, Z, ("nngp", "ntk"))`` of neural-tangents.

    Args:
        X: (n, d) inputs.
        Z: (m, d) inputs; None means X.
        depth: number of hidden layers (>= 1).
        activation: "relu", "erf", "identity", "abs" or "leaky_relu".
        W_std, b_std: weight and bias standard deviations; ``b_std=None`` means no bias
            (it matters only for "standard", where a bias adds 1 to the NTK per layer).
        parameterization: "ntk" or "standard".
        width: hidden width, needed only by "standard", whose NTK grows with it.
        negative_slope: slope for u < 0 of "leaky_relu".
        block_size: rows per block (default: about 2^17 entries per block).

    Returns:
        Kernels(nngp, ntk), each (n, m) on X's device and dtype.
    """
    depth = positive_int("depth", depth)
    return _recursion(X, Z, depth, (depth,), activation, W_std, b_std, parameterization, width,
                      negative_slope, block_size)[0]  # fmt: skip


def infinite_width_kernels_by_depth(
    X: Tensor,
    Z: Tensor | None = None,
    max_depth: int = 5,
    activation: str = "relu",
    W_std: float = 1.0,
    b_std: float | None = 0.0,
    parameterization: str = "ntk",
    width: int | None = None,
    negative_slope: float = 0.01,
    block_size: int | None = None,
) -> list[Kernels]:
    """The kernels of :func:`infinite_width_kernels` for every depth 1..max_depth, in one pass.

    The network with ``l`` hidden layers shares its first ``l`` layers with every deeper one, so
    one recursion through ``max_depth`` layers, with a readout applied after each, gives all of
    them: ``max_depth`` layer passes instead of ``max_depth (max_depth + 1) / 2``. Arguments as in
    :func:`infinite_width_kernels`.

    Returns:
        A list whose entry ``l - 1`` is Kernels(nngp, ntk) of the network with ``l`` hidden
        layers, each (n, m) on X's device and dtype.
    """
    max_depth = positive_int("max_depth", max_depth)
    return _recursion(X, Z, max_depth, tuple(range(1, max_depth + 1)), activation, W_std, b_std,
                      parameterization, width, negative_slope, block_size)  # fmt: skip


def _recursion(
    X: Tensor,
    Z: Tensor | None,
    depth: int,
    readouts: tuple[int, ...],
    activation: str,
    W_std: float,
    b_std: float | None,
    parameterization: str,
    width: int | None,
    negative_slope: float,
    block_size: int | None,
) -> list[Kernels]:
    """Kernels after a readout on top of each hidden-layer count in ``readouts`` (<= depth)."""
    X, Z = as_matrix_pair(X, Z)
    dual = activation_dual(activation, negative_slope)
    W_var = positive_real("W_std", W_std) ** 2
    b_var = 0.0 if b_std is None else nonnegative_real("b_std", b_std) ** 2
    has_bias = b_std is not None
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; expected 'ntk' or 'standard'")
    if parameterization == "standard":
        if width is None:
            raise ValueError("width is required for parameterization='standard' (its NTK grows with width)")
        width = positive_int("width", width)
    if block_size is not None:
        block_size = positive_int("block_size", block_size)
    n, d = X.shape
    m = Z.shape[0]
    fan_ins = [d] + [width] * depth if parameterization == "standard" else [None] * (depth + 1)

    def dense(sigma: Tensor, theta: Tensor | None, fan_in: int | None) -> tuple[Tensor, Tensor]:
        # Theta first: it needs the old Sigma.
        if parameterization == "ntk":
            theta = sigma.clone() if theta is None else theta.add_(sigma)
            theta.mul_(W_var).add_(b_var)
        else:
            theta = sigma * fan_in if theta is None else theta.mul_(W_var).add_(sigma, alpha=fan_in)
            if has_bias:
                theta.add_(1.0)
        return sigma.mul_(W_var).add_(b_var), theta

    # Diagonals Sigma(x, x), layer by layer (Theta's diagonal is not needed by any dual map).
    def diagonals(points: Tensor) -> list[Tensor]:
        """Sigma(x, x) entering each hidden layer's activation, each (n, 1)."""
        sigma = (points * points).sum(dim=1, keepdim=True) / d  # (n, 1)
        out = []
        for _ in range(depth):
            sigma = sigma * W_var + b_var
            out.append(sigma)
            sigma = dual(sigma, sigma, sigma.clone())[0]
        return out

    diag_input = (X * X).sum(dim=1, keepdim=True) / d  # (n, 1)
    diag_x = diagonals(X)
    diag_z = diag_x if Z is X else diagonals(Z)

    def empty() -> Tensor:
        return torch.empty(n, m, dtype=X.dtype, device=X.device)

    outputs = [Kernels(empty(), empty()) for _ in readouts]
    # About 2^17 entries (1 MiB in float64) per block: the elementwise passes then run in cache.
    rows = block_size or max(1, (1 << 17) // m)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        sigma = (X[start:stop] @ Z.T).div_(d)  # (B, m)
        if Z is X:
            # x.x from the matrix product may differ from |x|^2 in the last bit, and arccos is
            # infinitely sensitive at cosine 1: use the exact diagonal so that t = 0 there.
            sigma.diagonal(offset=start).copy_(diag_input[start:stop, 0])
        theta = None
        for layer in range(depth):
            sigma, theta = dense(sigma, theta, fan_ins[layer])
            sigma, derivative = dual(diag_x[layer][start:stop], diag_z[layer].T, sigma)
            theta.mul_(derivative)
            if layer + 1 in readouts:
                last = layer + 1 == depth  # the last readout may overwrite the running pair
                out_sigma, out_theta = (sigma, theta) if last else (sigma.clone(), theta.clone())
                out_sigma, out_theta = dense(out_sigma, out_theta, fan_ins[layer + 1])
                kernels = outputs[readouts.index(layer + 1)]
                kernels.nngp[start:stop] = out_sigma
                kernels.ntk[start:stop] = out_theta
    return outputs
