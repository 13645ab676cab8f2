"""Activations: each one record of phi, phi' and its dual maps.

For a zero-mean Gaussian pair (u, v) with variances q_a, q_b and covariance s, the dual maps are

    E[phi(u) phi(v)]     (the NNGP after the activation),
    E[phi'(u) phi'(v)]   (the factor that multiplies the NTK),

closed forms for the ReLU family, erf and GELU, and a Hermite series for any other torch
function (:class:`Elementwise`). A dual map takes (q_a, q_b, s) as broadcastable tensors and
returns both expectations; it may overwrite ``s``. The closed forms work in place, except when
autograd tracks their inputs (W_std, b_std given as tensors that require grad, as in
``ntklib.gpytorch_kernels``): then the same formulas run out of place, so gradients flow
through the recursion.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import _real, positive_int
from .base import Layer, LayerError
from .state import KernelState, pixel_diagonal

DualMap = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


class Activation(Layer):
    """An elementwise nonlinearity phi: its finite rule phi(h) and its kernel rule.

    The kernel rule needs Gaussian pre-activations (a Dense or Conv layer before it):
    Sigma <- E[phi(u) phi(v)], Theta <- Theta E[phi'(u) phi'(v)], with (u, v) ~ N(0,
    [[Sigma(x, x), Sigma(x, z)], [Sigma(x, z), Sigma(z, z)]]) (Lee et al. 2018; Jacot et al.
    2018), pixel pair by pixel pair for images.
    """

    def __init__(self, name: str, fn: Callable[[Tensor], Tensor], derivative: Callable[[Tensor], Tensor],
                 dual: DualMap, *, linear: bool = False, options: str = "") -> None:  # fmt: skip
        self.name = name
        self.fn = fn
        self.derivative = derivative
        self.dual = dual
        self.linear = linear  # phi(u) = u: Gaussian in, Gaussian out
        self._options = options

    uses_variances = True

    def __repr__(self) -> str:
        return f"{self.name}({self._options})"

    def output_shape(self, in_shape):
        return self._single(in_shape)

    def build(self, in_shape, context) -> nn.Module:
        return ActivationModule(self)

    def kernel(self, state):
        state = self._single(state)
        if not state.is_gaussian:
            raise LayerError(
                f"{self!r} needs Gaussian pre-activations (its dual map is an expectation over a Gaussian "
                "pair): put a Dense or Conv layer before it, not another activation, Flatten or a sum "
                "with a non-Gaussian branch"
            )
        q1, q2 = state.pixel_variances()
        nngp, derivative = self.dual(q1, q2, state.nngp)
        ntk = state.ntk.mul_(derivative)
        cov1 = None if state.cov1 is None else self._self_map(state.cov1, state)
        cov2 = None if state.cov2 is None else self._self_map(state.cov2, state)
        return state.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, is_gaussian=self.linear,
                             fresh=state.fresh and self.linear)  # fmt: skip

    def _self_map(self, cov: Tensor, state: KernelState) -> Tensor:
        """The dual map of each input with itself: (n, *P) -> (n, *P)."""
        k = len(state.spatial)
        if not state.cov_full or k == 0:
            return self.dual(cov, cov, cov.clone())[0]
        q = pixel_diagonal(cov, k, True)  # (n, *S)
        ones = (1,) * k
        rows = q.reshape(q.shape[0], *state.spatial, *ones)
        cols = q.reshape(q.shape[0], *ones, *state.spatial)
        return self.dual(rows, cols, cov)[0]


class ActivationModule(nn.Module):
    """The finite layer of an :class:`Activation`: phi applied elementwise."""

    def __init__(self, activation: Activation) -> None:
        super().__init__()
        self.activation = activation

    def forward(self, h: Tensor) -> Tensor:
        return self.activation.fn(h)

    def extra_repr(self) -> str:
        return repr(self.activation)


# ----------------------------------------------------------------------------- the ReLU family


def tracks_grad(*tensors: Tensor) -> bool:
    """Whether autograd records operations on any of ``tensors`` (then no in-place arithmetic
    may overwrite a value that a backward formula needs)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def arccos_flat_at_ends(c: Tensor) -> Tensor:
    """arccos(c) for c in [-1, 1], with gradient 0 at c = +-1, where arccos' is infinite.

    Used only under autograd. c = cos t reaches 1 exactly for an input with itself (or a
    duplicate), where it is 1 whatever the hyperparameters are, so its true derivative along
    them is 0; autograd would multiply that 0 by an infinite arccos' and give NaN.
    """
    inside = c.abs() < 1
    safe = torch.where(inside, c, torch.zeros_like(c))
    return torch.where(inside, torch.arccos(safe), torch.arccos(c.detach()))


