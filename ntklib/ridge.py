"""Kernel ridge regression: alpha = (K + lambda I)^-1 y, f(z) = k(z, X) alpha."""

from __future__ import annotations

import functools
import math
import os
from typing import Callable

import torch
from torch import Tensor

from ._checks import (
    as_matrix,
    as_square,
    as_square_unscanned,
    as_targets,
    check_finite,
    check_same_placement,
    nonnegative_real,
    positive_int,
    positive_real,
)
from .kernels import gaussian_kernel

Kernel = Callable[[Tensor, Tensor], Tensor]
SOLVERS = ("cholesky", "pcg")
DEFAULT_TOL = {torch.float64: 1e-8, torch.float32: 1e-5}  # relative residual; see solve_kernel_system
DEFAULT_RANK = 500  # Nystrom landmarks of the PCG preconditioner
FALLBACKS = ("float64", "jitter", "eigh")  # what the Cholesky path may do when it fails; None raises
JITTER_LIMIT = 0.1  # "jitter" gives up beyond this fraction of K's mean diagonal


def solve_kernel_system(
    K: Tensor | str | os.PathLike,
    y: Tensor,
    ridge: float = 0.0,
    *,
    solver: str = "cholesky",
    tol: float | None = None,
    max_iter: int = 300,
    rank: int = DEFAULT_RANK,
    seed: int = 0,
    fallback: str | None = None,
    return_info: bool = False,
):
    """Solve (K + ridge I) alpha = y, by Cholesky factorisation or by preconditioned conjugate gradients.

    ``solver="cholesky"`` (K in memory, O(n^3)): raises a ValueError when K + ridge I is not
    numerically positive definite (a non-PSD K, or a singular one with ridge = 0), rather than
    returning a meaningless alpha. The test is the Cholesky pivots: (min_i L_ii / max_i L_ii)^2
    bounds 1 / cond(K + ridge I) from above, and below n * eps the solution would carry no correct
    digits. The checks ride on the factorisation: the ridge is added to the diagonal of the one copy
    that is factorised, NaN or inf in K's upper triangle (the one read) make it fail, and only then
    is K scanned to name them; one sum over K catches them in the lower triangle. At its peak the
    solve holds K and one n x n copy (the factor).

    The condition number reported in ``SolveInfo.condition`` costs no extra pass over K: with
    A = K + ridge I and d_i = L_ii^2 (the pivots),

        max(max_i A_ii, 1^T A 1 / n) / min_i d_i  <=  lambda_max(A) / lambda_min(A) = cond(A),

    since A_ii and 1^T A 1 / n are Rayleigh quotients (<= lambda_max) and every pivot
    d_i = 1 / [(A_1:i,1:i)^-1]_ii >= lambda_min(A). It is an estimate from below, measured in
    the tests within a factor of 10 of the true condition number on NTK and Gaussian kernels of
    400 points in 5 dimensions, 75 on a Gaussian kernel in 2 dimensions, a few hundred on
    matrices with random eigenvectors. The singularity test above uses the
    pivot ratio alone (a weaker lower bound), so it raises only when even that one is too large.

    When the factorisation fails (typically in float32, whose rounding makes a kernel matrix of a
    few thousand points indefinite or singular; Lee et al. 2020 report kernel regression breaking
    down this way), the error says the dtype and the estimated condition number, and
    ``fallback=`` chooses what to do instead (each reported in the returned ``SolveInfo``):

    - ``"float64"``: factorise K and y cast to float64 (the fix Lee et al. 2020 use) and return
      alpha in K's dtype. It solves the float32 K exactly; a kernel computed in float64 in the
      first place is better still, since its entries carry no float32 rounding.
    - ``"jitter"``: add a diagonal jitter eps * mean(diag K) * 10^k, k = 0, 1, ..., the first one
      whose factorisation passes the tests above, up to ``JITTER_LIMIT`` (0.1) times the mean
      diagonal (beyond that K is taken to be not PSD and a ValueError is raised). The amount is
      ``SolveInfo.jitter``: alpha solves (K + (ridge + jitter) I) alpha = y.
    - ``"eigh"``: the pseudo-inverse by eigendecomposition A = V diag(lambda) V^T: eigenvalues
      below n * eps * lambda_max (the directions the pivot test calls unresolved) are dropped,
      their number is ``SolveInfo.clipped``, and alpha = V_kept diag(1 / lambda_kept) V_kept^T y,
      the minimum-norm least-squares solution on the resolved directions. A ValueError is raised
      when an eigenvalue is below -n * eps * lambda_max (K is not PSD beyond rounding).

    ``SolveInfo.residual`` is always that of the system asked for, (K + ridge I) alpha = y.

    ``solver="pcg"``: conjugate gradients with a Nystrom preconditioner of
    ``rank`` landmarks drawn with ``seed``, touching K only through products with it, so K can be
    an ``.npy`` file (from :func:`ntklib.kernel_matrix` with ``out=``) streamed in row bands, never
    all in memory. It stops when ``|y - (K + ridge I) alpha| <= tol |y|`` for every column of y, or
    after ``max_iter`` iterations with a RuntimeWarning. Needs ridge > 0.

    Args:
        K: (n, n) symmetric kernel matrix; for "pcg" also the path of an (n, n) ``.npy`` file.
        y: (n,) or (n, k) targets, K's dtype (on K's device; on any device for a file).
        ridge: lambda >= 0 (> 0 for "pcg").
        solver: "cholesky" or "pcg".
        tol: "pcg": relative residual to reach (default 1e-8 for float64 K; 1e-5 for float32,
            whose entries' own rounding limits alpha's accuracy to about that). Products with K
            are summed in float64 whatever its dtype, so any tolerance can be reached.
        max_iter: "pcg": iteration cap (each iteration is one product with K).
        rank: "pcg": Nystrom landmarks M; the preconditioner keeps n x M float64 (about three
            times that while it is built) and costs M rows of K and an n x M SVD.
        seed: "pcg": seeds the draw of the landmarks.
        fallback: "cholesky": None (raise), "float64", "jitter" or "eigh"; used only when the
            factorisation fails.
        return_info: also return a :class:`ntklib.SolveInfo` (iterations, final residual,
            condition number estimate, the fallback used).

    Returns:
        The dual coefficients alpha, the same shape as y; ``(alpha, info)`` with ``return_info``.

    References:
        Lee, Schoenholz, Pennington, Adlam, Xiao, Novak and Sohl-Dickstein (2020), "Finite Versus
        Infinite Neural Networks: an Empirical Study", NeurIPS.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of: {', '.join(SOLVERS)}")
    ridge = nonnegative_real("ridge", ridge)
    _check_fallback(fallback, solver)
    if solver == "cholesky":
        if isinstance(K, (str, os.PathLike)):
            raise TypeError("solver='cholesky' needs K in memory as a tensor; for a matrix in a file use solver='pcg'")
        alpha, info = _cholesky(K, y, ridge, return_info, fallback)
    else:
        from .pcg import DenseOperator, NpyOperator

        if isinstance(K, (str, os.PathLike)):
            operator = NpyOperator(K)
            y = _targets_for(y, operator)
        else:
            K = as_square("K", K)
            y = as_targets("y", y, K.shape[0], like=K, like_name="K")
            operator = DenseOperator(K)
        alpha, info = _pcg(operator, y, ridge, tol, max_iter, rank, seed)
    return (alpha, info) if return_info else alpha


def _check_fallback(fallback: object, solver: str) -> None:
    if fallback is not None and fallback not in FALLBACKS:
        raise ValueError(f"unknown fallback {fallback!r}; expected None (raise) or one of: {', '.join(FALLBACKS)}")
    if fallback is not None and solver != "cholesky":
        raise ValueError(f"fallback={fallback!r} goes with solver='cholesky' (PCG needs ridge > 0, never factorises)")


def _factorise(K: Tensor, shift: float) -> Tensor | None:
    """The Cholesky factor L of K + shift I, or None when the factorisation fails; NaN/inf in the
    triangle it reads make it fail, and are then named.

    The one n x n copy is column-major: LAPACK factorises that in place, while a row-major copy
    would be copied once more inside ``cholesky_ex`` (3 n^2 numbers at the peak instead of 2).
    For a symmetric K the column-major copy of K^T has K's own bytes, so it is one plain copy;
    the triangle read is K's upper one."""
    n = K.shape[0]
    A = torch.empty_strided((n, n), (1, n), dtype=K.dtype, device=K.device).copy_(K.T)
    A.diagonal().add_(shift)
    L, info = torch.linalg.cholesky_ex(A, out=(A, torch.empty((), dtype=torch.int32, device=K.device)))
    if int(info) != 0 or not bool(torch.isfinite(L.diagonal()).all()):
        check_finite("K", K)
        return None
    return L


