"""Activations: each one record of phi, phi' and its dual maps.

For a zero-mean Gaussian pair (u, v) with variances q_a, q_b and covariance s, the dual maps are

    E[phi(u) phi(v)]     (the NNGP after the activation),
    E[phi'(u) phi'(v)]   (the factor that multiplies the NTK),

closed forms for the ReLU family, erf and GELU, and a Hermite series for any other torch
function (:class:`Elementwise`). An activation right after another acts on an elementwise
function of the same Gaussian, so the two compose into one activation (``compose``): in
closed form within the ReLU family, else by the Hermite series, or by quadrature in polar
coordinates (``quadrature.PolarDual``) when a ReLU-family kink slows the series down.

A dual map takes (q_a, q_b, s) as broadcastable tensors and returns both expectations; it may
overwrite ``s``. The closed forms work in place, except when
autograd tracks their inputs (W_std, b_std given as tensors that require grad, as in
``ntklib.gpytorch_kernels``): then the same formulas run out of place, so gradients flow
through the recursion.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import Tensor, nn

from .._checks import _real, positive_int
from .base import Layer, LayerError
from .quadrature import HermiteDual, PolarDual
from .state import ActivationRecord, KernelState, pair_norms, pixel_diagonal, tracks_grad

DualMap = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


class Activation(Layer):
    """An elementwise nonlinearity phi: its finite rule phi(h) and its kernel rule.

    The kernel rule needs Gaussian pre-activations (a Dense or Conv layer before it):
    Sigma <- E[phi(u) phi(v)], Theta <- Theta E[phi'(u) phi'(v)], with (u, v) ~ N(0,
    [[Sigma(x, x), Sigma(x, z)], [Sigma(x, z), Sigma(z, z)]]) (Lee et al. 2018; Jacot et al.
    2018), pixel pair by pixel pair for images. Right after another activation phi1 of
    Gaussian h, it is the rule of the elementwise composite phi o phi1 (``compose``) on
    the state of h, which the activation before it records for it (KernelState.record).

    ``slopes`` = (a, b) marks the ReLU family phi(u) = a u (u < 0), b u (u > 0), whose dual map
    (``ABReluDual``) holds them; it composes in closed form.
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

    @property
    def slopes(self) -> tuple[float, float] | None:
        """(a, b) for the ReLU family, None otherwise."""
        return getattr(self.dual, "slopes", None)

    def __repr__(self) -> str:
        return f"{self.name}({self._options})"

    def output_shape(self, in_shape):
        return self._single(in_shape)

    def build(self, in_shape, context) -> nn.Module:
        return ActivationModule(self)

    reads_activation_record = True

    def kernel(self, state):
        return self.kernel_followed_by(state, None)

    def kernel_followed_by(self, state, following):
        state = self._single(state)
        keep = following is not None and following.reads_activation_record
        if state.is_gaussian:
            activation, record = self, (ActivationRecord(self, state.snapshot()) if keep else None)
        elif state.record is not None:  # phi(phi1(h)): phi1's rule is undone, the composite's applied
            activation = compose(state.record.activation, self)
            record = ActivationRecord(activation, state.record.pre) if keep else None
            state = state.record.pre.clone()  # the record is shared: work on a copy
        else:
            raise LayerError(
                f"{self!r} needs Gaussian pre-activations (its dual map is an expectation over a Gaussian "
                "pair): put a Dense or Conv layer before it, or an activation directly (the two compose); "
                "not Flatten, pooling or a sum with a non-Gaussian branch"
            )
        return activation._gaussian_kernel(state).replace(record=record)

    def _gaussian_kernel(self, state: KernelState) -> KernelState:
        """The rule on Gaussian pre-activations (overwrites the state's tensors)."""
        q1, q2 = state.pixel_variances()
        nngp, ntk = self._dual_update(q1, q2, state)
        cov1 = None if state.cov1 is None else self._self_map(state.cov1, state)
        cov2 = None if state.cov2 is None else self._self_map(state.cov2, state)
        return state.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, is_gaussian=self.linear,
                             fresh=state.fresh and self.linear)  # fmt: skip

    def _dual_update(self, q1: Tensor, q2: Tensor, state: KernelState) -> tuple[Tensor, Tensor]:
        """(nngp, ntk) <- (E[phi(u) phi(v)], ntk E[phi'(u) phi'(v)]); in place with one scratch
        tensor from the state's pool when the dual map has such a form (the ReLU family) and
        autograd does not track it."""
        in_place = getattr(self.dual, "update", None)
        if in_place is not None and not tracks_grad(q1, q2, state.nngp, state.ntk):
            scratch = state.scratch_like(state.nngp)
            nngp, ntk = in_place(q1, q2, state.nngp, state.ntk, scratch, state.self_pairs if state.same else None)
            state.recycle(scratch)
            return nngp, ntk
        nngp, derivative = self.dual(q1, q2, state.nngp)
        return nngp, state.ntk.mul_(derivative)

    def _self_map(self, cov: Tensor, state: KernelState) -> Tensor:
        """The dual map of each input with itself: (n, *P) -> (n, *P)."""
        k = len(state.spatial)
        if not state.cov_full or k == 0:
            variance = getattr(self.dual, "variance", None)  # a closed form of E[phi(u)^2]
            return variance(cov) if variance is not None else self.dual(cov, cov, cov.clone())[0]
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
        self.slopes = (a, b)
        self.half_sum_sq, self.gap_sq = (a * a + b * b) / 2, (a - b) ** 2 / (2 * math.pi)

    def __call__(self, q_a: Tensor, q_b: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        norms = pair_norms(q_a, q_b)
        if norms.shape != s.shape:
            norms = norms.expand_as(s)
        # (The clamped copy only divides: multiplying by the true norms keeps a zero input's
        # kernel exactly 0.)
        cos_t = torch.div(s, norms.clamp_min(torch.finfo(s.dtype).tiny)).clamp_(-1.0, 1.0)
        if tracks_grad(q_a, q_b, s):  # the same formulas, out of place
            t = arccos_flat_at_ends(cos_t)
            nngp = (norms * torch.sin(t) - t * s) * self.gap_sq + s * self.half_sum_sq
            return nngp, self.half_sum_sq - self.gap_sq * t
        t = cos_t.arccos_()
        # E[phi phi] = gap (norms sin t - t s) + half s, with norms cos t = s
        nngp = torch.sin(t).mul_(norms).addcmul_(t, s, value=-1.0).mul_(self.gap_sq).add_(s, alpha=self.half_sum_sq)
        derivative = t.mul_(-self.gap_sq).add_(self.half_sum_sq)
        return nngp, derivative

    def variance(self, q: Tensor) -> Tensor:
        """E[phi(u)^2] for u ~ N(0, q): (a^2 + b^2) / 2 q, the dual map at s = q_a = q_b (t = 0)."""
        return q * self.half_sum_sq

    def update(self, q_a: Tensor, q_b: Tensor, s: Tensor, ntk: Tensor, scratch: Tensor,
               self_pairs: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
        """The activation's kernel rule in place: s <- E[phi(u) phi(v)], ntk <- ntk E[phi'(u) phi'(v)].

        The formulas of ``__call__`` in fewer passes over the kernel, writing only into s, ntk
        and ``scratch`` (a tensor of s's shape; fresh memory costs page faults):
        s (half - gap t) + gap sqrt(q_a) sqrt(q_b) sin t. ``self_pairs`` (for a block of the
        same inputs on both sides) gives the view of the entries pairing an input with itself,
        whose cos t is 1 exactly even where ``pair_norms`` falls back to sqrt(q_a) sqrt(q_b).
        """
        if self.half_sum_sq == 0.0:  # phi = 0
            return s.zero_(), ntk.zero_()
        t = torch.div(s, pair_norms(q_a, q_b, out=scratch, divisor=True), out=scratch)
        t.clamp_(-1.0, 1.0)
        if self_pairs is not None:
            self_pairs(t).fill_(1.0)
        t.arccos_()
        # K (half - gap t) as K half (1 - gap t / half): in place, K being both factors
        for K in (ntk, s):
            K.mul_(self.half_sum_sq).addcmul_(K, t, value=-self.gap_sq / self.half_sum_sq)
        t.sin_().mul_(q_a.sqrt() * self.gap_sq)
        return s.addcmul_(t, q_b.sqrt()), ntk


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


# ----------------------------------------------------------------- activations in a row


class _Composed:
    """u -> outer(inner(u)), or its derivative outer'(inner(u)) inner'(u) (the chain rule)."""

    def __init__(self, inner: Activation, outer: Activation, derivative: bool) -> None:
        self.inner, self.outer, self.of_derivative = inner, outer, derivative

    def __call__(self, h: Tensor) -> Tensor:
        if self.of_derivative:
            return self.outer.derivative(self.inner.fn(h)) * self.inner.derivative(h)
        return self.outer.fn(self.inner.fn(h))


def _kinked(activation: Activation) -> bool:
    """A kink at a zero pre-activation: a nonlinear ReLU-family part."""
    slopes = activation.slopes
    return (slopes is not None and slopes[0] != slopes[1]) or isinstance(activation.dual, PolarDual)


def compose(inner: Activation, outer: Activation) -> Activation:
    """The activation u -> outer(inner(u)): the kernel rule of ``outer`` on ``inner``'s outputs.

    An activation phi2 right after phi1 acts on phi1(h) with h Gaussian, an elementwise function
    f = phi2 o phi1 of the same Gaussian h: its dual maps are E[f(u) f(v)] and E[f'(u) f'(v)]
    over h's Gaussian pair, with f' = phi2'(phi1(u)) phi1'(u). The composite is

      * for two ReLU-family parts (slopes (a1, b1), (a2, b2)) the ReLU-family activation with
        slopes a = a1 (b2 if a1 < 0 else a2), b = b1 (b2 if b1 > 0 else a2), in closed form
        (a part itself when the slopes are its own: Relu after Relu is Relu, Abs after Relu is
        Relu, Relu after Abs is Abs);
      * the other part when one is the identity (slopes (1, 1));
      * otherwise ``serial(inner, outer)``, with the Hermite-series dual of :class:`HermiteDual`
        when both parts are smooth, and :class:`PolarDual` when one has a kink at 0 (a ReLU-
        family part), whose Hermite series converges too slowly. Their tolerance is the
        loosest of the parts' (1e-8 by default).
    """
    if inner.slopes is not None and outer.slopes is not None:
        (a1, b1), (a2, b2) = inner.slopes, outer.slopes
        slopes = (a1 * (b2 if a1 < 0 else a2) + 0.0, b1 * (b2 if b1 > 0 else a2) + 0.0)  # + 0.0: no -0
        for part in (inner, outer):
            if part.slopes == slopes:
                return part
        return ABRelu(*slopes)
    if outer.slopes == (1.0, 1.0):
        return inner
    if inner.slopes == (1.0, 1.0):
        return outer
    fn, derivative = _Composed(inner, outer, False), _Composed(inner, outer, True)
    parts = ", ".join(part._options if part.name == "serial" else repr(part) for part in (inner, outer))
    series = [part.dual for part in (inner, outer) if isinstance(part.dual, (HermiteDual, PolarDual))]
    tolerance = max((dual.tolerance for dual in series), default=1e-8)
    if _kinked(inner) or _kinked(outer):
        dual = PolarDual(fn, derivative, tolerance, f"serial({parts})")
    else:
        max_degree = max((dual.max_degree for dual in series if isinstance(dual, HermiteDual)), default=1024)
        dual = HermiteDual(fn, derivative, max_degree, tolerance, f"serial({parts})")
    return Activation("serial", fn, derivative, dual, options=parts)


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
