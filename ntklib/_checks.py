"""Validation at ntklib's public edge: every user error becomes a ValueError/TypeError that names
the argument and what was expected, instead of a silent wrong answer."""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from torch import Tensor


PARAMETERIZATIONS = ("ntk", "standard", "mup")


def check_parameterization(parameterization: object) -> str:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"unknown parameterization {parameterization!r}; expected one of: {', '.join(PARAMETERIZATIONS)}"
        )
    return parameterization  # type: ignore[return-value]


def as_matrix(name: str, X: object) -> Tensor:
    """Check that ``X`` is a finite, non-empty, floating-point tensor of shape (n, d)."""
    X = _as_matrix_unscanned(name, X)
    check_finite(name, X)
    return X


def _as_matrix_unscanned(name: str, X: object) -> Tensor:
    """:func:`as_matrix` without the O(n d) scan for NaN/inf."""
    if not isinstance(X, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, d); got {type(X).__name__}")
    if X.ndim != 2:
        hint = f" (for 1-D inputs use {name}[:, None])" if X.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D of shape (n, d); got shape {tuple(X.shape)}{hint}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(X.shape)}; need at least one row and one column")
    check_floating(name, X)
    return X


def check_floating(name: str, X: Tensor) -> None:
    if not X.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating-point dtype (float32 or float64); got {X.dtype}")


def check_finite(name: str, X: Tensor) -> None:
    if not bool(torch.isfinite(X).all()):
        n_bad = int((~torch.isfinite(X)).sum())
        raise ValueError(f"{name} contains {n_bad} NaN or infinite value(s)")


def check_same_placement(names: tuple[str, str], A: Tensor, B: Tensor) -> None:
    """Same device and dtype: ntklib never moves or casts tensors behind the caller's back."""
    if A.device != B.device:
        raise ValueError(f"{names[0]} is on {A.device} but {names[1]} is on {B.device}; move both to one device")
    if A.dtype != B.dtype:
        raise TypeError(f"{names[0]} has dtype {A.dtype} but {names[1]} has {B.dtype}; cast both to one dtype")


def as_matrix_pair(X: object, Z: object | None) -> tuple[Tensor, Tensor]:
    """Validate the (X, Z) arguments of a kernel; ``Z=None`` means ``Z = X``."""
    X = as_matrix("X", X)
    if Z is None:
        return X, X
    Z = as_matrix("Z", Z)
    check_same_placement(("X", "Z"), X, Z)
    if X.shape[1] != Z.shape[1]:
        raise ValueError(
            f"feature dimensions differ: X has d={X.shape[1]} columns but Z has d={Z.shape[1]}"
        )
    return X, Z


def as_inputs(X: object, Z: object | None, names: tuple[str, str] = ("X", "Z")) -> tuple[Tensor, Tensor | None]:
    """X (n, *in_shape) and Z (m, *in_shape): finite floating tensors on one device and dtype."""
    for name, value in zip(names, (X, Z)):
        if value is None and name == names[1]:
            continue
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (n, d) or (n, C, *S); got {type(value).__name__}")
        if value.ndim < 2:
            hint = f" (for 1-D inputs use {name}[:, None])" if value.ndim == 1 else ""
            raise ValueError(f"{name} must be (n, d) vectors or (n, C, *S) images; got shape {tuple(value.shape)}{hint}")
        if value.ndim > 4:
            raise ValueError(f"{name} has shape {tuple(value.shape)}: ntklib handles vectors (n, d), 1-D signals "
                             "(n, C, L) and images (n, C, H, W)")  # fmt: skip
        if value.numel() == 0:
            raise ValueError(f"{name} is empty: shape {tuple(value.shape)}")
        check_floating(name, value)
        check_finite(name, value)
    if Z is not None:
        check_same_placement(names, X, Z)
        if X.ndim == 2 and Z.ndim == 2 and X.shape[1] != Z.shape[1]:
            raise ValueError(f"feature dimensions differ: {names[0]} has d={X.shape[1]} columns but {names[1]} has "
                             f"d={Z.shape[1]}")  # fmt: skip
        if Z.shape[1:] != X.shape[1:]:
            raise ValueError(f"{names[0]} and {names[1]} must have the same per-input shape; got {names[0]} "
                             f"{tuple(X.shape)} and {names[1]} {tuple(Z.shape)}")  # fmt: skip
    return X, Z


