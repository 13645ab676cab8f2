"""Training dynamics in function space: gradient flow in closed form and infinite ensembles.

Loss, as everywhere in the book: L = 1/(2n) sum_i |f(x_i) - y_i|^2 (for k outputs: summed over
outputs, averaged over the n points). Gradient descent theta <- theta - lr grad L with a fixed
kernel K (the NTK of a wide network, Jacot et al. 2018; Lee et al. 2019) becomes, in the limit of
small steps, the linear ODE in function space

    df/dt = -(lr/n) K (f - y),      t counted in steps (t = number of GD steps),

solved in the eigenbasis K = V diag(lam) V^T:

    train:  f_t    = f_0 + V diag(expm1(-lr t lam/n)) V^T (f_0 - y)          (-> y as t -> inf)
    test:   f_t(Z) = f_0(Z) + K_ZX V diag((1 - e^{-lr t lam/n}) / lam) V^T (y - f_0)

(1 - e^{-lr t lam/n}) / lam -> lr t / n as lam -> 0, so a singular K is fine at finite t; at
t = inf it becomes 1/lam and the test prediction is kernel regression, K_ZX K^-1 (y - f_0).

neural-tangents (``nt.predict``) normalises time by ``y_train.size = n k`` instead of n (its loss
is a mean over points *and* outputs). Its ``learning_rate=lr_nt`` and time ``t_nt`` are ours with
``lr = lr_nt / k`` and ``t = t_nt`` (identical for one output); its ``t=None`` is our ``t=inf``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import (
    as_initial,
    as_targets,
    check_finite,
    check_floating,
    check_same_placement,
    nonnegative_real,
    positive_real,
)
from .ridge import solve_kernel_system

_ONE_ROW_PER_POINT = " (as y, one row per point)"  # what the shape of f0 / f0_test means

Times = float | Sequence[float] | Tensor


class FlowPrediction(NamedTuple):
    """Predictions of :func:`gradient_flow`: ``train`` (n,)/(n, k), or (T, n)/(T, n, k) for T
    times; ``test`` likewise with m points, None without ``K_test_train``."""

    train: Tensor
    test: Tensor | None


class Gaussian(NamedTuple):
    """A Gaussian over test outputs: ``mean`` (m,)/(m, k) and ``cov`` (m, m), shared by the k
    outputs (kernel (x) I); a leading (T,) axis for T times. ``cov`` is None when not asked for."""

    mean: Tensor
    cov: Tensor | None


def gradient_flow(
    K_train: Tensor,
    y: Tensor,
    f0: Tensor | None,
    t: Times,
    lr: float,
    K_test_train: Tensor | None = None,
    f0_test: Tensor | None = None,
) -> FlowPrediction:
    """Closed-form MSE gradient flow df/dt = -(lr/n) K (f - y) at time(s) t (see the module text).

    Equals ``nt.predict.gradient_descent_mse(K_train, y, learning_rate=lr * k, diag_reg=0.)(t,
    f0, f0_test, K_test_train)`` for y of shape (n, k) (k = 1 for y of shape (n,)).

    Args:
        K_train: (n, n) symmetric PSD kernel on the training points (a multi-output network's NTK
            enters as K (x) I_k).
        y: (n,) or (n, k) targets.
        f0: outputs at t = 0 on the training points, shaped as y; None means zeros.
        t: a time >= 0 (``math.inf`` allowed) or a 1-D sequence/tensor of T times, in units of
            steps: ``t = s`` is s steps of GD with step size ``lr`` in the small-lr limit.
        lr: learning rate > 0.
        K_test_train: (m, n) kernel between test and training points, or None.
        f0_test: outputs at t = 0 on the test points, (m,) or (m, k); None means zeros.

    Returns:
        FlowPrediction(train, test), shapes (n,)/(n, k) [(T, ...) for a vector t]; test None
        without K_test_train.

    Raises:
        ValueError: non-PSD K_train (an eigenvalue below -sqrt(eps) lam_max), or a numerically
            singular K_train (lam_min <= n eps lam_max, as :func:`ntklib.solve_kernel_system`)
            when some t is infinite, negative or NaN times, lr <= 0, shape mismatches, NaN/inf.
    """
    K = _as_kernel("K_train", K_train)
    n = K.shape[0]
    y = as_targets("y", y, n, like=K, like_name="K_train")
    f0 = as_initial("f0", f0, y.shape, K, "K_train", _ONE_ROW_PER_POINT)
    lr = positive_real("lr", lr)
    times, scalar = _times(t)
    K_ZX, f0_Z = None, None
    if K_test_train is not None:
        K_ZX = _as_kernel("K_test_train", K_test_train, cols=n, like=K, like_name="K_train")
        f0_Z = as_initial("f0_test", f0_test, (K_ZX.shape[0], *y.shape[1:]), K, "K_train", _ONE_ROW_PER_POINT)
    elif f0_test is not None:
        raise ValueError("f0_test was given without K_test_train: test predictions need both")
    infinite = torch.isinf(times)
    lam, V = _spectrum("K_train", K, need_inverse=bool(infinite.any()))
    expm1, gain = _flow_factors(lam, times, lr / n)
    Y, F0 = y.reshape(n, -1), f0.reshape(n, -1)
    r = V.T @ (F0 - Y)  # (n, k): the initial residual in the eigenbasis
    train = F0 + V @ (expm1[:, :, None] * r)  # (T, n, k)
    train[infinite.to(K.device)] = Y  # the exact limit (K is invertible here)
    test = None
    if K_ZX is not None:
        test = f0_Z.reshape(K_ZX.shape[0], -1) - (K_ZX @ V) @ (gain[:, :, None] * r)  # (T, m, k)
        test = _shape_output(test, y, scalar)
    return FlowPrediction(_shape_output(train, y, scalar), test)


def gp_inference(
    K_train: Tensor, y: Tensor, K_test_train: Tensor, K_test_test: Tensor | None = None, diag_reg: float = 0.0
) -> Gaussian:
    """GP regression posterior: the exact posterior of an infinitely wide Bayesian network when K
    is its NNGP kernel (Lee et al. 2018).

        mean = K_ZX (K + diag_reg I)^-1 y,    cov = K_ZZ - K_ZX (K + diag_reg I)^-1 K_XZ

    ``diag_reg`` is absolute: neural-tangents' ``gp_inference(K, y, diag_reg=r)`` (relative by
    default) is ours with ``diag_reg = r * trace(K) / n``, or with ``diag_reg_absolute_scale=True``
    the same number. One Cholesky solve, by :func:`ntklib.solve_kernel_system`.

    Args:
        K_train: (n, n) symmetric PD kernel (PSD with diag_reg > 0).
        y: (n,) or (n, k) targets.
        K_test_train: (m, n).
        K_test_test: (m, m), or None for the mean only.
        diag_reg: >= 0, added to the diagonal of K_train.

    Returns:
        Gaussian(mean (m,)/(m, k), cov (m, m) or None).
    """
    K = _as_kernel("K_train", K_train)
    n = K.shape[0]
    y = as_targets("y", y, n, like=K, like_name="K_train")
    K_ZX = _as_kernel("K_test_train", K_test_train, cols=n, like=K, like_name="K_train")
    m = K_ZX.shape[0]
    K_ZZ = None if K_test_test is None else _as_kernel("K_test_test", K_test_test, rows=m, cols=m, like=K, like_name="K_train")
    diag_reg = nonnegative_real("diag_reg", diag_reg)
    _check_symmetric("K_train", K)
    Y = y.reshape(n, -1)
    rhs = Y if K_ZZ is None else torch.cat([Y, K_ZX.T], dim=1)  # (n, k [+ m]): one factorisation
    try:
        solution = solve_kernel_system(K, rhs, ridge=diag_reg)
    except ValueError as error:
        raise ValueError(f"K_train: {error} (ridge is gp_inference's diag_reg)") from None
    mean = (K_ZX @ solution[:, : Y.shape[1]]).reshape(m, *y.shape[1:])
    cov = None if K_ZZ is None else K_ZZ - K_ZX @ solution[:, Y.shape[1] :]
    return Gaussian(mean, cov)


def nngp_ensemble(
    nngp_train: Tensor,
    y: Tensor,
    nngp_test_train: Tensor,
    nngp_test_test: Tensor | None = None,
    t: Times = math.inf,
    lr: float = 1.0,
) -> Gaussian:
    """Infinite ensemble of infinitely wide networks of which only the readout is trained by MSE
    gradient flow from random initialisation (neural-tangents' ``gradient_descent_mse_ensemble``,
    get="nngp"); its kernel and its prior are both the NNGP Sigma. With A_t = Sigma^-1 (I -
    e^{-lr t Sigma/n}) (computed in the eigenbasis, finite for singular Sigma at finite t):

        mean = Sigma_ZX A_t y,    cov = Sigma_ZZ - Sigma_ZX A_{2t} Sigma_XZ,

    which at t = inf is :func:`gp_inference` with diag_reg = 0. Time and lr as
    :func:`gradient_flow` (neural-tangents' learning_rate = lr * k).

    Returns:
        Gaussian(mean (m,)/(m, k), cov (m, m) or None); (T, ...) leading for a vector t.
    """
    S, y, S_ZX, S_ZZ, lr, (times, scalar) = _ensemble_inputs(nngp_train, y, nngp_test_train, nngp_test_test, t, lr, "nngp")
    lam, V = _spectrum("nngp_train", S, need_inverse=bool(torch.isinf(times).any()))
    n = S.shape[0]
    S_ZX_V = S_ZX @ V  # (m, n)
    B = S_ZX_V * _flow_factors(lam, times, lr / n)[1][:, None, :]  # (T, m, n): Sigma_ZX V diag(gain)
    mean = B @ (V.T @ y.reshape(n, -1))
    cov = None
    if S_ZZ is not None:
        B2 = S_ZX_V * _flow_factors(lam, 2 * times, lr / n)[1][:, None, :]  # the same at 2t
        cov = S_ZZ - B2 @ S_ZX_V.T
        cov = cov[0] if scalar else cov
    return Gaussian(_shape_output(mean, y, scalar), cov)


def ntk_ensemble(
    ntk_train: Tensor,
    nngp_train: Tensor,
    y: Tensor,
    ntk_test_train: Tensor,
    nngp_test_train: Tensor,
    nngp_test_test: Tensor | None = None,
    t: Times = math.inf,
    lr: float = 1.0,
) -> Gaussian:
    """Outputs of an infinite ensemble of infinitely wide networks trained (all layers) by MSE
    gradient flow for time t from random initialisation: a Gaussian process (Lee et al. 2019,
    "Wide neural networks of any depth evolve as linear models"; neural-tangents'
    ``gradient_descent_mse_ensemble``, get="ntk"). With
    Theta the NTK, Sigma the NNGP and B_t = Theta_ZX Theta^-1 (I - e^{-lr t Theta/n}):

        mean = B_t y,    cov = Sigma_ZZ + B_t Sigma_XX B_t^T - (B_t Sigma_XZ + (B_t Sigma_XZ)^T).

    The mean is :func:`gradient_flow` on the test points with f0 = 0 (the ensemble's mean
    output at initialisation). Time and lr as :func:`gradient_flow` (neural-tangents'
    learning_rate = lr * k); t = inf needs an invertible NTK.

    Returns:
        Gaussian(mean (m,)/(m, k), cov (m, m) or None); (T, ...) leading for a vector t.
    """
    Theta, y, Theta_ZX, S_ZZ, lr, (times, scalar) = _ensemble_inputs(ntk_train, y, ntk_test_train, nngp_test_test, t, lr, "ntk")
    n, m = Theta.shape[0], Theta_ZX.shape[0]
    S = _as_kernel("nngp_train", nngp_train, rows=n, cols=n, like=Theta, like_name="ntk_train")
    S_ZX = _as_kernel("nngp_test_train", nngp_test_train, rows=m, cols=n, like=Theta, like_name="ntk_train")
    _check_symmetric("nngp_train", S)
    lam, V = _spectrum("ntk_train", Theta, need_inverse=bool(torch.isinf(times).any()))
    B = ((Theta_ZX @ V) * _flow_factors(lam, times, lr / n)[1][:, None, :]) @ V.T  # (T, m, n)
    mean = B @ y.reshape(n, -1)
    cov = None
    if S_ZZ is not None:
        cross = B @ S_ZX.T  # (T, m, m): B_t Sigma_XZ
        cov = S_ZZ + B @ S @ B.transpose(1, 2) - cross - cross.transpose(1, 2)
        cov = cov[0] if scalar else cov
    return Gaussian(_shape_output(mean, y, scalar), cov)


# ---------------------------------------------------------------------------------------------
# Helpers.


def _as_kernel(
    name: str, K: object, rows: int | None = None, cols: int | None = None, like: Tensor | None = None, like_name: str = ""
) -> Tensor:
    """A finite floating-point kernel matrix; square when rows and cols are both None."""
    if not isinstance(K, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (a kernel matrix); got {type(K).__name__}")
    if K.ndim != 2:
        hint = " (for per-output blocks (n, n, k, k) pass one (n, n) kernel, e.g. K.diagonal(dim1=2, dim2=3).mean(-1))"
        raise ValueError(f"{name} must be a 2-D kernel matrix; got shape {tuple(K.shape)}{hint if K.ndim == 4 else ''}")
    if K.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(K.shape)}")
    check_floating(name, K)
    if like is not None:
        check_same_placement((like_name, name), like, K)
    if rows is None and cols is None and K.shape[0] != K.shape[1]:
        raise ValueError(f"{name} must be square (n, n); got shape {tuple(K.shape)}")
    if rows is not None and cols is not None and tuple(K.shape) != (rows, cols):
        raise ValueError(f"{name} must have shape ({rows}, {cols}); got {tuple(K.shape)}")
    if cols is not None and K.shape[1] != cols:
        raise ValueError(f"{name} must have n={cols} columns (one per training point); got shape {tuple(K.shape)}")
    check_finite(name, K)
    return K


def _check_symmetric(name: str, K: Tensor) -> None:
    """Rounding (arccos near 1 in the infinite-width kernels) can break symmetry by ~sqrt(eps)."""
    scale = float(K.abs().max())
    gap = float((K - K.T).abs().max())
    if gap > 10 * math.sqrt(torch.finfo(K.dtype).eps) * scale:
        raise ValueError(f"{name} is not symmetric (max |K - K^T| = {gap:.3g}, max |K| = {scale:.3g}): it must be a kernel matrix k(X, X)")


def _spectrum(name: str, K: Tensor, need_inverse: bool) -> tuple[Tensor, Tensor]:
    """Eigenvalues (clamped at 0) and eigenvectors of a symmetric PSD K, after the checks."""
    _check_symmetric(name, K)
    lam, V = torch.linalg.eigh((K + K.T) / 2)
    eps, n = torch.finfo(K.dtype).eps, K.shape[0]
    top, lam_min = float(lam.abs().max()), float(lam[0])
    if lam_min < -math.sqrt(eps) * top:
        raise ValueError(
            f"{name} is not positive semi-definite: smallest eigenvalue {lam_min:.3g} (largest |eigenvalue| "
            f"{top:.3g}); gradient flow needs a kernel matrix, which is PSD"
        )
    if need_inverse and lam_min <= n * eps * top:
        cond = top / lam_min if lam_min > 0 else math.inf
        raise ValueError(
            f"{name} is numerically singular (condition number {cond:.1e}): the t = inf limit needs its inverse and "
            f"would be meaningless; use a finite t, or {name} + ridge*I with ridge > 0"
        )
    return lam.clamp_min(0.0), V


def _times(t: object) -> tuple[Tensor, bool]:
    """(T,) float64 CPU times and whether t was a scalar."""
    if isinstance(t, bool):
        raise TypeError(f"t must be a number or a 1-D sequence of times; got {t!r}")
    try:
        times = t.detach().to("cpu", torch.float64) if isinstance(t, Tensor) else torch.as_tensor(t, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"t must be a number or a 1-D sequence of times; got {type(t).__name__}") from None
    if times.ndim > 1 or times.numel() == 0:
        raise ValueError(f"t must be a number or a non-empty 1-D sequence of times; got shape {tuple(times.shape)}")
    if bool(times.isnan().any()):
        raise ValueError("t contains NaN; times must be >= 0 (math.inf allowed)")
    if bool((times < 0).any()):
        raise ValueError(f"times must be >= 0; got t = {float(times.min()):g}")
    return times.reshape(-1), times.ndim == 0


def _flow_factors(lam: Tensor, times: Tensor, rate: float) -> tuple[Tensor, Tensor]:
    """expm1(-s lam) and (1 - e^{-s lam}) / lam with s = rate * t, each (T, n); the latter is
    s phi(s lam), phi(x) = -expm1(-x)/x -> 1 at x = 0, and 1/lam at t = inf."""
    s = (times * rate).to(dtype=lam.dtype, device=lam.device)[:, None]  # (T, 1)
    x = s * lam  # (T, n); at t = inf lam > 0 (checked), so no inf * 0
    expm1 = torch.expm1(-x)
    phi = torch.where(x > 0, -expm1 / x, torch.ones_like(x))
    gain = torch.where(torch.isinf(s), 1.0 / lam, s * phi)
    return expm1, gain


def _shape_output(out: Tensor, y: Tensor, scalar: bool) -> Tensor:
    """(T, p, k) -> (T, p) + y.shape[1:], without T for a scalar t."""
    out = out.reshape(out.shape[0], out.shape[1], *y.shape[1:])
    return out[0] if scalar else out


def _ensemble_inputs(K_train, y, K_test_train, K_test_test, t, lr, kind):
    K = _as_kernel(f"{kind}_train", K_train)
    n = K.shape[0]
    y = as_targets("y", y, n, like=K, like_name=f"{kind}_train")
    K_ZX = _as_kernel(f"{kind}_test_train", K_test_train, cols=n, like=K, like_name=f"{kind}_train")
    m = K_ZX.shape[0]
    K_ZZ = None if K_test_test is None else _as_kernel("nngp_test_test", K_test_test, rows=m, cols=m, like=K, like_name=f"{kind}_train")
    return K, y, K_ZX, K_ZZ, positive_real("lr", lr), _times(t)
