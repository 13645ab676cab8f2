"""How the empirical NTK of a model moves during training, and the learning rate it allows.

:class:`KernelTracker` records, at the steps you choose in your own training loop (or inside
:func:`ntklib.train`), the empirical NTK on a fixed set of inputs and what it says:

  * distance from the initial kernel, ``|Theta_t - Theta_0|_F / |Theta_0|_F``;
  * kernel velocity (Fort et al. 2020): the kernel distance ``1 - <A, B>_F / (|A|_F |B|_F)``
    between consecutive records, per step;
  * kernel-target alignment ``y^T Theta y / (|Theta|_F |y|^2)`` (Cristianini et al. 2002);
  * linearisation error, the root mean square over the inputs of f(theta_t) - f_lin(theta_t),
    with f_lin the first-order Taylor model at theta_0 (Lee et al. 2019).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ._checks import as_inputs, as_square, nonnegative_int
from .empirical import empirical_ntk
from .linearization import linearize


def critical_learning_rate(ntk: Tensor) -> float:
    """The largest stable step size of gradient descent on the book's loss ``1/(2n) |f - y|^2``
    with a fixed kernel: 2n / lambda_max(Theta) (Lee et al. 2019; Lewkowycz et al. 2020), for
    Theta the (n, n) NTK on the training inputs (empirical or analytic)."""
    ntk = as_square("ntk", ntk)
    eigenvalues = torch.linalg.eigvalsh((ntk + ntk.T) / 2)
    if not float(eigenvalues[-1]) > 0:
        raise ValueError(f"ntk has no positive eigenvalue (lambda_max = {float(eigenvalues[-1]):g}): every step size is stable")
    return 2 * ntk.shape[0] / float(eigenvalues[-1])


def kernel_distance(A: Tensor, B: Tensor) -> float:
    """``1 - <A, B>_F / (|A|_F |B|_F)``: 0 for kernels equal up to scale, at most 2 (Fort et al. 2020)."""
    return 1.0 - float((A * B).sum() / (A.norm() * B.norm()))


@dataclass
class KernelTracker:
    """Records the empirical NTK of ``model`` on ``X`` during training (module docstring).

    Example (your own loop)::

        tracker = nk.KernelTracker(model, X, y)      # records step 0 at construction
        for step in range(1, 101):
            ...                                      # one optimiser step
            if step % 10 == 0:
                tracker.record(step)
        tracker.distance, tracker.velocity, tracker.alignment, tracker.linearization_error

    Args:
        model: any torch module whose outputs are (n,) or (n, 1) (the kernel is (n, n)).
        X: inputs the kernel is measured on, (n, d) or ``(n, C, *S)``.
        y: targets (n,) for the alignment, or None.
        method: the :func:`ntklib.empirical_ntk` method.
        keep_kernels: keep every recorded kernel in ``ntks`` (memory n^2 per record); only the
            first and the last are kept otherwise.
    """

    model: nn.Module
    X: Tensor
    y: Tensor | None = None
    method: str = "auto"
    keep_kernels: bool = True
    steps: list[int] = field(default_factory=list)
    ntks: list[Tensor] = field(default_factory=list)
    distances: list[float] = field(default_factory=list)
    velocities: list[float] = field(default_factory=list)
    alignments: list[float] = field(default_factory=list)
    linearization_errors: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.X, _ = as_inputs(self.X, None)
        if self.y is not None and (not isinstance(self.y, Tensor) or self.y.reshape(-1).shape[0] != self.X.shape[0]):
            raise ValueError(f"y must be a tensor of {self.X.shape[0]} targets, one per input of X")
        self._linear = linearize(self.model)
        self._params = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        self._initial = self._last = None
        self.record(0)

    def record(self, step: int) -> None:
        """Measure the kernel now, after ``step`` steps (steps must increase)."""
        step = nonnegative_int("step", step)
        if self.steps and step <= self.steps[-1]:
            raise ValueError(f"step {step} is not after the last recorded step {self.steps[-1]}")
        ntk = empirical_ntk(self.model, self.X, method=self.method)
        if ntk.ndim != 2:
            raise ValueError(f"KernelTracker needs a model with one output; its NTK has shape {tuple(ntk.shape)}")
        if self._initial is None:
            self._initial = ntk
        self.distances.append(float((ntk - self._initial).norm() / self._initial.norm()))
        if self._last is not None:
            self.velocities.append(kernel_distance(self._last, ntk) / (step - self.steps[-1]))
        if self.y is not None:
            y = self.y.reshape(-1).to(ntk)
            self.alignments.append(float(y @ ntk @ y / (ntk.norm() * (y @ y))))
        with torch.no_grad():
            f = self.model(self.X).reshape(-1)
            f_lin = self._linear({name: p.detach() for name, p in self._params.items()}, self.X).reshape(-1)
            self.linearization_errors.append(float((f - f_lin).square().mean().sqrt()))
        self.steps.append(step)
        if self.keep_kernels or not self.ntks:
            self.ntks.append(ntk)
        else:
            self.ntks[1:] = [ntk]
        self._last = ntk

    @property
    def distance(self) -> Tensor:
        return torch.tensor(self.distances, dtype=torch.float64)

    @property
    def velocity(self) -> Tensor:
        """(records - 1,): kernel distance per step between consecutive records."""
        return torch.tensor(self.velocities, dtype=torch.float64)

    @property
    def alignment(self) -> Tensor:
        return torch.tensor(self.alignments, dtype=torch.float64)

    @property
    def linearization_error(self) -> Tensor:
        return torch.tensor(self.linearization_errors, dtype=torch.float64)

    def critical_learning_rate(self) -> float:
        """2n / lambda_max of the last recorded kernel."""
        return critical_learning_rate(self._last)

    def __repr__(self) -> str:
        last = f", distance {self.distances[-1]:.3g}" if self.distances else ""
        return f"KernelTracker({len(self.steps)} records up to step {self.steps[-1] if self.steps else None}{last})"

