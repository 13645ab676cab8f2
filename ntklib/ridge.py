"""Kernel ridge regression: alpha = (K + lambda I)^-1 y, f(z) = k(z, X) alpha."""

from __future__ import annotations

import functools
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
    return_info: bool = False,
):
    """Solve (K + ridge I) alpha = y, by Cholesky factorisation or by preconditioned conjugate gradients.

    ``solver="cholesky"`` (K in memory, O(n^3)): raises a ValueError when K + ridge I is not
    numerically positive definite (a non-PSD K, or a singular one with ridge = 0), rather than
    returning a meaningless alpha. The test is the Cholesky pivots: (min_i L_ii / max_i L_ii)^2
    estimates 1 / cond(K + ridge I), and below n * eps the solution would carry no correct digits.
    The checks ride on the factorisation: the ridge is added to the diagonal of the one copy that
    is factorised, NaN or inf in K's lower triangle (the one read) make it fail, and only then is
    K scanned to name them; one sum over K catches them in the upper triangle.

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
        return_info: also return a :class:`ntklib.SolveInfo` (iterations, final residual).

    Returns:
        The dual coefficients alpha, the same shape as y; ``(alpha, info)`` with ``return_info``.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of: {', '.join(SOLVERS)}")
    ridge = nonnegative_real("ridge", ridge)
    if solver == "cholesky":
        if isinstance(K, (str, os.PathLike)):
            raise TypeError("solver='cholesky' needs K in memory as a tensor; for a matrix in a file use solver='pcg'")
        alpha, info = _cholesky(K, y, ridge, return_info)
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


def _cholesky(K: Tensor, y: Tensor, ridge: float, residual: bool):
    from .pcg import SolveInfo

    K = as_square_unscanned("K", K)
    y = as_targets("y", y, K.shape[0], like=K, like_name="K")
    n = K.shape[0]
    A = K.clone()  # the one n x n copy: factorised in place
    A.diagonal().add_(ridge)
    L, info = torch.linalg.cholesky_ex(A, out=(A, torch.empty((), dtype=torch.int32, device=K.device)))
    pivots = L.diagonal()
    if int(info) != 0 or not bool(torch.isfinite(pivots).all()):
        check_finite("K", K)  # non-finite values make the factorisation fail: name them
        raise ValueError(
            f"K + ridge*I is not positive definite (Cholesky failed at column {int(info)}, ridge={ridge}): "
            "the kernel matrix is singular or not PSD; use ridge > 0 or check the kernel"
        )
    if not bool(torch.isfinite(K.sum())):  # the upper triangle, which the factorisation does not read
        check_finite("K", K)
    inverse_condition = float((pivots.min() / pivots.max()) ** 2)
    if inverse_condition < n * torch.finfo(K.dtype).eps:
        raise ValueError(
            f"K + ridge*I is numerically singular (estimated condition number {1 / inverse_condition:.1e}, "
            f"ridge={ridge}): the solution would be meaningless; use ridge > 0"
        )
    rhs = y[:, None] if y.ndim == 1 else y
    alpha = torch.cholesky_solve(rhs, L)
    alpha = alpha[:, 0] if y.ndim == 1 else alpha
    info = None
    if residual:
        R = (rhs - K @ alpha.reshape(n, -1) - ridge * alpha.reshape(n, -1)).norm(dim=0)
        relative = float((R / rhs.norm(dim=0).clamp_min(torch.finfo(K.dtype).tiny)).max())
        info = SolveInfo("cholesky", 0, relative, True)
    return alpha, info


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
    return conjugate_gradients(matmul, y, ridge, precondition, tol, max_iter)


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
    k(Z, X) alpha a tile at a time.

    Attributes (after ``fit``):
        X_fit\_: (n, d) training inputs.
        dual_coef\_: alpha, (n,) or (n, k).
        solve_info\_: a :class:`ntklib.SolveInfo`: solver, iterations, final relative residual.
    """

    def __init__(self, kernel: Kernel = gaussian_kernel, ridge: float = 1.0, *, solver: str = "cholesky",
                 tol: float | None = None, max_iter: int = 300, rank: int = DEFAULT_RANK, tile: int | None = None,
                 store: str | os.PathLike | None = None, client=None, seed: int = 0) -> None:  # fmt: skip
        if not callable(kernel):
            raise TypeError(f"kernel must be a function (X, Z) -> K; got {type(kernel).__name__}")
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; expected one of: {', '.join(SOLVERS)}")
        if solver == "cholesky" and (store is not None or client is not None):
            raise ValueError("store= and client= go with solver='pcg' (the Cholesky solver needs K in memory)")
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
        self.store, self.client = store, client

    def fit(self, X: Tensor, y: Tensor) -> "KernelRidge":
        X = as_matrix("X", X)
        y = as_targets("y", y, X.shape[0], like=X)
        if self.solver == "cholesky":
            self.dual_coef_, self.solve_info_ = solve_kernel_system(self.kernel(X, X), y, self.ridge, return_info=True)
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
        return f"KernelRidge(kernel={_describe(self.kernel)}, ridge={self.ridge:g}{solver})"


def _describe(kernel: Kernel) -> str:
    """``polynomial_kernel(degree=3)`` for ``functools.partial(polynomial_kernel, degree=3)``."""
    if isinstance(kernel, functools.partial):
        arguments = [repr(a) for a in kernel.args] + [f"{k}={v!r}" for k, v in kernel.keywords.items()]
        return f"{_describe(kernel.func)}({', '.join(arguments)})"
    return getattr(kernel, "__name__", None) or type(kernel).__name__