def _cholesky_solve(L: Tensor, rhs: Tensor) -> Tensor:
    """(L L^T)^-1 rhs by two triangular solves, which read the column-major L where it is
    (torch.cholesky_solve would first copy it)."""
    z = torch.linalg.solve_triangular(L, rhs, upper=False)
    return torch.linalg.solve_triangular(L.T, z, upper=True)


def _condition(K: Tensor, L: Tensor, shift: float, total: float) -> tuple[float, float]:
    """(pivot ratio, condition estimate) of A = K + shift I, both lower bounds on cond(A): see
    solve_kernel_system. ``total`` is the sum of K's entries (inf when it overflowed)."""
    pivots = L.diagonal().square()  # d_i
    smallest = float(pivots.min())
    ratio = float(pivots.max()) / smallest
    top = float(K.diagonal().max()) + shift  # max_i A_ii
    if math.isfinite(total):
        top = max(top, total / K.shape[0] + shift)  # 1^T A 1 / n
    return ratio, max(ratio, top / smallest)


def _failure_message(K: Tensor, ridge: float, what: str) -> str:
    """What went wrong, in which dtype, and the fallbacks that solve_kernel_system offers."""
    offers = [("'jitter' (the smallest diagonal jitter eps*mean(diag K)*10^k that factorises; the amount is "
               "reported in SolveInfo.jitter)"),
              ("'eigh' (eigendecomposition, dropping eigenvalues below n*eps*max; their number is reported in "
               "SolveInfo.clipped)")]  # fmt: skip
    if K.dtype != torch.float64:
        offers.insert(0, "'float64' (solve in float64, as Lee et al. 2020 do)")
    return (f"K + ridge*I {what} in {K.dtype} (n={K.shape[0]}, ridge={ridge:g}): the solution would be meaningless. "
            "Use ridge > 0, compute the kernel in float64, or pass fallback= " + "; ".join(offers))  # fmt: skip


