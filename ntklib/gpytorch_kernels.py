"""GPyTorch kernels from infinitely wide MLPs, with sigma_w and sigma_b as learnable hyperparameters.

``NNGPKernel`` and ``NTKKernel`` are ``gpytorch.kernels.Kernel`` subclasses whose covariance is
the NNGP Sigma or the NTK Theta of ``nk.mlp(width, depth, 1, activation, W_std, b_std,
parameterization)``, the network of ``nk.infinite_width_kernels``. ``W_std`` and ``b_std`` are
gpytorch parameters (raw values behind a positive constraint, softplus by default), so an
``ExactGP`` with ``ExactMarginalLogLikelihood`` chooses them by maximising the marginal
likelihood (Rasmussen & Williams 2006, ch. 5), like the length scale of any other kernel::

    from ntklib.gpytorch_kernels import NTKKernel

    class GP(gpytorch.models.ExactGP):
        def __init__(self, X, y, likelihood):
            super().__init__(X, y, likelihood)
            self.mean, self.kernel = gpytorch.means.ZeroMean(), NTKKernel(depth=2)

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(self.mean(x), self.kernel(x))

No second copy of the recursion: the covariance is ``mlp(...).kernels(x1, x2)`` with W_std and
b_std passed as tensors that require grad. ``Dense`` keeps such tensors, and the dual maps of
the closed-form activations (ReLU family, erf, GELU) then run their formulas out of place, so
autograd differentiates the analytic recursion itself; numbers for W_std and b_std take the
usual in-place path, unchanged. ``Elementwise`` activations (Hermite series) are refused.

``diag=True`` (predictive variances) costs O(n), not O(n^2): the kernel of each input with
itself is the same network's rule on one 1-D signal whose n positions are the n inputs, every
Dense layer acting as a 1 x 1 convolution, in the diagonal pixel layout that keeps only equal
positions, i.e. each input paired with itself (the layer rules of ``Conv``, unchanged).

Why a module of its own, imported as ``from ntklib.gpytorch_kernels import NTKKernel``, and
not an attribute of ``ntklib``: gpytorch is optional (``pip install ntklib[gpytorch]``) and
``import ntklib`` must stay light. An explicit import line shows where the dependency enters
and fails right there, with the install command, when gpytorch is missing; a lazy ``nk.``
attribute would hide both.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import gpytorch
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ntklib.gpytorch_kernels needs gpytorch: pip install 'ntklib[gpytorch]' (or gpytorch>=1.11)"
    ) from error

from ._checks import _real, as_inputs, positive_int
from .layers.activations import Activation, activation_by_name
from .layers.base import Serial, serial
from .layers.linear import Conv
from .layers.quadrature import HermiteDual
from .layers.state import Layout
from .networks import mlp

__all__ = ["NNGPKernel", "NTKKernel"]


class _InfiniteWidthKernel(gpytorch.kernels.Kernel):
    """The NNGP or NTK of an infinitely wide MLP as a GPyTorch kernel (see the module docstring)."""

    has_lengthscale = False
    is_stationary = False
    _which = ""  # "nngp" or "ntk", set by the subclasses

    def __init__(
        self,
        depth: int = 1,
        activation: str | Activation = "relu",
        parameterization: str = "ntk",
        *,
        W_std: float = 1.0,
        b_std: float = 0.1,
        width: int | None = None,
        negative_slope: float = 0.01,
        W_std_constraint=None,
        b_std_constraint=None,
        block_size: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if len(self.batch_shape) > 0:
            raise ValueError(
                f"batch_shape={tuple(self.batch_shape)} is not supported: one W_std and one b_std serve every "
                "batch of inputs (batched inputs are fine)"
            )
        self.depth = positive_int("depth", depth)
        if parameterization not in ("ntk", "standard"):
            raise ValueError(
                f"parameterization must be 'ntk' or 'standard' (the ones with infinite-width kernels); "
                f"got {parameterization!r}"
            )
        self.parameterization = parameterization
        if parameterization == "standard" and width is None:
            raise ValueError("width is required for parameterization='standard' (its NTK grows with width)")
        self.width = 1 if width is None else positive_int("width", width)
        if isinstance(activation, Activation):
            if isinstance(activation.dual, HermiteDual):
                raise ValueError(
                    f"activation {activation!r}: the kernels of an Elementwise activation are not differentiable "
                    "in W_std and b_std; use a closed-form one (relu, leaky_relu, abs, erf, gelu, identity)"
                )
            self.activation = activation
        else:
            self.activation = activation_by_name(activation, _real("negative_slope", negative_slope))
        self.block_size = None if block_size is None else positive_int("block_size", block_size)
        for name, value, constraint in (("W_std", W_std, W_std_constraint), ("b_std", b_std, b_std_constraint)):
            value = _real(name, value)
            if not value > 0:
                raise ValueError(
                    f"{name} must be > 0 (it is learned behind a positive constraint); got {value}. "
                    "For a fixed sigma_b = 0 use nk.infinite_width_kernels(..., b_std=0)"
                )
            if constraint is None:
                constraint = gpytorch.constraints.Positive()
            elif not isinstance(constraint, gpytorch.constraints.Interval):
                raise TypeError(f"{name}_constraint must be a gpytorch constraint; got {type(constraint).__name__}")
            self.register_parameter(f"raw_{name}", torch.nn.Parameter(torch.zeros(1)))
            self.register_constraint(f"raw_{name}", constraint)
            self._set(name, value)

    # -- the hyperparameters ---------------------------------------------------------------
    @property
    def W_std(self) -> Tensor:
        """sigma_w, shape (1,), through its constraint."""
        return self.raw_W_std_constraint.transform(self.raw_W_std)

    @W_std.setter
    def W_std(self, value: float | Tensor) -> None:
        self._set("W_std", value)

    @property
    def b_std(self) -> Tensor:
        """sigma_b, shape (1,), through its constraint."""
        return self.raw_b_std_constraint.transform(self.raw_b_std)

    @b_std.setter
    def b_std(self, value: float | Tensor) -> None:
        self._set("b_std", value)

    def _set(self, name: str, value: float | Tensor) -> None:
        raw = getattr(self, f"raw_{name}")
        value = torch.as_tensor(value, dtype=raw.dtype, device=raw.device).reshape(raw.shape)
        constraint = getattr(self, f"raw_{name}_constraint")
        self.initialize(**{f"raw_{name}": constraint.inverse_transform(value)})

    def network(self) -> Serial:
        """The MLP description at the current hyperparameters, as numbers (for
        ``.kernels(X, Z)`` without gradients, or ``.init(d)`` for a finite network)."""
        W_std, b_std = float(self.W_std.detach()), float(self.b_std.detach())
        return mlp(self.width, self.depth, 1, self.activation, W_std, b_std, self.parameterization)

    def extra_repr(self) -> str:
        return (f"depth={self.depth}, activation={self.activation!r}, parameterization={self.parameterization!r}, "
                f"W_std={float(self.W_std.detach()):.4g}, b_std={float(self.b_std.detach()):.4g}")  # fmt: skip

    # -- evaluation ------------------------------------------------------------------------
    def forward(self, x1: Tensor, x2: Tensor, diag: bool = False, last_dim_is_batch: bool = False,
                **params) -> Tensor:  # fmt: skip
        """K(x1, x2): (..., n, m), or its diagonal (..., n) with ``diag=True`` (then n = m).

        x1: (..., n, d) and x2: (..., m, d); leading batch dimensions broadcast and are
        evaluated one after the other (once when both inputs are unbatched).
        """
        if last_dim_is_batch:
            raise ValueError(f"{type(self).__name__} does not support last_dim_is_batch=True")
        for name, x in (("x1", x1), ("x2", x2)):
            if not isinstance(x, Tensor) or x.ndim < 2:
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"{name} must be a tensor of shape (..., n, d); got {shape}")
        if x1.shape[-1] != x2.shape[-1]:
            raise ValueError(f"feature dimensions differ: x1 has d={x1.shape[-1]} but x2 has d={x2.shape[-1]}")
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
        if _one_matrix(x1) and _one_matrix(x2):  # unbatched, or one matrix expanded: evaluate once
            same = x1 is x2
            x1 = x1 if x1.ndim == 2 else x1[(0,) * (x1.ndim - 2)]
            single = self._evaluate(x1, x1 if same else x2[(0,) * (x2.ndim - 2)], diag)
            return single.expand(*batch, *single.shape) if batch else single
        rows = x1.expand(*batch, *x1.shape[-2:]).reshape(-1, *x1.shape[-2:])
        cols = x2.expand(*batch, *x2.shape[-2:]).reshape(-1, *x2.shape[-2:])
        out = torch.stack([self._evaluate(a, b, diag) for a, b in zip(rows, cols)])
        return out.reshape(*batch, *out.shape[1:])

    def _hyperparameters(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """W_std and b_std as 0-d tensors in the inputs' dtype and device (differentiable casts)."""
        return (self.W_std.reshape(()).to(device=like.device, dtype=like.dtype),
                self.b_std.reshape(()).to(device=like.device, dtype=like.dtype))  # fmt: skip

    def _evaluate(self, x1: Tensor, x2: Tensor, diag: bool) -> Tensor:
        same = x1 is x2 or (x1.shape == x2.shape and torch.equal(x1, x2))
        as_inputs(x1, None if same else x2, names=("x1", "x2"))
        W_std, b_std = self._hyperparameters(x1)
        if not diag:
            net = mlp(self.width, self.depth, 1, self.activation, W_std, b_std, self.parameterization)
            return getattr(net.kernels(x1, None if same else x2, block_size=self.block_size), self._which)
        if x1.shape[0] != x2.shape[0]:
            raise ValueError(f"diag=True needs as many x1 as x2 rows; got {x1.shape[0]} and {x2.shape[0]}")
        # The n input pairs (x1_i, x2_i) as the n positions of one signal: 1 x 1 convolutions in
        # the diagonal layout see position i of both only, i.e. exactly the pair (x1_i, x2_i).
        layers = []
        for _ in range(self.depth):
            layers += [Conv(self.width, (1,), W_std=W_std, b_std=b_std, parameterization=self.parameterization),
                       self.activation]  # fmt: skip
        net = serial(*layers, Conv(1, (1,), W_std=W_std, b_std=b_std, parameterization=self.parameterization))
        signal1 = x1.T[None]  # (1, d, n)
        signal2 = signal1 if same else x2.T[None]
        state = net.kernel_of_inputs(signal1, signal2, same, Layout(full=False, cov_full=False))
        return getattr(state, self._which).reshape(-1)  # (1, 1, n) -> (n,)