def as_targets(name: str, y: object, n: int, like: Tensor, like_name: str = "X") -> Tensor:
    """Targets of shape (n,) or (n, k), finite, on the same device and dtype as ``like``."""
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n,) or (n, k); got {type(y).__name__}")
    if y.ndim not in (1, 2):
        raise ValueError(f"{name} must have shape (n,) or (n, k); got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} rows but there are n={n} training points")
    check_floating(name, y)
    check_same_placement((like_name, name), like, y)
    check_finite(name, y)
    return y


def as_initial(
    name: str, value: object, shape: tuple[int, ...], like: Tensor, like_name: str, shape_note: str = ""
) -> Tensor:
    """An optional starting value of exactly ``shape``, finite, on ``like``'s device and dtype;
    zeros of that shape when ``value`` is None. ``shape_note`` explains the shape in the error."""
    shape = tuple(shape)
    if value is None:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape}; got {type(value).__name__}")
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}{shape_note}; got {tuple(value.shape)}")
    check_floating(name, value)
    check_same_placement((like_name, name), like, value)
    check_finite(name, value)
    return value


def as_square(name: str, K: object) -> Tensor:
    """A finite floating-point square matrix (n, n) with n >= 1."""
    K = as_matrix(name, K)
    if K.shape[0] != K.shape[1]:
        raise ValueError(f"{name} must be square (n, n); got shape {tuple(K.shape)}")
    return K


def positive_real(name: str, value: object) -> float:
    value = _real(name, value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0; got {value}")
    return value


def nonnegative_real(name: str, value: object) -> float:
    value = _real(name, value)
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0; got {value}")
    return value


def nonnegative_scale(name: str, value: object) -> float | Tensor:
    """A standard deviation >= 0 (W_std, b_std): a real number, returned as a float, or a
    one-element floating-point tensor that requires grad, returned as a 0-d view of itself so
    that kernels computed with it are differentiable in it (``ntklib.gpytorch_kernels``). Any
    other tensor is read as a number, as before."""
    if isinstance(value, Tensor) and value.requires_grad:
        if value.numel() != 1 or not value.dtype.is_floating_point:
            raise TypeError(f"{name} must be a real number or a one-element floating-point tensor; got a "
                            f"{value.dtype} tensor of shape {tuple(value.shape)}")  # fmt: skip
        number = float(value.detach())
        if not math.isfinite(number):
            raise ValueError(f"{name} must be finite; got {number}")
        if not number >= 0:
            raise ValueError(f"{name} must be >= 0; got {number}")
        return value.reshape(())
    return nonnegative_real(name, value)


def nonnegative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer; got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0; got {value}")
    return int(value)


def positive_int(name: str, value: object) -> int:
    value = nonnegative_int(name, value)
    if value == 0:
        raise ValueError(f"{name} must be >= 1; got 0")
    return value


def _real(name: str, value: object) -> float:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.detach().item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    return value


def as_square_unscanned(name: str, K: object) -> Tensor:
    """:func:`as_square` without the scan for NaN/inf (an O(n^2) pass), for callers whose next
    step fails on such values anyway (a Cholesky factorisation) and then calls
    :func:`check_finite` to name them. Same messages as ``as_square``."""
    K = _as_matrix_unscanned(name, K)
    if K.shape[0] != K.shape[1]:
        raise ValueError(f"{name} must be square (n, n); got shape {tuple(K.shape)}")
    return K


def check_kernel_finite(name: str, K: Tensor, X: Tensor, Z: Tensor, hint: str) -> Tensor:
    """Return K when every entry is finite; otherwise raise naming the rows of X and Z whose
    entries overflowed (finite inputs can still give a kernel beyond the dtype's range)."""
    if bool(torch.isfinite(K).all()):
        return K
    bad = ~torch.isfinite(K)
    per_row, per_column = bad.sum(1), bad.sum(0)  # the culprits have the most bad entries
    rows = torch.nonzero(per_row == per_row.max())[:, 0][:5].tolist()
    columns = torch.nonzero(per_column == per_column.max())[:, 0][:5].tolist()
    norms = [f"{float(X[i].double().norm()):.2e}" for i in rows]
    where = f"rows {rows} of X (norms {norms})" + ("" if Z is X else f" and rows {columns} of Z")
    largest = torch.finfo(K.dtype).max
    raise ValueError(f"{name} overflowed to inf/NaN in {K.dtype} (largest finite value {largest:.1e}), most at {where}: "
                     f"{hint}")  # fmt: skip