def _cholesky(K: Tensor, y: Tensor, ridge: float, want_info: bool, fallback: str | None = None):
    from .pcg import SolveInfo

    K = as_square_unscanned("K", K)
    y = as_targets("y", y, K.shape[0], like=K, like_name="K")
    n, eps = K.shape[0], torch.finfo(K.dtype).eps
    rhs = y[:, None] if y.ndim == 1 else y  # (n, k)
    L = _factorise(K, ridge)
    if L is None:
        what = (f"is not positive definite (Cholesky failed; its condition number is beyond the "
                f"1/(n*eps) = {1 / (n * eps):.1e} that {K.dtype} resolves, or K is not PSD)")  # fmt: skip
    else:
        total = float(K.sum())
        if not math.isfinite(total):  # the lower triangle, which the factorisation does not read
            check_finite("K", K)
        ratio, condition = _condition(K, L, ridge, total)
        what = None
        if ratio >= 1 / (n * eps):
            what = (f"is numerically singular (estimated condition number {condition:.1e} >= 1/(n*eps) = "
                    f"{1 / (n * eps):.1e})")  # fmt: skip
    used, jitter, clipped = None, 0.0, 0
    if what is None:
        alpha = _cholesky_solve(L, rhs)
    elif fallback is None:
        raise ValueError(_failure_message(K, ridge, what))
    elif fallback == "float64":
        if K.dtype == torch.float64:
            raise ValueError(_failure_message(K, ridge, what))
        try:
            alpha64, info64 = _cholesky(K.double(), rhs.double(), ridge, True)
        except ValueError as error:
            raise ValueError(f"fallback='float64' failed too: {error}. The float32 rounding of K is itself the "
                             "problem: a kernel computed in float64 from the start avoids it") from None  # fmt: skip
        alpha, condition, used = alpha64.to(K.dtype), info64.condition, "float64"
    elif fallback == "jitter":
        alpha, condition, jitter = _jitter(K, rhs, ridge, total if L is not None else float(K.sum()))
        used = "jitter"
    else:
        alpha, condition, clipped = _eigh(K, rhs, ridge)
        used = "eigh"
    info = None
    if want_info:
        work = torch.float64 if used == "float64" else K.dtype
        A, a, b = K.to(work), alpha.to(work), rhs.to(work)
        R = (b - A @ a - ridge * a).norm(dim=0)  # (k,): the residual of the system asked for
        relative = float((R / b.norm(dim=0).clamp_min(torch.finfo(work).tiny)).max())
        info = SolveInfo("cholesky", 0, relative, True, condition=condition, fallback=used, jitter=jitter,
                         clipped=clipped)  # fmt: skip
    alpha = alpha[:, 0] if y.ndim == 1 else alpha
    return alpha, info