class ABReluDual:
    """Dual maps of phi(u) = b u for u > 0, a u for u < 0 (ReLU: a=0, b=1; ``|u|``: a=-1, b=1).

    With cos t = s / sqrt(q_a q_b) (Cho & Saul 2009, the arc-cosine kernel):
      E[phi(u) phi(v)]   = (a - b)^2 / (2 pi) sqrt(q_a q_b) (sin t - t cos t) + (a^2 + b^2)/2 s
      E[phi'(u) phi'(v)] = (a^2 + b^2) / 2 - (a - b)^2 t / (2 pi)
    """

    def __init__(self, a: float, b: float) -> None:
        self.half_sum_sq, self.gap_sq = (a * a + b * b) / 2, (a - b) ** 2 / (2 * math.pi)

    def __call__(self, q_a: Tensor, q_b: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        # sqrt(q_a q_b), not sqrt(q_a) sqrt(q_b): for a point with itself sqrt(q^2) = q exactly, so
        # cos t = 1 exactly there (arccos is infinitely sensitive at 1). Only where q_a q_b would
        # overflow (float32 inputs of norm ~1e15, deep nets with large W_std) the product of the
        # square roots is used. Zero-norm inputs give 0/0: clamping the norms picks some angle,
        # and the norms factor kills it.
        if max(float(q_a.detach().max()), float(q_b.detach().max())) < math.sqrt(torch.finfo(s.dtype).max) / 2:
            norms = torch.mul(q_a, q_b).sqrt_()
        else:
            norms = torch.mul(q_a.sqrt(), q_b.sqrt())
        if norms.shape != s.shape:
            norms = norms.expand_as(s).contiguous()
        # (The clamped copy only divides: multiplying by the true norms keeps a zero input's
        # kernel exactly 0.)
        cos_t = torch.div(s, norms.clamp_min(torch.finfo(s.dtype).tiny)).clamp_(-1.0, 1.0)
        if tracks_grad(q_a, q_b, s):  # the same formulas, out of place
            t = arccos_flat_at_ends(cos_t)
            nngp = (norms * torch.sin(t) - t * s) * self.gap_sq + s * self.half_sum_sq
            return nngp, self.half_sum_sq - self.gap_sq * t
        # sin t from cos t, not from q_a q_b - s^2: at cos t = 1 it is exactly 0.
        nngp = torch.mul(cos_t, cos_t).neg_().add_(1.0).clamp_min_(0.0).sqrt_()
        t = cos_t.arccos_()
        # E[phi phi] = gap norms (sin t - t cos t) + half s, with norms cos t = s
        nngp.mul_(norms).addcmul_(t, s, value=-1.0).mul_(self.gap_sq).add_(s, alpha=self.half_sum_sq)
        derivative = t.mul_(-self.gap_sq).add_(self.half_sum_sq)
        return nngp, derivative


class _PiecewiseLinear:
    """phi(u) = b u for u > 0, a u otherwise, and its derivative (a at u = 0, as autograd)."""

    def __init__(self, a: float, b: float, derivative: bool) -> None:
        self.a, self.b, self.derivative = a, b, derivative

    def __call__(self, h: Tensor) -> Tensor:
        if self.derivative:  # full_like keeps the dtype exact
            return torch.full_like(h, self.a).masked_fill_(h > 0, self.b)
        return torch.where(h > 0, h * self.b, h * self.a)


def ABRelu(a: float, b: float) -> Activation:
    """phi(u) = a u for u < 0, b u for u >= 0 (a = b: linear; ReLU, leaky ReLU, ``|u|`` below)."""
    a, b = _real("a", a), _real("b", b)
    return Activation("ABRelu", _PiecewiseLinear(a, b, False), _PiecewiseLinear(a, b, True), ABReluDual(a, b),
                      linear=a == b, options=f"a={a:g}, b={b:g}")  # fmt: skip


def Relu() -> Activation:
    """phi(u) = max(u, 0) (arc-cosine kernel of degree 1, Cho & Saul 2009); phi'(0) = 0."""
    return Activation("Relu", torch.relu, _PiecewiseLinear(0.0, 1.0, True), ABReluDual(0.0, 1.0))


def LeakyRelu(slope: float = 0.01) -> Activation:
    """phi(u) = u for u > 0, slope * u otherwise."""
    slope = _real("slope", slope)
    return Activation("LeakyRelu", functools.partial(nn.functional.leaky_relu, negative_slope=slope),
                      _PiecewiseLinear(slope, 1.0, True), ABReluDual(slope, 1.0), linear=slope == 1.0,
                      options=f"slope={slope:g}")  # fmt: skip


def Abs() -> Activation:
    """phi(u) = ``|u|`` (sign(0) = 0, autograd's derivative at 0)."""
    return Activation("Abs", torch.abs, torch.sign, ABReluDual(-1.0, 1.0))


def _identity(h: Tensor) -> Tensor:
    return h


def Linear() -> Activation:
    """phi(u) = u: a linear network's activation (keeps the units Gaussian)."""
    return Activation("Linear", _identity, torch.ones_like, ABReluDual(1.0, 1.0), linear=True)


# ---------------------------------------------------------------------------------- erf, GELU


def erf_dual(q_a: Tensor, q_b: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """Dual maps of phi = erf (Williams 1997, the arcsine kernel):
      E[erf(u) erf(v)]   = 2/pi arcsin(2 s / sqrt((1 + 2 q_a)(1 + 2 q_b)))
      E[erf'(u) erf'(v)] = 4/pi / sqrt((1 + 2 q_a)(1 + 2 q_b) - 4 s^2)
    The last radicand is >= 1 + 2 q_a + 2 q_b >= 1 in exact arithmetic (Cauchy-Schwarz), so
    clamping it at 1 only removes rounding.
    """
    product = (1.0 + 2.0 * q_a) * (1.0 + 2.0 * q_b)
    if tracks_grad(q_a, q_b, s):  # the same formulas, out of place
        derivative = (product - 4.0 * s * s).clamp_min(1.0).rsqrt() * (4.0 / math.pi)
        return torch.arcsin((2.0 * s / product.sqrt()).clamp(-1.0, 1.0)) * (2.0 / math.pi), derivative
    derivative = (product - 4.0 * s * s).clamp_min_(1.0).rsqrt_().mul_(4.0 / math.pi)
    nngp = torch.arcsin((2.0 * s).div_(product.sqrt_()).clamp_(-1.0, 1.0)).mul_(2.0 / math.pi)
    return nngp, derivative


_ERF_SLOPE = 2.0 / math.sqrt(math.pi)


def _erf_derivative(h: Tensor) -> Tensor:
    return _ERF_SLOPE * torch.exp(-h * h)


def Erf() -> Activation:
    """phi(u) = erf(u) (Williams 1997)."""
    return Activation("Erf", torch.special.erf, _erf_derivative, erf_dual)


def gelu_dual(q_a: Tensor, q_b: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """Dual maps of the exact GELU phi(u) = u Phi(u) (Tsuchida et al. 2021).

    Writing Phi(u) = P(xi <= u) with xi ~ N(0, 1) turns both expectations into Gaussian orthant
    moments. With P = (1 + q_a)(1 + q_b), Delta = sqrt(P - s^2) and theta = arcsin(s / sqrt(P)):
      E[phi(u) phi(v)]   = s/4 + s theta / (2 pi) + (s^2 + q_a q_b Delta^2) / (2 pi P Delta)
      E[phi'(u) phi'(v)] = 1/4 + theta / (2 pi) + s / (2 pi Delta) (1 + 1/Delta^2 + (1 - q_a q_b) / P),
    the second being the derivative of the first in s (Price's theorem).
    """
    product = q_a * q_b
    P = (1.0 + q_a) * (1.0 + q_b)
    delta_sq = (P - s * s).clamp_min_(torch.finfo(s.dtype).tiny)  # >= 1 + q_a + q_b in exact arithmetic
    delta = delta_sq.sqrt()
    theta = torch.atan2(s, delta)  # = arcsin(s / sqrt(P)), stable at |s| -> sqrt(P)
    nngp = (s * s + product * delta_sq) / (P * delta) / (2 * math.pi) + s * (0.25 + theta / (2 * math.pi))
    derivative = 0.25 + theta / (2 * math.pi) + s / (2 * math.pi * delta) * (1.0 + 1.0 / delta_sq + (1.0 - product) / P)
    return nngp, derivative


_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu_derivative(h: Tensor) -> Tensor:
    # d/du u Phi(u) = Phi(u) + u phi(u)
    return torch.special.ndtr(h) + h * torch.exp(-0.5 * h * h) * _INV_SQRT_2PI


def Gelu() -> Activation:
    """phi(u) = u Phi(u), the exact (erf-based) GELU of torch.nn.GELU(approximate="none")."""
    return Activation("Gelu", nn.functional.gelu, _gelu_derivative, gelu_dual)


# ------------------------------------------------------------------- any torch function


@functools.lru_cache(maxsize=8)
def hermite_rule(degree: int, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Hermite nodes x_n for the standard normal and the matrix w_n h_k(x_n), (nodes, degree + 1),
    with h_k = He_k / sqrt(k!) the orthonormal Hermite polynomials.

    Nodes are the eigenvalues of the Jacobi matrix (Golub & Welsch 1969). The weights come from
    w_n = 1 / (N h_{N-1}(x_n)^2) and the products w_n h_k(x_n) from the three-term recurrence
    h_{k+1} = (x h_k - sqrt(k) h_{k-1}) / sqrt(k + 1), carried with a running logarithmic scale:
    the outer nodes' weights underflow and their h_k overflow, but the products are at most 1.
    """
    k = np.sqrt(np.arange(1, nodes))
    x = np.linalg.eigvalsh(np.diag(k, 1) + np.diag(k, -1))
    products = np.empty((nodes, degree + 1))

    def recurrence(steps: int, record: bool, log_w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        previous, current, log_scale = np.zeros_like(x), np.ones_like(x), np.zeros_like(x)
        if record:
            products[:, 0] = np.exp(log_w)
        for j in range(steps):
            previous, current = current, (x * current - math.sqrt(j) * previous) / math.sqrt(j + 1)
            scale = np.maximum(np.abs(current), np.abs(previous))
            scale[scale == 0] = 1.0
            previous, current, log_scale = previous / scale, current / scale, log_scale + np.log(scale)
            if record:
                products[:, j + 1] = current * np.exp(log_w + log_scale)
        return current, log_scale

    last, log_scale = recurrence(nodes - 1, False, None)
    log_w = -math.log(nodes) - 2 * (np.log(np.abs(last)) + log_scale)
    recurrence(degree, True, log_w)
    return x, products


class HermiteDual:
    """Dual maps of any function by its Hermite series (Mehler's formula).

    With u = sqrt(q_a) x, v = sqrt(q_b) y and (x, y) standard normal with correlation rho,
    E[f(u) f(v)] = sum_k a_k(q_a) a_k(q_b) rho^k, where a_k(q) = E[f(sqrt(q) x) h_k(x)] are the
    Hermite coefficients of x -> f(sqrt(q) x) (O'Donnell 2014, ch. 11). Each coefficient is a
    1-D Gauss-Hermite quadrature per distinct variance q, so a pair of inputs costs one
    polynomial in rho instead of a 2-D quadrature. The same for f' (by autograd) gives
    E[f'(u) f'(v)]. Truncating after degree K errs by at most sqrt(T_K(q_a) T_K(q_b)), with the
    tail T_K(q) = E[f(sqrt(q) x)^2] - sum_{k <= K} a_k(q)^2, computed from the same quadrature;
    K is the smallest degree (up to ``max_degree``) whose tails are below ``tolerance`` times
    the largest E[f^2], and a larger error raises.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], derivative: Callable[[Tensor], Tensor],
                 max_degree: int, tolerance: float, name: str) -> None:  # fmt: skip
        self.fn, self.derivative, self.name = fn, derivative, name
        self.max_degree, self.tolerance = max_degree, tolerance

    def _coefficients(self, q: Tensor, fn: Callable[[Tensor], Tensor], what: str) -> Tensor:
        """Hermite coefficients (M, K + 1) at the variances q (M,), K chosen by the tolerance."""
        nodes, products = hermite_rule(self.max_degree, self.max_degree + 64)
        x = torch.as_tensor(nodes, dtype=q.dtype, device=q.device)
        values = fn(q.clamp_min(0).sqrt()[:, None] * x)  # (M, N)
        coefficients = values @ torch.as_tensor(products, dtype=q.dtype, device=q.device)  # (M, K_max + 1)
        moments = (values * values) @ torch.as_tensor(products[:, 0], dtype=q.dtype, device=q.device)
        tails = moments[:, None] - (coefficients * coefficients).cumsum(1)  # (M, K_max + 1)
        scale = float(moments.abs().max()) or 1.0
        worst = tails.max(0).values / scale  # (K_max + 1,)
        good = torch.nonzero(worst <= self.tolerance)
        if good.numel() == 0:
            raise LayerError(
                f"{self.name}: the Hermite series of {what} up to degree {self.max_degree} leaves a relative "
                f"error of {float(worst[-1]):.1e} (> {self.tolerance:g}) at pre-activation variances up to "
                f"{float(q.max()):.3g}; pass a larger max_degree= or a looser tolerance="
            )
        return coefficients[:, : int(good[0]) + 1]

    def _series(self, q_a: Tensor, q_b: Tensor, rho: Tensor, fn: Callable[[Tensor], Tensor], what: str) -> Tensor:
        """sum_k a_k(q_a) a_k(q_b) rho^k, with q_a, q_b broadcastable against rho."""
        unique, inverse = torch.unique(torch.cat([q_a.reshape(-1), q_b.reshape(-1)]), return_inverse=True)
        coefficients = self._coefficients(unique, fn, what)
        index_a = inverse[: q_a.numel()].reshape(q_a.shape)
        index_b = inverse[q_a.numel():].reshape(q_b.shape)
        terms = coefficients.shape[1]
        if rho.numel() * terms <= 1 << 22:  # small: all powers at once, one reduction
            powers = rho.unsqueeze(-1) ** torch.arange(terms, dtype=rho.dtype, device=rho.device)
            return (coefficients[index_a] * coefficients[index_b] * powers).sum(-1)
        total = None
        for k in range(terms - 1, -1, -1):  # Horner in rho, one pass per degree
            term = coefficients[:, k][index_a] * coefficients[:, k][index_b]
            total = term.expand_as(rho).clone() if total is None else total.mul_(rho).add_(term)
        return total

    def __call__(self, q_a: Tensor, q_b: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        if tracks_grad(q_a, q_b, s):
            raise LayerError(
                f"{self.name}: the kernels of an Elementwise activation are not differentiable in W_std and b_std "
                "(its Hermite coefficients are computed once per distinct variance); use a closed-form activation "
                "(Relu, LeakyRelu, Abs, Erf, Gelu) or numbers for W_std and b_std"
            )
        norms = torch.mul(q_a, q_b).sqrt_()
        rho = torch.div(s, norms.clamp_min(torch.finfo(s.dtype).tiny)).clamp_(-1.0, 1.0)
        return (self._series(q_a, q_b, rho, self.fn, "phi"),
                self._series(q_a, q_b, rho, self.derivative, "phi'"))  # fmt: skip


class AutogradDerivative:
    """phi'(h) of an elementwise function, by autograd."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.fn = fn

    def __call__(self, h: Tensor) -> Tensor:
        with torch.enable_grad():
            x = h.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.fn(x).sum(), x)
        return grad


def Elementwise(fn: Callable[[Tensor], Tensor], name: str | None = None, *, max_degree: int = 1024,
                tolerance: float = 1e-8) -> Activation:  # fmt: skip
    """Any elementwise torch function as an activation (tanh, sin, SiLU, ...).

    phi' comes from autograd; the dual maps from the Hermite series of :class:`HermiteDual`,
    with the degree chosen so that the truncation error of every kernel entry is below
    ``tolerance`` times the largest E[phi(u)^2] (1e-8 by default); when ``max_degree`` is not
    enough (a saturating function at a very large pre-activation variance) it raises. The cost
    per pair of inputs grows with the degree, which for saturating functions such as tanh grows
    with the pre-activation variance.

    Args:
        fn: an elementwise function of tensors (e.g. ``torch.tanh``).
        name: for messages and ``repr`` (default: ``fn.__name__``).
        max_degree: highest Hermite degree the series may use.
        tolerance: largest accepted truncation error, relative to E[phi(u)^2].
    """
    if not callable(fn):
        raise TypeError(f"fn must be an elementwise torch function; got {type(fn).__name__}")
    max_degree = positive_int("max_degree", max_degree)
    tolerance = _real("tolerance", tolerance)
    label = name or getattr(fn, "__name__", type(fn).__name__)
    derivative = AutogradDerivative(fn)
    dual = HermiteDual(fn, derivative, max_degree, tolerance, f"Elementwise({label})")
    return Activation("Elementwise", fn, derivative, dual, options=label)


ACTIVATIONS: dict[str, Callable[..., Activation]] = {
    "relu": Relu,
    "leaky_relu": LeakyRelu,
    "abs": Abs,
    "erf": Erf,
    "gelu": Gelu,
    "identity": Linear,
}


def activation_by_name(name: object, negative_slope: float = 0.01) -> Activation:
    """The activation of ``nk.MLP(activation=name)``; "leaky_relu" uses ``negative_slope``."""
    if not isinstance(name, str):
        raise TypeError(f"activation must be a string; got {type(name).__name__}")
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of: {', '.join(sorted(ACTIVATIONS))}")
    return LeakyRelu(negative_slope) if name == "leaky_relu" else ACTIVATIONS[name]()
