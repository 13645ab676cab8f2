"""Real gradient descent on a torch model, recording what the kernel picture predicts.

The loss is the book's ``L = 1/(2n) sum_i |f(x_i) - y_i|^2`` (for k outputs: summed over outputs,
averaged over points), so that with the NTK frozen, :func:`train` with a small lr follows
:func:`ntklib.gradient_flow` with t = the number of steps.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral

import torch
from torch import Tensor, nn

from ._checks import as_inputs, as_targets, check_same_placement, nonnegative_int, positive_int, positive_real
from .empirical import empirical_ntk
from .trajectory import KernelTracker

PROGRESS_MIN_STEPS = 1000  # progress=None shows a bar from this many steps on (on a terminal)
MAX_DEFAULT_RECORDS = 1000  # record=None thins longer runs to about this many records


@dataclass(repr=False)
class Trajectory:
    """What :func:`train` recorded.

    Attributes:
        steps: (R,) int64 (CPU), the recorded steps (0 = before the first update).
        train: (R, n) or (R, n, k) outputs on X after that many steps.
        test: (R, m) or (R, m, k) outputs on X_test, or None.
        loss: (R,) ``L = 1/(2n) sum_i |f(x_i) - y_i|^2``.
        ntk_steps: (R',) int64 (CPU), the steps where the empirical NTK was recorded.
        ntk: list of R' empirical NTKs on X, (n, n) (or (n, n, k, k), see ``empirical_ntk``).
    """

    steps: Tensor
    train: Tensor
    test: Tensor | None
    loss: Tensor
    ntk_steps: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    ntk: list[Tensor] = field(default_factory=list)

    def __repr__(self) -> str:
        test = None if self.test is None else tuple(self.test.shape)
        return (
            f"Trajectory({len(self.steps)} records up to step {int(self.steps[-1])}, train={tuple(self.train.shape)}, "
            f"test={test}, loss {float(self.loss[0]):.4g} -> {float(self.loss[-1]):.4g}, {len(self.ntk)} NTKs)"
        )


def train(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    lr: float,
    steps: int,
    *,
    X_test: Tensor | None = None,
    record: int | Sequence[int] | None = None,
    record_ntk: bool | int | Sequence[int] = False,
    ntk_method: str = "auto",
    tracker: KernelTracker | None = None,
    progress: bool | None = None,
) -> Trajectory:
    """Full-batch gradient descent ``theta <- theta - lr grad L`` on ``L = 1/(2n) sum_i |f(x_i) - y_i|^2``
    (summed over outputs, averaged over points), so that with the NTK frozen it is
    :func:`ntklib.gradient_flow` with t = step in the small-lr limit.

    The model is trained **in place** (copy it first with ``copy.deepcopy`` to keep the
    initialisation); after a divergence it holds the diverged parameters. Every parameter with
    requires_grad=True is trained; their ``.grad`` is left untouched.

    Args:
        model: maps (n, d) vectors or ``(n, C, *S)`` images to (n,) or (n, k) outputs, with
            parameters on X's device and dtype.
        X: training inputs, (n, d) or ``(n, C, *S)``; y: (n,) or (n, k) targets (outputs are
            recorded in y's shape).
        lr: step size > 0.
        steps: number of updates >= 0.
        X_test: points of X's per-input shape whose outputs are recorded too, or None.
        record: every ``record``-th step (plus the last), or a sequence of steps in [0, steps];
            None: every step, thinned to about 1000 records for longer runs.
        record_ntk: False; True (at the ``record`` steps); or its own int/sequence schedule.
            The empirical NTK on X by :func:`ntklib.empirical_ntk` with ``ntk_method``.
        tracker: a :class:`ntklib.KernelTracker` of this model, which then records (kernel
            distance, velocity, alignment, linearisation error) at the ``record_ntk`` steps, or
            at the ``record`` steps when record_ntk is False, after its own last record; or None.
        progress: a tqdm bar on stderr; None shows it for >= 1000 steps on a terminal only
            (never under pytest or in a notebook kernel).

    Raises:
        TrainingDiverged: (a ValueError) when the loss becomes NaN/inf, naming the step (lr
            above the stable limit ~2n / lambda_max(NTK)); its ``trajectory`` holds the records
            made before that step.
        ValueError, TypeError: for bad arguments.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    X, _ = as_inputs(X, None)
    n = X.shape[0]
    y = as_targets("y", y, n, like=X)
    lr = positive_real("lr", lr)
    steps = nonnegative_int("steps", steps)
    if X_test is not None:
        X, X_test = as_inputs(X, X_test, names=("X", "X_test"))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"model ({type(model).__name__}) has no trainable parameters (requires_grad=True)")
    for p in params:
        check_same_placement(("X", "a model parameter"), X, p)
    if record is None:
        record = max(1, math.ceil(steps / MAX_DEFAULT_RECORDS))
    record_steps = _schedule("record", record, steps, allow_empty=False)
    if isinstance(record_ntk, bool):
        ntk_steps = record_steps if record_ntk else []
    else:
        ntk_steps = _schedule("record_ntk", record_ntk, steps, allow_empty=True)
    show = _show_progress(progress, steps)
    if tracker is not None and not isinstance(tracker, KernelTracker):
        raise TypeError(f"tracker must be an nk.KernelTracker; got {type(tracker).__name__}")
    if tracker is not None and tracker.model is not model:
        raise ValueError("tracker follows another model than the one being trained")
    tracker_steps = set(ntk_steps if ntk_steps else record_steps)

    records, ntk_set = set(record_steps), set(ntk_steps)
    outputs, test_outputs, losses, ntks = [], [], [], []
    bar = None
    if show:
        from tqdm import tqdm  # only when a bar is shown: importing ntklib does not need tqdm

        bar = tqdm(total=steps, desc="nk.train", unit="step", file=sys.stderr, dynamic_ncols=True)
    try:
        for step in range(steps + 1):
            f = _outputs(model, X, y, "X")
            loss = 0.5 * (f - y).square().sum() / n
            value = loss.item()
            if not math.isfinite(value):
                partial = Trajectory(torch.tensor(sorted(s for s in records if s < step), dtype=torch.int64),
                                     _stack(outputs, f), _stack(test_outputs, f) if X_test is not None else None,
                                     _stack(losses, loss), torch.tensor([s for s in ntk_steps if s < step],
                                                                        dtype=torch.int64), ntks)  # fmt: skip
                raise TrainingDiverged(
                    f"training diverged at step {step}: the loss is {value} (lr={lr:g} is probably above "
                    "the stable limit ~2n / lambda_max(NTK); lower it)", partial
                )
            if step in records:
                outputs.append(f.detach())
                losses.append(loss.detach())
                if X_test is not None:
                    with torch.no_grad():
                        test_outputs.append(_outputs(model, X_test, y, "X_test"))
            if step in ntk_set:
                ntks.append(empirical_ntk(model, X, method=ntk_method))
            if tracker is not None and step in tracker_steps and step > tracker.steps[-1]:
                tracker.record(step)
            if step == steps:
                break
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.sub_(g, alpha=lr)
            if bar is not None:
                bar.update(1)
                if step % max(1, steps // 100) == 0:
                    bar.set_postfix(loss=f"{value:.3e}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    return Trajectory(
        steps=torch.tensor(record_steps, dtype=torch.int64),
        train=torch.stack(outputs),
        test=torch.stack(test_outputs) if X_test is not None else None,
        loss=torch.stack(losses),
        ntk_steps=torch.tensor(ntk_steps, dtype=torch.int64),
        ntk=ntks,
    )


class TrainingDiverged(ValueError):
    """Raised by :func:`train` when the loss becomes NaN/inf; ``trajectory`` holds what was
    recorded before the step that diverged (the catapult and divergence phases of large
    learning rates are measured from it)."""

    def __init__(self, message: str, trajectory: Trajectory) -> None:
        super().__init__(message)
        self.trajectory = trajectory


def _stack(records: list[Tensor], like: Tensor) -> Tensor:
    return torch.stack(records) if records else like.detach().new_empty((0, *like.shape))


def _schedule(name: str, record: object, steps: int, allow_empty: bool) -> list[int]:
    if isinstance(record, bool):
        raise TypeError(f"{name} must be an int (every so many steps) or a sequence of steps; got {record!r}")
    if isinstance(record, Integral):
        every = positive_int(name, record)
        out = list(range(0, steps + 1, every))
        return out if out[-1] == steps else [*out, steps]
    if isinstance(record, Tensor):
        record = record.tolist()
    if not isinstance(record, Sequence) or isinstance(record, str):
        raise TypeError(f"{name} must be an int (every so many steps) or a sequence of steps; got {type(record).__name__}")
    out = sorted({nonnegative_int(f"{name} entry", s) for s in record})
    if out and out[-1] > steps:
        raise ValueError(f"{name} asks for step {out[-1]} but there are only steps={steps}")
    if not out and not allow_empty:
        raise ValueError(f"{name} is empty: nothing would be recorded")
    return out


def _outputs(model: nn.Module, X: Tensor, y: Tensor, name: str) -> Tensor:
    """model(X) in y's layout: (n,) for y (n,), (n, k) for y (n, k)."""
    out = model(X)
    if not isinstance(out, Tensor):
        raise TypeError(f"model must return a torch.Tensor; got {type(out).__name__}")
    p, k = X.shape[0], (1 if y.ndim == 1 else y.shape[1])
    if not (tuple(out.shape) == (p, k) or (k == 1 and tuple(out.shape) == (p,))):
        raise ValueError(f"model({name}) has shape {tuple(out.shape)}, which does not match y of shape {tuple(y.shape)}")
    return out.reshape(p, *y.shape[1:])


def _show_progress(progress: object, steps: int) -> bool:
    if progress is not None:
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be True, False or None; got {progress!r}")
        return progress
    stderr = sys.stderr
    return (
        steps >= PROGRESS_MIN_STEPS
        and stderr is not None
        and stderr.isatty()
        and "PYTEST_CURRENT_TEST" not in os.environ
    )