def _jitter(K: Tensor, rhs: Tensor, ridge: float, total: float) -> tuple[Tensor, float, float]:
    """fallback="jitter": (alpha, condition estimate, jitter) for the first jitter that works."""
    n, eps = K.shape[0], torch.finfo(K.dtype).eps
    scale = float(K.diagonal().mean())
    if not scale > 0:
        raise ValueError(f"K's mean diagonal is {scale:g} <= 0: K is not PSD, and a jitter has no scale to start from")
    jitter = eps * scale
    while jitter <= JITTER_LIMIT * scale:
        L = _factorise(K, ridge + jitter)
        if L is not None:
            ratio, condition = _condition(K, L, ridge + jitter, total)
            if ratio < 1 / (n * eps):
                return _cholesky_solve(L, rhs), condition, jitter
        jitter *= 10
    raise ValueError(
        f"K + ridge*I does not factorise in {K.dtype} even with a jitter of {jitter / 10:.1e} "
        f"({JITTER_LIMIT:g} of K's mean diagonal, ridge={ridge:g}): K is not positive semi-definite; check the kernel"
    )


def _eigh(K: Tensor, rhs: Tensor, ridge: float) -> tuple[Tensor, float, int]:
    """fallback="eigh": (alpha, condition number, eigenvalues dropped); see solve_kernel_system."""
    n, eps = K.shape[0], torch.finfo(K.dtype).eps
    A = K.clone()
    A.diagonal().add_(ridge)
    eigenvalues, V = torch.linalg.eigh(A)  # ascending; reads the lower triangle
    del A
    largest = float(eigenvalues[-1])
    threshold = n * eps * max(largest, 0.0)
    if not largest > 0 or float(eigenvalues[0]) < -threshold:
        raise ValueError(
            f"K + ridge*I is not positive semi-definite in {K.dtype}: its smallest eigenvalue is "
            f"{float(eigenvalues[0]):.3e} against the largest {largest:.3e} (ridge={ridge:g}); check the kernel"
        )
    keep = eigenvalues > threshold  # (n,)
    V = V[:, keep]  # (n, r)
    alpha = V @ ((V.T @ rhs) / eigenvalues[keep, None])  # (n, k)
    smallest = float(eigenvalues[0])
    condition = largest / smallest if smallest > 0 else math.inf
    return alpha, condition, int(n - int(keep.sum()))


