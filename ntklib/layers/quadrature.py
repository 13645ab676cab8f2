"""Dual maps by quadrature, for activations without a closed form.

:class:`HermiteDual` sums the Hermite series of any smooth elementwise function
(:func:`~ntklib.layers.activations.Elementwise`); :class:`PolarDual` integrates in polar
coordinates a function whose only kink is at a zero pre-activation (an activation composed with
a ReLU-family one, :func:`~ntklib.layers.activations.compose`). Both take (q_a, q_b, s) and
return (E[f(u) f(v)], E[f'(u) f'(v)]) like the closed forms in
:mod:`ntklib.layers.activations`.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .base import LayerError
from .state import pair_norms, tracks_grad


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
        """Hermite coefficients (M, K + 1) at the variances q (M,), K chosen by the tolerance, in q's dtype.

        The quadrature runs in float64 (where the device has it): the tails it compares with the
        tolerance (1e-8 by default) are below float32's resolution."""
        nodes, products = hermite_rule(self.max_degree, self.max_degree + 64)
        work = torch.float64 if q.device.type != "mps" else q.dtype
        x = torch.as_tensor(nodes, dtype=work, device=q.device)
        values = fn(q.to(work).clamp_min(0).sqrt()[:, None] * x)  # (M, N)
        coefficients = values @ torch.as_tensor(products, dtype=work, device=q.device)  # (M, K_max + 1)
        moments = (values * values) @ torch.as_tensor(products[:, 0], dtype=work, device=q.device)
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
        return coefficients[:, : int(good[0]) + 1].to(q.dtype)

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
        rho = torch.div(s, pair_norms(q_a, q_b, divisor=True)).clamp_(-1.0, 1.0)
        return (self._series(q_a, q_b, rho, self.fn, "phi"),
                self._series(q_a, q_b, rho, self.derivative, "phi'"))  # fmt: skip



