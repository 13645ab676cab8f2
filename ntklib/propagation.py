"""Signal propagation through deep random networks: the fixed points of the layer recursion and
how fast a layer forgets its input (Poole et al. 2016; Schoenholz et al. 2017).

For a fully connected network (the book's layer recursion), the variance of a pre-activation
obeys the length map q^(l+1) = sigma_w^2 E[sigma(sqrt(q^(l)) u)^2] + sigma_b^2 (u standard
normal), which converges to a fixed point q*. At q*, two inputs' correlation c obeys the
correlation map c -> (sigma_w^2 E[sigma(u) sigma(v)] + sigma_b^2) / q*, with (u, v) of variance
q* and correlation c, whose slope at c = 1 is chi_1 = sigma_w^2 E[sigma'(sqrt(q*) u)^2]:
chi_1 < 1 is the ordered phase (inputs become perfectly correlated, c* = 1), chi_1 > 1 the
chaotic one (c* < 1), and chi_1 = 1 the edge of chaos. Perturbations of q and c decay with depth
like exp(-l / xi_q) and exp(-l / xi_c), with xi_q = -1 / log(chi_q), chi_q the slope of the
length map at q*, and xi_c = -1 / log(chi_c), chi_c the slope of the correlation map at c*;
xi_c diverges at the edge of chaos, where deep networks stay trainable (Schoenholz et al. 2017).

Every quantity comes from an activation's dual maps (:class:`ntklib.layers.Activation`), so it
holds for any activation, closed form or not.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._checks import _real, nonnegative_real, positive_int
from .layers.activations import Activation, activation_by_name


class SignalPropagation(NamedTuple):
    """Fixed points, slopes and depth scales of the layer recursion (module docstring)."""

    q_star: float
    chi_1: float
    c_star: float
    chi_c: float
    chi_q: float
    depth_scale_q: float
    depth_scale_c: float


def signal_propagation(activation: str | Activation, W_std: float, b_std: float = 0.0, *,
                       q_start: float = 1.0, iterations: int = 2000, tolerance: float = 1e-13) -> SignalPropagation:  # fmt: skip
    """q*, chi_1, c*, chi_c, chi_q and the depth scales of a deep network with this activation.

    Args:
        activation: a name as in ``nk.MLP`` or an activation layer (``nk.Erf()``, ...).
        W_std, b_std: sigma_w > 0 and sigma_b >= 0.
        q_start: the input variance the length map starts from.
        iterations: cap on the fixed-point iterations.
        tolerance: relative change below which an iteration has converged.

    Returns:
        A :class:`SignalPropagation`. A depth scale is ``math.inf`` where its slope is 1 (the
        edge) and where the map is not contracting (a slope > 1 has no finite decay length).

    Raises:
        ValueError: when the length map does not converge (it diverges for an unbounded
            activation with sigma_w too large, e.g. ReLU with sigma_w^2 > 2).
    """
    act = activation if isinstance(activation, Activation) else activation_by_name(activation)
    W_var = nonnegative_real("W_std", W_std) ** 2
    b_var = nonnegative_real("b_std", b_std) ** 2
    q = _real("q_start", q_start)
    iterations = positive_int("iterations", iterations)
    if W_var == 0:
        raise ValueError("W_std must be > 0 for signal propagation")

    def t(value: float) -> torch.Tensor:
        return torch.tensor([value], dtype=torch.float64)

    def length_map(q: float) -> float:
        return W_var * float(act.dual(t(q), t(q), t(q))[0]) + b_var

    def correlation_map(c: float, q: float) -> float:
        return (W_var * float(act.dual(t(q), t(q), t(c * q))[0]) + b_var) / q

    start = q
    q = _fixed_point(length_map, q, iterations, tolerance, "the length map q -> sigma_w^2 E[sigma^2] + sigma_b^2")
    if q <= 1e-10 * start:
        raise ValueError(f"the variance fixed point is q* = {q:.1e} (from q = {start:g}): the network's units "
                         "vanish with depth; use b_std > 0 or a larger W_std")  # fmt: skip
    chi_1 = W_var * float(act.dual(t(q), t(q), t(q))[1])
    # The correlation map's fixed point: c* = 1 in the ordered phase (and at the edge, up to
    # rounding of chi_1); in the chaotic phase the stable one below 1, by bisection (iterating
    # the map converges arbitrarily slowly near the edge).
    c = 1.0 if chi_1 <= 1.0 + 1e-12 else _chaotic_fixed_point(lambda c: correlation_map(c, q) - c)
    chi_c = W_var * float(act.dual(t(q), t(q), t(c * q))[1])
    step = 1e-5 * q
    chi_q = (length_map(q + step) - length_map(q - step)) / (2 * step)
    return SignalPropagation(q, chi_1, c, chi_c, chi_q, _depth_scale(chi_q), _depth_scale(chi_c))


def _fixed_point(fn, x: float, iterations: int, tolerance: float, what: str) -> float:
    """Iterate x <- fn(x), with Aitken's delta-squared extrapolation every third step (the maps
    here converge geometrically, at the rate of their slope at the fixed point)."""
    for _ in range(iterations):
        first = fn(x)
        second = fn(first)
        for value in (first, second):
            if not math.isfinite(value):
                raise ValueError(f"{what} diverges (reached {value}): no fixed point for these W_std, b_std")
        if abs(second - first) <= tolerance * max(1.0, abs(second)):
            return second
        curvature = second - 2 * first + x
        step = second - first
        jump = second - step * step / curvature if curvature != 0 else second
        # Keep the extrapolation only where it is a step of the same kind (no overshoot).
        x = jump if math.isfinite(jump) and (jump - second) * (second - first) >= 0 else second
    raise ValueError(f"{what} did not converge in {iterations} iterations (last value {x:g}); raise iterations=")


def _chaotic_fixed_point(excess) -> float:
    """The root of excess(c) = C(c) - c in [0, 1) for a correlation map C whose fixed point 1 is
    unstable (slope chi_1 > 1): excess >= 0 at 0 and < 0 just below 1, one sign change between."""
    low, high = 0.0, None
    if excess(low) <= 0:
        return low
    for k in range(1, 53):  # a point just below 1 where C(c) < c
        if excess(1.0 - 2.0**-k) < 0:
            high = 1.0 - 2.0**-k
            break
        low = 1.0 - 2.0**-k
    if high is None:  # indistinguishable from 1 in floating point
        return 1.0
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if excess(middle) > 0:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _depth_scale(chi: float) -> float:
    """-1 / log(chi) for a contracting map (chi < 1); infinite at and above the edge."""
    return -1.0 / math.log(chi) if 0 < chi < 1 else math.inf
