"""Chapter 10's experiment protocol: how the NTK of a finite network moves while it trains.

The task is the parity of scikit-learn's handwritten digits (``sklearn.datasets.load_digits``,
1797 images of 8 x 8 pixels): target +1 for an even digit, -1 for an odd one, predicted class
the sign of the output. One output keeps the empirical NTK an (n, n) matrix, which is what
:class:`ntklib.KernelTracker` measures. A split draws ``n_train`` training and ``n_test`` test
images at random (seeded) and standardises the 64 pixels with the training images' mean and
standard deviation (``ntkbook.small_data.standardize``, chapter 8's protocol).

Networks are ``nk.MLP`` in float64: ReLU with sigma_w = sqrt 2, sigma_b = 0.1 unless stated,
trained by full-batch gradient descent (``nk.train``) on the book's loss
L = 1/(2n) |f - y|^2. Learning rates are given as multiples of the critical learning rate
2n / lambda_max of the network's own initial empirical NTK (``nk.critical_learning_rate``).
Every function here is a pure function of its arguments (seeds included), so the benchmark
script can run them in any order and the chapter can recompute any of them.

This module is the book's, not the library's, and calls ntklib only through its public API.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

import ntklib as nk

from .small_data import standardize

W_STD, B_STD = math.sqrt(2.0), 0.1  # ReLU networks: sigma_w^2 = 2 is ReLU's edge of chaos
DTYPE = torch.float64
RIDGE = 1e-8  # relative ridge of "kernel regression": lambda = RIDGE * mean(diag K)


@dataclass(frozen=True)
class Split:
    """Standardised digits with +-1 parity targets: X (n, 64), y (n,), X_test (m, 64), y_test (m,)."""

    X: Tensor
    y: Tensor
    X_test: Tensor
    y_test: Tensor


def digits_split(n_train: int, n_test: int, seed: int = 0, dtype: torch.dtype = DTYPE) -> Split:
    """``n_train`` training and ``n_test`` test digits drawn without overlap by
    ``numpy.random.default_rng(seed).permutation``, standardised with training statistics."""
    from sklearn.datasets import load_digits

    X, labels = load_digits(return_X_y=True)
    if n_train < 1 or n_test < 1 or n_train + n_test > len(labels):
        raise ValueError(f"n_train + n_test must be between 2 and {len(labels)}; got {n_train} + {n_test}")
    order = np.random.default_rng(seed).permutation(len(labels))
    train, test = order[:n_train], order[n_train : n_train + n_test]
    X_train, X_test = standardize(X[train], X[test])
    parity = np.where(labels % 2 == 0, 1.0, -1.0)
    X_train, X_test, y_train, y_test = (torch.as_tensor(a, dtype=dtype) for a in (X_train, X_test, parity[train],
                                                                                   parity[test]))  # fmt: skip
    return Split(X_train, y_train, X_test, y_test)


def accuracy(f: Tensor, y: Tensor) -> float:
    """Fraction of points whose output has the sign of the +-1 target (an output 0 counts as wrong)."""
    return float((torch.sign(f.reshape(-1)) == y.reshape(-1)).to(torch.float64).mean())


def kernel_regression_accuracy(K: Tensor, K_test: Tensor, split: Split, ridge: float = RIDGE) -> float:
    """Test accuracy of kernel regression ``K(Z, X) (K + lambda I)^-1 y`` with the relative ridge
    lambda = ridge * mean(diag K) (ridge -> 0: the end of training of a network with this
    kernel frozen and f_0 = 0)."""
    alpha = nk.solve_kernel_system(K, split.y, ridge * float(K.diagonal().mean()))
    return accuracy(K_test @ alpha, split.y_test)


def network(parameterization: str, width: int, depth: int, seed: int, activation: str = "relu",
            W_std: float = W_STD, b_std: float = B_STD) -> nk.MLP:  # fmt: skip
    """``nk.MLP`` on the 64 pixels, one output, float64, drawn from ``manual_seed(seed)``."""
    return nk.MLP(64, width, depth, activation=activation, W_std=W_std, b_std=b_std,
                  parameterization=parameterization, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)  # fmt: skip


def loglog_slope(x, y) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float)), 1)[0])


def log_steps(steps: int, per_decade: int = 6) -> list[int]:
    """0 and about ``per_decade`` integer steps per decade from 1 to ``steps`` (both included)."""
    decades = math.log10(max(steps, 1))
    grid = np.unique(np.round(np.logspace(0, decades, max(2, round(per_decade * decades) + 1))).astype(int))
    return sorted({0, *(int(s) for s in grid if 0 < s <= steps), steps})


# ------------------------------------------------------------------ width and parameterisation


def width_run(parameterization: str, width: int, seed: int, *, n_train: int = 128, n_test: int = 500,
              depth: int = 2, steps: int = 300, lr_fraction: float = 0.5) -> dict:  # fmt: skip
    """Train one network at ``lr_fraction`` times its critical learning rate and measure its kernel.

    Split ``seed`` and network ``seed``. The kernel tracker records the empirical NTK on the
    training images at the steps :func:`log_steps`; at the end, kernel regression with the
    initial and with the trained empirical NTK is scored on the test images.

    Returns:
        A dict of floats and lists: lr, critical_lr, loss (first, last), test accuracy of the
        network, the steps of the records and the tracker's distance, velocity, alignment and
        linearisation error, lambda_max of the first and last kernel, and the kernel-regression
        test accuracies ``kernel_initial`` and ``kernel_trained``.
    """
    split = digits_split(n_train, n_test, seed)
    net = network(parameterization, width, depth, seed)
    initial = copy.deepcopy(net)
    tracker = nk.KernelTracker(net, split.X, split.y, keep_kernels=False)
    critical = nk.critical_learning_rate(tracker.ntks[0])
    lr = lr_fraction * critical
    run = nk.train(net, split.X, split.y, lr, steps, X_test=split.X_test, record=[0, steps],
                   record_ntk=log_steps(steps), tracker=tracker, progress=False)  # fmt: skip
    lam = [float(torch.linalg.eigvalsh(K)[-1]) for K in (tracker.ntks[0], tracker.ntks[-1])]
    scores = {"kernel_initial": _kernel_score(initial, split), "kernel_trained": _kernel_score(net, split)}
    return {"parameterization": parameterization, "width": width, "seed": seed, "lr_fraction": lr_fraction, "lr": lr,
            "critical_lr": critical,
            "loss": [float(run.loss[0]), float(run.loss[-1])], "accuracy": accuracy(run.test[-1], split.y_test),
            "steps": tracker.steps, "distance": tracker.distances, "velocity": tracker.velocities,
            "alignment": tracker.alignments, "linearization_error": tracker.linearization_errors,
            "lambda_max": lam, **scores}  # fmt: skip


def infinite_ntk_accuracy(seed: int, *, n_train: int = 128, n_test: int = 500, depth: int = 2) -> float:
    """Test accuracy of kernel regression with the infinite-width NTK Theta of :func:`network`'s
    architecture (NTK or standard parameterisation: both have it; muP has none)."""
    split = digits_split(n_train, n_test, seed)
    options = {"depth": depth, "activation": "relu", "W_std": W_STD, "b_std": B_STD}
    K = nk.infinite_width_kernels(split.X, **options).ntk
    return kernel_regression_accuracy(K, nk.infinite_width_kernels(split.X_test, split.X, **options).ntk, split)


# ------------------------------------------------------------------------- learning-rate phases


def catapult_run(lr_ratio: float, *, width: int = 2048, depth: int = 1, seed: int = 0, n_train: int = 128,
                 n_test: int = 500, steps: int = 200, dense_until: int = 60) -> dict:  # fmt: skip
    """Train an NTK-parameterised network at ``lr_ratio`` times its critical learning rate
    2n / lambda_max(Theta_hat_0) (Lewkowycz et al. 2020).

    The loss is recorded at every step, lambda_max of the empirical NTK at every step up to
    ``dense_until`` and every 20 steps after. A run whose loss becomes NaN/inf (``nk.train``
    raises) is reported with the step where it diverged and what was recorded until then.

    Returns:
        dict: lr_ratio, critical_lr, loss (per step), ntk_steps, lambda_max (at ntk_steps),
        diverged_at (a step, or None), and, for runs that converged, the final test accuracy
        and the kernel's relative distance from its start.
    """
    split = digits_split(n_train, n_test, seed)
    net = network("ntk", width, depth, seed)
    tracker = nk.KernelTracker(net, split.X, split.y, keep_kernels=True)
    critical = nk.critical_learning_rate(tracker.ntks[0])
    schedule = sorted({*range(1, min(dense_until, steps) + 1), *range(0, steps + 1, 20), steps})
    losses: list[float] = []
    diverged_at = None
    final = {}
    try:
        run = nk.train(net, split.X, split.y, lr_ratio * critical, steps, X_test=split.X_test, record=1,
                       record_ntk=[s for s in schedule if s > 0], tracker=tracker, progress=False)  # fmt: skip
        losses = [float(v) for v in run.loss]
        final = {"accuracy": accuracy(run.test[-1], split.y_test), "distance": tracker.distances[-1],
                 "kernel_initial": _kernel_score(network("ntk", width, depth, seed), split),
                 "kernel_trained": _kernel_score(net, split)}  # fmt: skip
    except ValueError as error:
        if "diverged at step" not in str(error):
            raise
        diverged_at = int(str(error).split("diverged at step ")[1].split(":")[0])
        # The finite losses before the divergence, from the same initialisation again.
        again = nk.train(network("ntk", width, depth, seed), split.X, split.y, lr_ratio * critical, diverged_at - 1,
                         record=1, progress=False)  # fmt: skip
        losses = [float(v) for v in again.loss]
    lam = [float(torch.linalg.eigvalsh(K)[-1]) for K in tracker.ntks]
    return {"lr_ratio": lr_ratio, "critical_lr": critical, "loss": losses, "ntk_steps": tracker.steps,
            "lambda_max": lam, "diverged_at": diverged_at, **final}  # fmt: skip


def _kernel_score(model: nk.MLP, split: Split) -> float:
    """Test accuracy of kernel regression with the model's empirical NTK."""
    K = nk.empirical_ntk(model, split.X)
    return kernel_regression_accuracy(K, nk.empirical_ntk(model, split.X_test, split.X), split)