def _one_matrix(x: Tensor) -> bool:
    """Whether every batch entry of x (..., n, d) is the same matrix (sizes 1, or stride 0 as
    left by ``expand``)."""
    return all(size == 1 or stride == 0 for size, stride in zip(x.shape[:-2], x.stride()[:-2]))


class NNGPKernel(_InfiniteWidthKernel):
    """The NNGP Sigma of an infinitely wide MLP as a GPyTorch kernel, sigma_w and sigma_b learnable.

    Sigma(x, z) is ``nk.infinite_width_kernels(x, z, depth, activation, W_std, b_std,
    parameterization, width).nngp``; gradients with respect to W_std and b_std run through
    the analytic recursion (module docstring).

    Args:
        depth: hidden layers L >= 1.
        activation: "relu", "leaky_relu", "abs", "erf", "gelu", "identity", or a closed-form
            activation layer (not ``Elementwise``).
        parameterization: "ntk" or "standard" (which needs ``width``).
        W_std, b_std: initial sigma_w > 0 and sigma_b > 0.
        width: hidden width, used by "standard" only.
        negative_slope: of "leaky_relu".
        W_std_constraint, b_std_constraint: gpytorch constraints (default ``Positive()``).
        block_size: as in ``Layer.kernels``.
        **kwargs: of ``gpytorch.kernels.Kernel`` (``active_dims``, ...; ``batch_shape`` must
            stay empty: one W_std and b_std for all batches).

    Attributes:
        W_std, b_std: the constrained values, shape (1,) (settable); raw_W_std and raw_b_std
            are the parameters an optimiser sees.

    ``kernel(x1, x2)`` is (..., n, m), ``kernel(x1, diag=True)`` (..., n);
    ``kernel.network()`` is the MLP description at the current values, as numbers.
    """

    _which = "nngp"


class NTKKernel(_InfiniteWidthKernel):
    """The NTK Theta of an infinitely wide MLP as a GPyTorch kernel, sigma_w and sigma_b learnable.

    Theta(x, z) is ``nk.infinite_width_kernels(x, z, depth, activation, W_std, b_std,
    parameterization, width).ntk``. Arguments and attributes as ``NNGPKernel``.
    """

    _which = "ntk"