def _targets_for(y: object, operator) -> Tensor:
    """y for a K in a file: any device, the file's dtype."""
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor of shape (n,) or (n, k); got {type(y).__name__}")
    probe = torch.empty(0, dtype=operator.dtype, device=y.device)
    return as_targets("y", y, operator.n, like=probe, like_name=f"K (in {operator.path.name})")


def _pcg(operator, y: Tensor, ridge: float, tol, max_iter, rank, seed):
    from .pcg import NystromPreconditioner, conjugate_gradients

    if ridge <= 0:
        raise ValueError("solver='pcg' needs ridge > 0: the preconditioner and CG's convergence rest on it")
    tol = DEFAULT_TOL.get(operator.dtype, 1e-3) if tol is None else positive_real("tol", tol)
    max_iter, rank = positive_int("max_iter", max_iter), positive_int("rank", rank)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer; got {seed!r}")
    generator = torch.Generator().manual_seed(seed)
    eps = torch.finfo(operator.dtype).eps

    def rows(index: Tensor) -> Tensor:
        values = operator.rows(index.to(operator.device)).to(y.device)
        check_finite(f"K's rows {index.tolist()[:3]}...", values)
        return values

    def matmul(V: Tensor) -> Tensor:
        out = operator.matmul(V.to(operator.device)).to(y.device)
        if not bool(torch.isfinite(out).all()):
            bad = torch.nonzero(~torch.isfinite(out).all(1))[:, 0]
            raise ValueError(f"K contains NaN or infinite values (rows {bad[:5].tolist()} of its products)")
        return out

    precondition = NystromPreconditioner(rows, operator.n, rank, ridge, generator, y.device, eps)
    alpha, info = conjugate_gradients(matmul, y, ridge, precondition, tol, max_iter)
    return alpha, info._replace(condition=(float(precondition.eigenvalues[0]) + ridge) / ridge)


