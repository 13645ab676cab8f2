r"""Kernel ridge systems solved by conjugate gradients with a Nystrom preconditioner.

Solves (K + ridge I) alpha = y touching K only through products K V (streamed from a store or
recomputed tile by tile) and M of its rows, so K never needs to be in memory.

Preconditioner (Frangella, Tropp & Udell 2023, "Randomized Nystrom preconditioning"): from M
rows of K at landmarks S drawn uniformly, the Nystrom approximation
K_hat = K[:, S] K[S, S]^+ K[S, :] = U diag(Lambda) U^T (U: n x M orthonormal, Lambda
decreasing) gives

    P^-1 = (Lambda_M + ridge) U (Lambda + ridge I)^-1 U^T + (I - U U^T),

which brings the M largest directions of K + ridge I down to about Lambda_M + ridge: the
preconditioned system's condition number is at most (Lambda_M + ridge + |K - K_hat|_2) / ridge
(Frangella et al.) instead of (lambda_1(K) + ridge) / ridge, and CG needs about its square root
times log(1/tol) iterations. Falkon (Rudi et al. 2017; Meanti et al. 2020) preconditions CG with
a Nystrom approximation from uniform landmarks too, but solves the M-dimensional Nystrom problem,
whose answer differs from kernel ridge regression's; here the answer is alpha itself, equal to
the Cholesky solution up to the tolerance.

Why our own iteration rather than a library's: falkon is not on the package registries this
project installs from (pip finds no distribution of it) and solves the Nystrom problem; pykeops compiles formulas at run time and cannot express ntklib's layered
kernels. ``linear_operator.utils.linear_cg`` (GPyTorch's, 0.6.1) would take our matmul closure
and preconditioner, but it stops when the mean over the columns of their running residuals
falls below the tolerance (its default is 1, tuned for GP training), after at least 10
iterations, returns only the solution, and never checks p^T A p > 0; the 30 lines here stop per
column, check the residual recomputed from alpha (restarting when rounding left it above the
tolerance), report it, and refuse a K that is not positive definite, with no new dependency.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


class SolveInfo(NamedTuple):
    """How a kernel system was solved.

    Attributes:
        solver: "cholesky" or "pcg".
        iterations: CG iterations (0 for Cholesky).
        residual: max over the columns of y of ``|y - (K + ridge I) alpha| / |y|``, recomputed from
            alpha at the end (one more product with K), not CG's running estimate; for a Cholesky
            fallback, that of the system asked for (without the jitter, with every eigenvalue).
        converged: residual <= tol (always True for Cholesky).
        history: CG's running residual (max over columns) after each iteration.
        condition: an estimate of cond(K + ridge I) = lambda_max / lambda_min. Cholesky: a lower
            bound from the pivots, the diagonal and the mean row sum, computed with no extra pass
            over K (see ``solve_kernel_system``); with ``fallback="eigh"`` the ratio of the extreme
            eigenvalues (inf when the smallest is <= 0); with ``"jitter"`` that of the jittered
            system. PCG: (Lambda_1 + ridge) / ridge, Lambda_1 the largest eigenvalue of the Nystrom
            approximation (a lower bound on lambda_max(K), close to it with a few landmarks) and the
            ridge in place of lambda_min(K + ridge I) >= ridge: an upper estimate, close to the
            truth when K's smallest eigenvalue is far below the ridge, as it is for smooth kernels
            of many points. CG's own coefficients would give the preconditioned system's condition
            number instead, not K + ridge I's.
        fallback: the Cholesky fallback that produced alpha ("float64", "jitter", "eigh"), or None.
        jitter: ``fallback="jitter"``: the jitter added to the diagonal (0.0 otherwise).
        clipped: ``fallback="eigh"``: the number of eigenvalues dropped (0 otherwise).
    """

    solver: str
    iterations: int
    residual: float
    converged: bool
    history: tuple[float, ...] = ()
    condition: float | None = None
    fallback: str | None = None
    jitter: float = 0.0
    clipped: int = 0


class NystromPreconditioner:
    """P^-1 of the module docstring, from M rows of K (float64 whatever K's dtype)."""

    def __init__(self, rows: Callable[[Tensor], Tensor], n: int, rank: int, ridge: float, generator: torch.Generator,
                 device: torch.device, eps: float) -> None:  # fmt: skip
        rank = min(rank, n)
        landmarks = torch.randperm(n, generator=generator)[:rank].sort().values.to(device)  # (M,)
        R = rows(landmarks).to(torch.float64)  # (M, n) = K[S, :]
        K_SS = R[:, landmarks]
        K_SS = (K_SS + K_SS.T) / 2
        scale = float(K_SS.diagonal().abs().max())
        shift = max(scale, torch.finfo(torch.float64).tiny) * rank * eps  # K's own rounding level
        for _ in range(8):  # K[S, S] is PSD up to rounding: a small shift makes it definite
            C, info = torch.linalg.cholesky_ex(K_SS + shift * torch.eye(rank, dtype=R.dtype, device=device))
            if int(info) == 0:
                break
            shift *= 100
        else:
            raise ValueError(
                f"K is not positive semi-definite: its {rank} x {rank} block at the Nystrom landmarks has no "
                f"Cholesky factor even with {shift / 100:.1e} added to its diagonal; check the kernel"
            )
        B = torch.linalg.solve_triangular(C, R, upper=False).T  # (n, M): K_hat = B B^T
        del R
        U, sigma, _ = torch.linalg.svd(B, full_matrices=False)  # U (n, M)
        self.U = U
        self.eigenvalues = (sigma.square() - shift).clamp_min(0.0)  # Lambda (M,), decreasing
        floor = float(self.eigenvalues[-1]) + ridge
        self.scale = floor / (self.eigenvalues + ridge) - 1.0  # (M,): P^-1 = I + U diag(scale) U^T

    def __call__(self, V: Tensor) -> Tensor:
        """P^-1 V for V (n, k)."""
        return V + self.U @ (self.scale[:, None] * (self.U.T @ V))


def conjugate_gradients(matmul: Callable[[Tensor], Tensor], y: Tensor, ridge: float, precondition: Callable,
                        tol: float, max_iter: int) -> tuple[Tensor, SolveInfo]:  # fmt: skip
    """Preconditioned CG on (K + ridge I) alpha = y, one independent CG per column of y.

    ``matmul`` maps (n, k) float64 to K @ V (n, k) float64. When CG's running residual reaches
    ``tol``, the true residual is recomputed from alpha; if rounding left it above ``tol``
    (float32 kernels), CG restarts from alpha on the true residual ("reliable updates"), until
    it reaches tol, stops improving, or ``max_iter`` iterations are spent.
    """
    Y = y.to(torch.float64).reshape(y.shape[0], -1)  # (n, k)
    norms = Y.norm(dim=0).clamp_min(torch.finfo(torch.float64).tiny)  # (k,)
    alpha = torch.zeros_like(Y)
    R = Y.clone()  # residual of alpha = 0
    history: list[float] = []
    iterations, best = 0, math.inf
    while True:
        active = R.norm(dim=0) / norms > tol  # (k,)
        Zr = precondition(R)
        P = Zr.clone()
        rz = (R * Zr).sum(0)
        while bool(active.any()) and iterations < max_iter:
            AP = matmul(P) + ridge * P
            pAp = (P * AP).sum(0)
            if bool((pAp[active] <= 0).any()):
                raise ValueError(
                    f"K + ridge*I is not positive definite: conjugate gradients found a direction p with "
                    f"p^T (K + ridge I) p <= 0 at iteration {iterations + 1} (ridge={ridge}); check the kernel"
                )
            step = torch.where(active, rz / torch.where(active, pAp, 1.0), 0.0)
            alpha += step * P
            R -= step * AP
            iterations += 1
            relative = R.norm(dim=0) / norms
            history.append(float(relative.max()))
            active = relative > tol
            Zr = precondition(R)
            rz_new = (R * Zr).sum(0)
            beta = torch.where(active, rz_new / torch.where(active, rz, 1.0), 0.0)
            P = Zr + beta * P
            rz = rz_new
        R = Y - matmul(alpha) - ridge * alpha  # the true residual
        residual = float((R.norm(dim=0) / norms).max())
        if residual <= tol or iterations >= max_iter or residual > 0.5 * best:
            break
        best = residual
    converged = residual <= tol
    info = SolveInfo("pcg", iterations, residual, converged, tuple(history))
    if not converged:
        why = "the iteration cap" if iterations >= max_iter else "rounding of K's products (restarts stopped helping)"
        warnings.warn(
            f"conjugate gradients stopped at relative residual {residual:.2e} > tol={tol:g} after {iterations} "
            f"iterations ({why}); raise max_iter or rank, or loosen tol", RuntimeWarning, stacklevel=3
        )  # fmt: skip
    return alpha.to(y.dtype).reshape(y.shape), info


# -- products with K: in memory or streamed from a file ------------------------------------------
PRODUCT_ENTRIES = 1 << 22  # entries of a float32 block widened to float64 at a time (32 MiB)


def product(block: Tensor, V: Tensor) -> Tensor:
    """block @ V for float64 V, in float64 whatever the block's dtype: a float32 block is widened
    a few rows at a time, so its products carry float64 rounding (float32 sums over n terms
    leave CG a residual floor near 1e-4; in float64 it reaches any tolerance)."""
    if block.dtype == V.dtype:
        return block @ V
    out = torch.empty(block.shape[0], V.shape[1], dtype=V.dtype, device=V.device)
    rows = max(1, PRODUCT_ENTRIES // block.shape[1])
    for start in range(0, block.shape[0], rows):
        out[start:start + rows] = block[start:start + rows].to(V.dtype) @ V
    return out


class DenseOperator:
    """K in memory (or a memory-mapped tensor)."""

    def __init__(self, K: Tensor) -> None:
        self.K, self.n, self.dtype, self.device = K, K.shape[0], K.dtype, K.device

    def matmul(self, V: Tensor) -> Tensor:
        return product(self.K, V)

    def rows(self, index: Tensor) -> Tensor:
        return self.K[index]


class NpyOperator:
    """K in an ``.npy`` file, read in row bands of about ``band_bytes`` that are unmapped after
    use, so the process never holds more than one band (the OS page cache may keep the file)."""

    def __init__(self, path: str | os.PathLike, band_bytes: int = 1 << 26) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"K={str(path)!r} is not a file; give an (n, n) .npy matrix (nk.kernel_matrix(..., "
                             "out=dir) writes dir/kernel.npy, or dir/nngp.npy and dir/ntk.npy)")  # fmt: skip
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(f)
            except ValueError as error:
                raise ValueError(f"K={str(path)!r} is not an .npy file: {error}") from None
            self.offset = f.tell()
        if len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0 or fortran or dtype.kind != "f":
            raise ValueError(f"K={str(path)!r} must hold a square (n, n) floating-point matrix in C order; it holds "
                             f"{'Fortran-order ' if fortran else ''}{dtype} of shape {shape}")  # fmt: skip
        self.n, self.np_dtype = shape[0], dtype
        self.dtype, self.device = torch.from_numpy(np.empty(0, dtype)).dtype, torch.device("cpu")
        self.band = max(1, band_bytes // (self.n * dtype.itemsize))

    def _rows(self, start: int, stop: int) -> np.memmap:
        return np.memmap(self.path, dtype=self.np_dtype, mode="c", shape=(stop - start, self.n),
                         offset=self.offset + start * self.n * self.np_dtype.itemsize)  # fmt: skip

    def matmul(self, V: Tensor) -> Tensor:
        out = torch.empty_like(V)
        for start in range(0, self.n, self.band):
            stop = min(start + self.band, self.n)
            band = self._rows(start, stop)
            out[start:stop] = product(torch.from_numpy(np.asarray(band)).to(V.device), V)
            del band  # unmapped: its pages leave this process
        return out

    def rows(self, index: Tensor) -> Tensor:
        whole = np.load(self.path, mmap_mode="c")
        picked = torch.from_numpy(np.ascontiguousarray(whole[index.cpu().numpy()]))
        del whole
        return picked
