"""Mercer's condition on data: a kernel matrix must be symmetric positive semi-definite."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._checks import as_square, nonnegative_real


@dataclass(frozen=True)
class MercerReport:
    """What :func:`mercer_check` found for one matrix.

    Attributes:
        symmetric: ``max |K - K^T| <= tol``.
        asymmetry: ``max |K - K^T|``.
        min_eigenvalue: smallest eigenvalue of the symmetric part (K + K^T) / 2.
        max_eigenvalue: largest eigenvalue of the symmetric part.
        tol: the tolerance used for both tests.
        eigenvalues: (n,) all eigenvalues of the symmetric part, ascending, on K's device.
        is_psd: symmetric and min_eigenvalue >= -tol: the matrix can be a kernel matrix.
        numerical_rank: the number of eigenvalues above tol.
    """

    symmetric: bool
    asymmetry: float
    min_eigenvalue: float
    max_eigenvalue: float
    tol: float
    eigenvalues: Tensor = field(repr=False, compare=False)

    @property
    def is_psd(self) -> bool:
        return self.symmetric and self.min_eigenvalue >= -self.tol

    @property
    def numerical_rank(self) -> int:
        return int((self.eigenvalues > self.tol).sum())

    def __str__(self) -> str:
        verdict = "PSD: can be a kernel matrix" if self.is_psd else "NOT a kernel matrix"
        return (
            f"symmetric={self.symmetric} (max|K-K^T|={self.asymmetry:.2e}), "
            f"eigenvalues in [{self.min_eigenvalue:.3e}, {self.max_eigenvalue:.3e}], "
            f"tol={self.tol:.1e} -> {verdict}"
        )


def mercer_check(K: Tensor, tol: float | None = None) -> MercerReport:
    """Check that K is symmetric and positive semi-definite, up to rounding.

    Every kernel k gives, for any points, a symmetric PSD matrix K_ij = k(x_i, x_j); a function
    whose matrix fails this on some points is not a kernel.

    Args:
        K: (n, n) matrix.
        tol: absolute tolerance for asymmetry and negative eigenvalues. Default:
            ``n * eps(dtype) * max(|lambda_max|, max |K_ij|)``, the rounding error of the
            eigenvalues of a matrix of that size and scale.

    Returns:
        A :class:`MercerReport`.
    """
    K = as_square("K", K)
    eigenvalues = torch.linalg.eigvalsh((K + K.T) / 2)  # ascending
    asymmetry = float((K - K.T).abs().max())
    if tol is None:
        scale = max(float(eigenvalues.abs().max()), float(K.abs().max()))
        tol = K.shape[0] * torch.finfo(K.dtype).eps * scale
    tol = nonnegative_real("tol", tol)
    return MercerReport(
        symmetric=asymmetry <= tol,
        asymmetry=asymmetry,
        min_eigenvalue=float(eigenvalues[0]),
        max_eigenvalue=float(eigenvalues[-1]),
        tol=tol,
        eigenvalues=eigenvalues,
    )