class KernelRidge:
    r"""Kernel ridge regression with any kernel function ``(X, Z) -> K``.

    Minimises ``sum_i (f(x_i) - y_i)^2 + ridge |f|_H^2`` over the kernel's RKHS; the minimiser is
    f(z) = k(z, X) alpha with alpha = (K + ridge I)^-1 y (the representer theorem).

    Example:
        >>> model = KernelRidge(functools.partial(gaussian_kernel, sigma=0.5), ridge=1e-3)
        >>> model.fit(X, y).predict(Z)

    ``solver="pcg"`` never forms K in memory (see :func:`solve_kernel_system`): with
    ``store=None`` every product with K recomputes it tile by tile (``tile`` inputs per side);
    with ``store=`` a directory, K is first computed there by :func:`ntklib.kernel_matrix`
    (resumable; on Dask with ``client=``) and streamed from disk. ``predict`` then computes
    k(Z, X) alpha a tile at a time. ``fallback=`` (Cholesky only: "float64", "jitter" or "eigh")
    says what to do when the factorisation fails, as in :func:`solve_kernel_system`.

    Attributes (after ``fit``):
        X_fit\_: (n, d) training inputs.
        dual_coef\_: alpha, (n,) or (n, k).
        solve_info\_: a :class:`ntklib.SolveInfo`: iterations, residual, condition, fallback.
    """

    def __init__(self, kernel: Kernel = gaussian_kernel, ridge: float = 1.0, *, solver: str = "cholesky",
                 tol: float | None = None, max_iter: int = 300, rank: int = DEFAULT_RANK, tile: int | None = None,
                 store: str | os.PathLike | None = None, client=None, seed: int = 0,
                 fallback: str | None = None) -> None:  # fmt: skip
        if not callable(kernel):
            raise TypeError(f"kernel must be a function (X, Z) -> K; got {type(kernel).__name__}")
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; expected one of: {', '.join(SOLVERS)}")
        if solver == "cholesky" and (store is not None or client is not None):
            raise ValueError("store= and client= go with solver='pcg' (the Cholesky solver needs K in memory)")
        _check_fallback(fallback, solver)
        from .tiled import DEFAULT_TILE

        self.kernel = kernel
        self.ridge = nonnegative_real("ridge", ridge)
        if solver == "pcg":
            if self.ridge <= 0:
                raise ValueError("solver='pcg' needs ridge > 0: the preconditioner and CG's convergence rest on it")
            tol = None if tol is None else positive_real("tol", tol)
            max_iter, rank = positive_int("max_iter", max_iter), positive_int("rank", rank)
        self.solver, self.tol, self.max_iter, self.rank, self.seed = solver, tol, max_iter, rank, seed
        self.tile = DEFAULT_TILE if tile is None else positive_int("tile", tile)
        self.store, self.client, self.fallback = store, client, fallback

    def fit(self, X: Tensor, y: Tensor) -> "KernelRidge":
        X = as_matrix("X", X)
        y = as_targets("y", y, X.shape[0], like=X)
        if self.solver == "cholesky":
            K = self.kernel(X, X)
            self.dual_coef_, self.solve_info_ = solve_kernel_system(K, y, self.ridge, fallback=self.fallback,
                                                                    return_info=True)  # fmt: skip
        else:
            from .pcg import NpyOperator
            from .tiled import TileOperator, kernel_matrix

            if self.store is None:
                operator = TileOperator(self.kernel, X, tile=self.tile)
            else:
                kernel_matrix(self.kernel, X, tile=self.tile, out=self.store, client=self.client)
                operator = NpyOperator(os.path.join(self.store, "kernel.npy"))
            self.dual_coef_, self.solve_info_ = _pcg(operator, y, self.ridge, self.tol, self.max_iter, self.rank,
                                                     self.seed)  # fmt: skip
        self.X_fit_ = X
        return self

    def predict(self, Z: Tensor) -> Tensor:
        """f(Z) = k(Z, X) alpha: (m,) or (m, k)."""
        if not hasattr(self, "dual_coef_"):
            raise RuntimeError("this KernelRidge is not fitted yet; call fit(X, y) first")
        Z = as_matrix("Z", Z)
        check_same_placement(("X (fit)", "Z"), self.X_fit_, Z)
        if Z.shape[1] != self.X_fit_.shape[1]:
            raise ValueError(f"Z has d={Z.shape[1]} features but the model was fitted on d={self.X_fit_.shape[1]}")
        if self.solver == "cholesky":
            return self.kernel(Z, self.X_fit_) @ self.dual_coef_
        from .tiled import TileOperator

        alpha = self.dual_coef_
        out = TileOperator(self.kernel, self.X_fit_, tile=self.tile).products(Z, alpha.reshape(alpha.shape[0], -1))
        return out.reshape(Z.shape[0], *alpha.shape[1:])

    def __repr__(self) -> str:
        solver = "" if self.solver == "cholesky" else f", solver={self.solver!r}"
        fallback = "" if self.fallback is None else f", fallback={self.fallback!r}"
        return f"KernelRidge(kernel={_describe(self.kernel)}, ridge={self.ridge:g}{solver}{fallback})"


def _describe(kernel: Kernel) -> str:
    """``polynomial_kernel(degree=3)`` for ``functools.partial(polynomial_kernel, degree=3)``."""
    if isinstance(kernel, functools.partial):
        arguments = [repr(a) for a in kernel.args] + [f"{k}={v!r}" for k, v in kernel.keywords.items()]
        return f"{_describe(kernel.func)}({', '.join(arguments)})"
    return getattr(kernel, "__name__", None) or type(kernel).__name__