# ------------------------------------------------------------------------------ order and chaos


def erf_edge(b_var: float, low: float = 0.5, high: float = 4.0) -> float:
    """sigma_w^2 where chi_1 = 1 for erf at sigma_b^2 = b_var: the root of chi_1 - 1 from
    ``nk.signal_propagation`` by Brent's method (a few seconds: just above the edge the
    correlation map converges slowly)."""
    from scipy.optimize import brentq

    def excess(w_var: float) -> float:
        return nk.signal_propagation("erf", math.sqrt(w_var), math.sqrt(b_var), iterations=200_000).chi_1 - 1

    return float(brentq(excess, low, high, xtol=1e-12, rtol=1e-14))


def kernel_descent_loss_ratio(K: Tensor, y: Tensor, lr: float, steps: int) -> float:
    """L_t / L_0 of kernel gradient descent r_{t+1} = (I - lr K / n) r_t from f_0 = 0 (r_0 = -y),
    in K's eigenbasis: sum_i (1 - lr lambda_i / n)^(2t) (v_i . y)^2 / |y|^2."""
    lam, V = torch.linalg.eigh(K)
    share = (V.T @ y) ** 2
    return float(((1 - lr * lam / K.shape[0]) ** (2 * steps) * share).sum() / share.sum())


def depth_kernels(split: Split, W_var: float, b_var: float, max_depth: int, activation: str = "erf") -> list[nk.Kernels]:
    """Infinite-width kernels on the training then the test images, depths 1 .. max_depth."""
    X = torch.cat([split.X, split.X_test])
    return nk.infinite_width_kernels_by_depth(X, max_depth=max_depth, activation=activation, W_std=math.sqrt(W_var),
                                              b_std=math.sqrt(b_var))  # fmt: skip