@functools.lru_cache(maxsize=8)
def radial_rule(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss nodes and weights for the weight r exp(-r^2 / 2) on [0, inf) (total mass 1), the
    radial part of a 2-D standard normal in polar coordinates.

    The three-term recurrence comes from the Lanczos process, with full reorthogonalisation, on
    a fine discretisation of the weight (600 Gauss-Legendre points on [0, 40], beyond which
    the weight is below e^-800; 2000 points change the nodes by 1e-13 at most); nodes and
    weights from its Jacobi matrix (Golub & Welsch 1969).
    """
    z, lam = np.polynomial.legendre.leggauss(600)
    r = (z + 1.0) * 20.0
    basis = np.zeros((nodes + 1, r.size))
    basis[0] = np.sqrt(lam * 20.0 * r * np.exp(-0.5 * r * r))
    basis[0] /= np.linalg.norm(basis[0])
    alpha, beta = np.zeros(nodes), np.zeros(nodes)
    for k in range(nodes):
        v = r * basis[k]
        alpha[k] = basis[k] @ v
        for _ in range(2):
            v -= basis[: k + 1].T @ (basis[: k + 1] @ v)
        beta[k] = np.linalg.norm(v)
        basis[k + 1] = v / beta[k]
    x, vectors = np.linalg.eigh(np.diag(alpha) + np.diag(beta[:-1], 1) + np.diag(beta[:-1], -1))
    return x, vectors[0] ** 2


class PolarDual:
    """Dual maps of an elementwise f that is smooth except where its pre-activation is 0 (an
    activation after a ReLU-family one, or a ReLU-family one after erf), by quadrature in
    polar coordinates.

    With x, y independent standard normals, u = sqrt(q_a) x and v = sqrt(q_b) (x cos t +
    y sin t), cos t = s / sqrt(q_a q_b), are the Gaussian pair; with x = r cos(theta),
    y = r sin(theta),

      E[f(u) f(v)] = 1/(2 pi) int_0^{2 pi} int_0^inf f(sqrt(q_a) r cos theta)
                     f(sqrt(q_b) r cos(theta - t)) r exp(-r^2/2) dr dtheta.

    The kinks u = 0 and v = 0 are the rays theta = pi/2, 3 pi/2, t + pi/2, t + 3 pi/2. On each
    arc between them the integrand is smooth, so Gauss-Legendre in theta per arc and the rule of
    :func:`radial_rule` in r converge exponentially, where a Hermite series (or a 2-D
    Gauss-Hermite rule) across the kink converges only algebraically. The same for f'. Each
    entry is computed with n = 16 and 32 nodes per axis (4 n^2 points); their difference
    estimates the error, and entries where it exceeds ``tolerance`` times the largest E|f(u) f(v)| (or
    E|f'(u) f'(v)|) of the call are recomputed with 64, then 128 nodes. If that is not enough
    (a saturating function at a very large variance, or a kink away from 0, as Relu after sin)
    it raises. About 5000 evaluations of f and f' per kernel entry: far slower than a closed
    form, which is why ReLU-family pairs compose in closed form instead.
    """

    levels = (16, 32, 64, 128)
    points_per_pass = 1 << 20

    def __init__(self, fn: Callable[[Tensor], Tensor], derivative: Callable[[Tensor], Tensor], tolerance: float,
                 name: str) -> None:  # fmt: skip
        self.fn, self.derivative, self.tolerance, self.name = fn, derivative, tolerance, name

    def _integrate(self, root_a: Tensor, root_b: Tensor, t: Tensor, nodes: int) -> Tensor:
        """(4, E): E[f(u) f(v)], E[f'(u) f'(v)] and the same of the absolute values, for the
        entries (E,) with standard deviations root_a, root_b and angle t."""
        x, w = np.polynomial.legendre.leggauss(nodes)
        r, r_w = radial_rule(nodes)
        x, w, r, r_w = (torch.as_tensor(a, dtype=t.dtype, device=t.device) for a in (x, w, r, r_w))
        entries = max(1, self.points_per_pass // (4 * nodes * nodes))
        out = []
        for start in range(0, t.numel(), entries):
            part = slice(start, start + entries)
            angle = t[part]
            rays = [torch.full_like(angle, math.pi / 2), torch.full_like(angle, 1.5 * math.pi), angle + math.pi / 2,
                    (angle + 1.5 * math.pi).remainder(2 * math.pi)]  # fmt: skip
            lo = torch.stack(rays, 1).sort(1).values  # (e, 4): the arcs [lo, hi] between the rays
            hi = torch.cat([lo[:, 1:], lo[:, :1] + 2 * math.pi], 1)
            theta = ((lo + hi) / 2)[..., None] + ((hi - lo) / 2)[..., None] * x  # (e, 4, n)
            weights = (((hi - lo) / (4 * math.pi))[..., None] * w)[..., None] * r_w  # (e, 4, n, n)
            u = (root_a[part, None, None] * torch.cos(theta))[..., None] * r  # (e, 4, n, n)
            v = (root_b[part, None, None] * torch.cos(theta - angle[:, None, None]))[..., None] * r
            values = self.fn(u) * self.fn(v)
            slopes = self.derivative(u) * self.derivative(v)
            signed = [(weights * term).sum((1, 2, 3)) for term in (values, slopes)]
            absolute = [(weights * term.abs_()).sum((1, 2, 3)) for term in (values, slopes)]
            out.append(torch.stack(signed + absolute))
        return torch.cat(out, 1)

    def __call__(self, q_a: Tensor, q_b: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        if tracks_grad(q_a, q_b, s):
            raise LayerError(f"{self.name}: the kernels of this composite activation are not differentiable in W_std "
                             "and b_std (they come from a quadrature); use numbers for W_std and b_std")  # fmt: skip
        shape = torch.broadcast_shapes(q_a.shape, q_b.shape, s.shape)
        flat = lambda tensor: tensor.expand(shape).reshape(-1)  # noqa: E731
        norms = flat(pair_norms(q_a, q_b, divisor=True))  # cos t = 1 exactly for an input with itself
        t = torch.arccos((flat(s) / norms).clamp_(-1.0, 1.0))
        root_a, root_b = flat(q_a.clamp_min(0).sqrt()), flat(q_b.clamp_min(0).sqrt())
        coarse = self._integrate(root_a, root_b, t, self.levels[0])
        fine = self._integrate(root_a, root_b, t, self.levels[1])
        tolerance = max(self.tolerance, 1e3 * torch.finfo(s.dtype).eps)
        allowed = tolerance * fine[2:].max(1, keepdim=True).values  # (2, 1)
        for nodes in (*self.levels[2:], None):
            error = (fine[:2] - coarse[:2]).abs()
            bad = (error > allowed).any(0).nonzero().flatten()
            if bad.numel() == 0:
                break
            if nodes is None:
                worst = float((error / allowed.clamp_min(torch.finfo(s.dtype).tiny)).max()) * tolerance
                raise LayerError(
                    f"{self.name}: the quadrature of its dual maps with {self.levels[-1]} nodes per axis leaves a "
                    f"relative error of about {worst:.1e} (> {tolerance:g}) at pre-activation variances up to "
                    f"{float(torch.maximum(q_a.max(), q_b.max())):.3g}: a saturating function at a large variance (lower "
                    "W_std or rescale the inputs), or a kink away from a zero pre-activation (such as Relu after "
                    "sin: put a Dense layer in between)"
                )
            coarse[:, bad] = fine[:, bad]
            fine[:, bad] = self._integrate(root_a[bad], root_b[bad], t[bad], nodes)
        return fine[0].reshape(shape), fine[1].reshape(shape)
