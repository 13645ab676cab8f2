"""nk.KernelTracker, nk.critical_learning_rate and nk.kernel_distance against direct computations."""

from __future__ import annotations

import math

import pytest
import torch

import ntklib as nk

F64 = torch.float64


def data(n=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=gen, dtype=F64)
    return X, torch.sin(2 * X[:, 0])


def test_critical_learning_rate_separates_convergence_from_divergence():
    """Kernel gradient descent with the kernel converges just below 2n / lambda_max and raises
    (the iterates blow up) just above it."""
    X, y = data()
    K = nk.infinite_width_kernels(X, depth=2).ntk
    lr = nk.critical_learning_rate(K)
    assert lr == pytest.approx(2 * 12 / float(torch.linalg.eigvalsh(K)[-1]), rel=1e-12)
    nk.kernel_gradient_descent(K, y, 0.98 * lr, 3000)
    with pytest.raises(ValueError, match="diverged|unstable|limit"):
        nk.kernel_gradient_descent(K, y, 1.2 * lr, 3000)  # |1 - 2.4| ^ 3000 overflows


def test_kernel_distance_is_scale_free_and_one_for_orthogonal_kernels():
    A = torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=F64)
    B = torch.tensor([[0.0, 0.0], [0.0, 3.0]], dtype=F64)
    assert nk.kernel_distance(A, 5 * A) == pytest.approx(0.0, abs=1e-15)
    assert nk.kernel_distance(A, B) == pytest.approx(1.0)
    assert nk.kernel_distance(A, -A) == pytest.approx(2.0)


def test_tracker_metrics_against_their_definitions():
    X, y = data()
    net = nk.MLP(3, 64, 2, b_std=0.2, generator=torch.Generator().manual_seed(1), dtype=F64)
    tracker = nk.KernelTracker(net, X, y)
    nk.train(net, X, y, lr=0.5, steps=40, record_ntk=[10, 25, 40], tracker=tracker)
    assert tracker.steps == [0, 10, 25, 40] and len(tracker.ntks) == 4
    K0, Ks = tracker.ntks[0], tracker.ntks
    torch.testing.assert_close(K0, nk.empirical_ntk(nk.MLP(3, 64, 2, b_std=0.2, dtype=F64,
                                                           generator=torch.Generator().manual_seed(1)), X, method="jacobian"))  # fmt: skip
    for i, K in enumerate(Ks):
        assert tracker.distance[i] == pytest.approx(float((K - K0).norm() / K0.norm()), rel=1e-12)
        assert tracker.alignment[i] == pytest.approx(float(y @ K @ y / (K.norm() * y.norm() ** 2)), rel=1e-12)
    gaps = [10, 15, 15]
    for i, gap in enumerate(gaps):
        cosine = float((Ks[i] * Ks[i + 1]).sum() / (Ks[i].norm() * Ks[i + 1].norm()))
        assert tracker.velocity[i] == pytest.approx((1 - cosine) / gap, rel=1e-9)
    assert tracker.distance[0] == 0 and bool((tracker.distance[1:] > 0).all())
    assert tracker.linearization_error[0] == 0 and tracker.linearization_error[-1] > 0


def test_linearization_error_vanishes_when_only_the_readout_trains():
    """With the hidden layers frozen the model is linear in its parameters: f_lin = f exactly."""
    X, y = data()
    net = nk.MLP(3, 32, 1, generator=torch.Generator().manual_seed(2), dtype=F64)
    net.hidden.requires_grad_(False)
    tracker = nk.KernelTracker(net, X, y)
    nk.train(net, X, y, lr=0.5, steps=20, record=10, tracker=tracker)
    assert tracker.steps == [0, 10, 20]
    assert float(tracker.linearization_error.max()) < 1e-12
    assert float(tracker.distance.max()) < 1e-12  # and its NTK does not move either


def test_errors():
    X, y = data()
    net = nk.MLP(3, 8, 1, dtype=F64)
    tracker = nk.KernelTracker(net, X)
    with pytest.raises(ValueError, match="step 0 is not after the last recorded step 0"):
        tracker.record(0)
    with pytest.raises(ValueError, match="y must be a tensor of 12 targets"):
        nk.KernelTracker(net, X, y[:5])
    with pytest.raises(ValueError, match=r"needs a model with one output; its NTK has shape \(12, 12, 2, 2\)"):
        nk.KernelTracker(nk.MLP(3, 8, 1, out_features=2, dtype=F64), X)
    with pytest.raises(ValueError, match="tracker follows another model"):
        nk.train(nk.MLP(3, 8, 1, dtype=F64), X, y, lr=0.1, steps=2, tracker=tracker)
    with pytest.raises(ValueError, match="ntk has no positive eigenvalue"):
        nk.critical_learning_rate(torch.zeros(3, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"ntk must be square"):
        nk.critical_learning_rate(torch.zeros(3, 2, dtype=F64))
    assert math.isfinite(tracker.critical_learning_rate())


def test_tracker_bad_models_and_schedules():
    X, y = data()
    frozen = nk.MLP(3, 8, 1, dtype=F64)
    frozen.requires_grad_(False)
    with pytest.raises(ValueError, match=r"has no trainable parameters"):
        nk.KernelTracker(frozen, X)
    with pytest.raises(TypeError, match="tracker must be an nk.KernelTracker; got str"):
        nk.train(nk.MLP(3, 8, 1, dtype=F64), X, y, lr=0.1, steps=2, tracker="every step")
    net = nk.MLP(3, 8, 1, dtype=F64)
    with pytest.raises(ValueError, match="record is empty: nothing would be recorded"):
        nk.train(net, X, y, lr=0.1, steps=2, record=[], tracker=nk.KernelTracker(net, X))