def depth_point(K: Tensor, split: Split, steps: int, lr_fraction: float = 0.5) -> dict:
    """What the NTK K (on training + test images) of one (sigma_w^2, depth) predicts: its
    condition number on the training images, the loss ratio of ``steps`` steps of kernel
    gradient descent at lr_fraction times its critical learning rate, and the test accuracy of
    kernel regression with it."""
    n = split.X.shape[0]
    K_train, K_test = K[:n, :n], K[n:, :n]
    lam = torch.linalg.eigvalsh(K_train)
    lr = lr_fraction * nk.critical_learning_rate(K_train)
    return {"condition": float(lam[-1] / lam[0]), "loss_ratio": kernel_descent_loss_ratio(K_train, split.y, lr, steps),
            "accuracy": kernel_regression_accuracy(K_train, K_test, split)}  # fmt: skip


def finite_depth_run(W_var: float, b_var: float, depth: int, *, width: int = 128, seed: int = 0, n_train: int = 128,
                     n_test: int = 500, steps: int = 300, lr_fraction: float = 0.5) -> dict:  # fmt: skip
    """A finite erf network of this depth in the NTK parameterisation, trained at lr_fraction
    times the critical learning rate of its infinite-width NTK Theta: its loss ratio L_T / L_0,
    test accuracy, and Theta's predictions for the same run (:func:`depth_point`)."""
    split = digits_split(n_train, n_test, seed)
    options = {"depth": depth, "activation": "erf", "W_std": math.sqrt(W_var), "b_std": math.sqrt(b_var)}
    theta = nk.infinite_width_kernels(torch.cat([split.X, split.X_test]), **options).ntk
    predicted = depth_point(theta, split, steps, lr_fraction)
    lr = lr_fraction * nk.critical_learning_rate(theta[: n_train, : n_train])
    net = nk.MLP(64, width, parameterization="ntk", generator=torch.Generator().manual_seed(seed), dtype=DTYPE, **options)
    lam = torch.linalg.eigvalsh(nk.empirical_ntk(net, split.X))
    out = {"W_var": W_var, "b_var": b_var, "depth": depth, "width": width, "seed": seed, "lr": lr,
           "kernel": predicted, "empirical_condition": float(lam[-1] / lam[0])}  # fmt: skip
    try:
        run = nk.train(net, split.X, split.y, lr, steps, X_test=split.X_test, record=[0, steps], progress=False)
        out.update(loss_ratio=float(run.loss[-1] / run.loss[0]), accuracy=accuracy(run.test[-1], split.y_test),
                   diverged=False)  # fmt: skip
    except ValueError as error:
        if "diverged" not in str(error):
            raise
        out.update(loss_ratio=math.inf, accuracy=float("nan"), diverged=True)
    return out


# ------------------------------------------------------------------------------- the ensemble


def ensemble_members(seeds, times, *, width: int = 1024, depth: int = 1, n_train: int = 64, n_test: int = 64,
                     split_seed: int = 0, lr_fraction: float = 0.25) -> dict:  # fmt: skip
    """Networks of the ensemble (Lee et al. 2019): one per seed, all on the same split, NTK
    parameterisation, trained with the same lr = lr_fraction * 2n / lambda_max(Theta) (Theta the
    infinite-width NTK); their test outputs at the steps ``times``.

    Returns:
        dict: lr, times, and ``test`` as a nested list (members, times, n_test).
    """
    split = digits_split(n_train, n_test, split_seed)
    options = {"depth": depth, "activation": "relu", "W_std": W_STD, "b_std": B_STD}
    lr = lr_fraction * nk.critical_learning_rate(nk.infinite_width_kernels(split.X, **options).ntk)
    times = sorted(int(t) for t in times)
    outputs = []
    for seed in seeds:
        net = network("ntk", width, depth, seed)
        run = nk.train(net, split.X, split.y, lr, times[-1], X_test=split.X_test, record=times, progress=False)
        outputs.append(run.test.tolist())
    return {"lr": lr, "times": times, "test": outputs}


def ensemble_summary(chunks: list[dict], keep: int = 2) -> dict:
    """Pool the outputs of :func:`ensemble_members` chunks (in seed order): the ensemble's mean
    and unbiased variance per time and test point, (T, m) each, its sample covariance of the
    test outputs at the last time, (m, m), and the outputs of the first ``keep`` members."""
    chunks = sorted(chunks, key=lambda c: c["seeds"][0])
    outputs = np.concatenate([np.asarray(c["test"], dtype=float) for c in chunks])  # (M, T, m)
    seeds = [s for c in chunks for s in c["seeds"]]
    return {"lr": chunks[0]["lr"], "times": chunks[0]["times"], "seeds": seeds, "members": len(seeds),
            "mean": outputs.mean(axis=0).tolist(), "variance": outputs.var(axis=0, ddof=1).tolist(),
            "covariance_last": np.cov(outputs[:, -1, :], rowvar=False).tolist(),
            "first_members": outputs[:keep].tolist()}  # fmt: skip
