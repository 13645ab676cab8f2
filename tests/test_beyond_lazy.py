"""Chapter 10's protocol (ntkbook.lazy) and its grid script (benchmarks/beyond_lazy.py) at tiny
sizes, against computations that do not share their code: scikit-learn's digits and kernel ridge
regression, explicit iterations, closed forms and the Jacobian method of the empirical NTK."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ntklib as nk
from ntkbook import lazy

F64 = torch.float64
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script():
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("bench_beyond_lazy", BENCHMARKS / "beyond_lazy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_split_is_standardised_with_training_statistics_and_has_parity_targets():
    from sklearn.datasets import load_digits

    pixels, labels = load_digits(return_X_y=True)
    split = lazy.digits_split(40, 25, seed=3)
    order = np.random.default_rng(3).permutation(len(labels))
    train, test = order[:40], order[40:65]
    assert not set(train) & set(test)
    torch.testing.assert_close(split.y, torch.tensor([1.0 if l % 2 == 0 else -1.0 for l in labels[train]], dtype=F64))
    torch.testing.assert_close(split.y_test, torch.tensor([1.0 if l % 2 == 0 else -1.0 for l in labels[test]], dtype=F64))
    std = pixels[train].std(axis=0)
    varying = std > 0
    X = split.X.numpy()
    np.testing.assert_allclose(X.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(X[:, varying].std(axis=0), 1, rtol=1e-12)
    # The test images use the training mean and scale, not their own.
    expected = (pixels[test][:, varying] - pixels[train][:, varying].mean(axis=0)) / std[varying]
    np.testing.assert_allclose(split.X_test.numpy()[:, varying], expected, rtol=1e-12)
    with pytest.raises(ValueError, match="n_train \\+ n_test must be between 2 and 1797"):
        lazy.digits_split(1700, 200)


def test_accuracy_and_kernel_regression_against_scikit_learn():
    from sklearn.kernel_ridge import KernelRidge

    assert lazy.accuracy(torch.tensor([0.3, -2.0, 0.0, 1.0]), torch.tensor([1.0, -1.0, 1.0, -1.0])) == 0.5
    split = lazy.digits_split(50, 40, seed=1)
    K = nk.gaussian_kernel(split.X, sigma=8.0)
    K_test = nk.gaussian_kernel(split.X_test, split.X, sigma=8.0)
    ridge = 1e-3
    reference = KernelRidge(alpha=ridge * float(K.diagonal().mean()), kernel="precomputed")
    reference.fit(K.numpy(), split.y.numpy())
    expected = float(np.mean(np.sign(reference.predict(K_test.numpy())) == split.y_test.numpy()))
    assert lazy.kernel_regression_accuracy(K, K_test, split, ridge=ridge) == expected


def test_loglog_slope_and_log_steps():
    x = np.array([3.0, 10.0, 40.0, 200.0])
    assert lazy.loglog_slope(x, 7 * x**-0.75) == pytest.approx(-0.75, abs=1e-12)
    steps = lazy.log_steps(300)
    assert steps[0] == 0 and steps[1] == 1 and steps[-1] == 300
    assert steps == sorted(set(steps))
    gaps = np.diff(np.log10(steps[1:]))  # about six per decade, where integers allow it
    assert gaps[steps[1:].index(10) :].max() < 0.25 and len(steps) >= 6 * 2
    assert lazy.log_steps(0) == [0] and lazy.log_steps(1) == [0, 1]


def test_kernel_descent_loss_ratio_is_the_iteration():
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(12, 5, generator=gen, dtype=F64)
    K, y = A @ A.T + 0.1 * torch.eye(12, dtype=F64), torch.randn(12, generator=gen, dtype=F64)
    lr, steps = 0.7 * nk.critical_learning_rate(K), 37
    r = -y.clone()
    for _ in range(steps):
        r = r - lr / 12 * K @ r
    assert lazy.kernel_descent_loss_ratio(K, y, lr, steps) == pytest.approx(float(r @ r / (y @ y)), rel=1e-10)


def test_erf_edge_against_the_closed_form_length_and_slope_maps():
    """For erf, E[erf(sqrt(q) u)^2] = (2/pi) arcsin(2q / (1 + 2q)) and
    E[erf'(sqrt(q) u)^2] = (4/pi) / sqrt(1 + 4q): the edge solves q = sigma_w^2 (2/pi)
    arcsin(2q/(1+2q)) + sigma_b^2 and sigma_w^2 (4/pi) / sqrt(1 + 4q) = 1 together."""
    from scipy.optimize import brentq

    b_var = 0.05
    # On the edge, sigma_w^2 = (pi/4) sqrt(1 + 4q); put it into the length map and solve for q.
    def gap(q):
        w_var = math.pi / 4 * math.sqrt(1 + 4 * q)
        return w_var * 2 / math.pi * math.asin(2 * q / (1 + 2 * q)) + b_var - q

    q = brentq(gap, 1e-3, 10.0)
    assert lazy.erf_edge(b_var) == pytest.approx(math.pi / 4 * math.sqrt(1 + 4 * q), rel=1e-9)


def test_depth_point_against_direct_computations():
    from sklearn.kernel_ridge import KernelRidge

    split = lazy.digits_split(30, 20, seed=2)
    kernels = lazy.depth_kernels(split, 1.5, 0.05, max_depth=3)
    direct = nk.infinite_width_kernels(torch.cat([split.X, split.X_test]), depth=3, activation="erf",
                                       W_std=1.5**0.5, b_std=0.05**0.5).ntk  # fmt: skip
    torch.testing.assert_close(kernels[2].ntk, direct)
    point = lazy.depth_point(direct, split, steps=25)
    K, K_test = direct[:30, :30].numpy(), direct[30:, :30].numpy()
    assert point["condition"] == pytest.approx(np.linalg.cond(K), rel=1e-6)
    lr = 0.5 * 2 * 30 / np.linalg.eigvalsh(K)[-1]
    r = -split.y.numpy()
    for _ in range(25):
        r = r - lr / 30 * K @ r
    assert point["loss_ratio"] == pytest.approx(float(r @ r / (split.y.numpy() @ split.y.numpy())), rel=1e-8)
    reference = KernelRidge(alpha=lazy.RIDGE * float(np.trace(K) / 30), kernel="precomputed").fit(K, split.y.numpy())
    assert point["accuracy"] == float(np.mean(np.sign(reference.predict(K_test)) == split.y_test.numpy()))


def test_width_run_against_the_jacobian_ntk_and_the_loss():
    row = lazy.width_run("mup", 24, seed=1, n_train=20, n_test=15, steps=12)
    split = lazy.digits_split(20, 15, seed=1)
    start = lazy.network("mup", 24, 2, seed=1)
    theta_0 = nk.empirical_ntk(start, split.X, method="jacobian")
    assert row["critical_lr"] == pytest.approx(2 * 20 / float(torch.linalg.eigvalsh(theta_0)[-1]), rel=1e-10)
    assert row["lr"] == pytest.approx(0.5 * row["critical_lr"], rel=1e-14)
    # Train the same network again by hand: plain gradient descent on 1/(2n) |f - y|^2.
    net = lazy.network("mup", 24, 2, seed=1)
    params = list(net.parameters())
    for _ in range(12):
        loss = 0.5 * (net(split.X)[:, 0] - split.y).square().mean()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= row["lr"] * g
    with torch.no_grad():
        final_loss = float(0.5 * (net(split.X)[:, 0] - split.y).square().mean())
        test_accuracy = float((torch.sign(net(split.X_test)[:, 0]) == split.y_test).double().mean())
    assert row["loss"][1] == pytest.approx(final_loss, rel=1e-9)
    assert row["accuracy"] == test_accuracy
    theta_t = nk.empirical_ntk(net, split.X, method="jacobian")
    assert row["distance"][-1] == pytest.approx(float((theta_t - theta_0).norm() / theta_0.norm()), rel=1e-8)
    assert row["lambda_max"][1] == pytest.approx(float(torch.linalg.eigvalsh(theta_t)[-1]), rel=1e-8)
    assert row["steps"] == lazy.log_steps(12) and len(row["velocity"]) == len(row["steps"]) - 1
    K_test = nk.empirical_ntk(net, split.X_test, split.X, method="jacobian")
    assert row["kernel_trained"] == lazy.kernel_regression_accuracy(theta_t, K_test, split)


def test_catapult_run_reports_the_divergence_step_and_the_losses_before_it():
    stable = lazy.catapult_run(0.5, width=32, n_train=16, n_test=10, steps=15, dense_until=5)
    split = lazy.digits_split(16, 10, 0)
    net = lazy.network("ntk", 32, 1, 0)
    with torch.no_grad():
        assert stable["loss"][0] == pytest.approx(float(0.5 * (net(split.X)[:, 0] - split.y).square().mean()))
    assert stable["diverged_at"] is None and len(stable["loss"]) == 16
    assert stable["ntk_steps"] == [0, 1, 2, 3, 4, 5, 15]
    theta = nk.empirical_ntk(net, split.X, method="jacobian")
    assert stable["lambda_max"][0] == pytest.approx(float(torch.linalg.eigvalsh(theta)[-1]), rel=1e-10)
    wild = lazy.catapult_run(8.0, width=32, n_train=16, n_test=10, steps=200)
    step = wild["diverged_at"]
    assert step is not None and len(wild["loss"]) == step
    assert all(math.isfinite(v) for v in wild["loss"])
    with pytest.raises(ValueError, match=f"diverged at step {step}:"):
        nk.train(lazy.network("ntk", 32, 1, 0), split.X, split.y, 8.0 * wild["critical_lr"], step)


def test_finite_depth_run_uses_the_infinite_width_critical_rate():
    row = lazy.finite_depth_run(2.5, 0.05, 3, width=16, n_train=20, n_test=10, steps=5)
    split = lazy.digits_split(20, 10, 0)
    theta = nk.infinite_width_kernels(split.X, depth=3, activation="erf", W_std=2.5**0.5, b_std=0.05**0.5).ntk
    assert row["lr"] == pytest.approx(0.5 * 2 * 20 / float(torch.linalg.eigvalsh(theta)[-1]), rel=1e-10)
    assert 0 < row["loss_ratio"] < 1 and not row["diverged"]
    assert set(row["kernel"]) == {"condition", "loss_ratio", "accuracy"}


def test_ensemble_members_are_independent_training_runs():
    out = lazy.ensemble_members([3, 4], [0, 2, 5], width=16, n_train=12, n_test=7)
    split = lazy.digits_split(12, 7, 0)
    theta = nk.infinite_width_kernels(split.X, depth=1, W_std=lazy.W_STD, b_std=lazy.B_STD).ntk
    assert out["lr"] == pytest.approx(0.25 * 2 * 12 / float(torch.linalg.eigvalsh(theta)[-1]), rel=1e-10)
    assert np.asarray(out["test"]).shape == (2, 3, 7)
    for member, seed in enumerate([3, 4]):
        net = lazy.network("ntk", 16, 1, seed)
        with torch.no_grad():
            np.testing.assert_allclose(out["test"][member][0], net(split.X_test)[:, 0].numpy(), rtol=1e-12)
        run = nk.train(net, split.X, split.y, out["lr"], 5, X_test=split.X_test, record=[5])
        np.testing.assert_allclose(out["test"][member][2], run.test[-1].numpy(), rtol=1e-12)
    assert out["test"][0][1] != out["test"][1][1]


def test_ensemble_summary_pools_the_chunks_in_seed_order():
    gen = np.random.default_rng(0)
    outputs = gen.normal(size=(5, 3, 4))  # members, times, test points
    chunks = [{"seeds": [3, 4], "lr": 0.1, "times": [0, 1, 2], "test": outputs[3:].tolist()},
              {"seeds": [0, 1, 2], "lr": 0.1, "times": [0, 1, 2], "test": outputs[:3].tolist()}]  # fmt: skip
    summary = lazy.ensemble_summary(chunks)
    assert summary["seeds"] == [0, 1, 2, 3, 4] and summary["members"] == 5
    for j in range(4):
        column = outputs[:, 1, j]
        assert summary["mean"][1][j] == pytest.approx(sum(column) / 5)
        assert summary["variance"][1][j] == pytest.approx(sum((column - column.mean()) ** 2) / 4)
    last = outputs[:, -1, :] - outputs[:, -1, :].mean(axis=0)
    np.testing.assert_allclose(summary["covariance_last"], last.T @ last / 4, rtol=1e-12)
    np.testing.assert_array_equal(summary["first_members"], outputs[:2])


def test_script_writes_every_grid_and_its_rows_are_the_protocols(tmp_path):
    script = load_script()
    out = tmp_path / "beyond_lazy.json"
    record = script.main(["--workers", "1", "--widths", "8", "--seeds", "0", "--trained-seeds", "1", "--steps", "4",
                          "--n-train", "12",
                          "--n-test", "9", "--catapult-width", "16", "8", "--catapult-steps", "6", "--max-depth", "3",
                          "--finite-depths", "2", "--finite-width", "8", "--ensemble", "2", "1", "8",
                          "--out", str(out)])  # fmt: skip
    stored = json.loads(out.read_text())
    assert stored == json.loads(json.dumps(record))
    assert [r["parameterization"] for r in stored["width"]] == ["mup", "ntk", "standard"]
    again = lazy.width_run("ntk", 8, 0, n_train=12, n_test=9, steps=4)
    assert stored["width"][1] == json.loads(json.dumps(script.rounded(again)))
    assert script.rounded(1 / 3, 4) == 0.3333 and script.rounded([2e-7 / 3], 2) == [6.7e-08]
    trained = [(r["parameterization"], r["width"], r["lr_fraction"], r["seed"]) for r in stored["trained"]]
    assert trained == sorted((p, w, f, 1) for p, w, f in script.Settings().trained)
    assert [r["seed"] for r in stored["infinite"]] == [0, 1]
    assert [r["lr_ratio"] for r in stored["catapult"] if r["depth"] == 1] == list(script.Settings().catapult[0][2])
    assert len(stored["depth"]) == len(script.Settings().w_vars) and len(stored["depth"][0]["condition"]) == 3
    edge = stored["erf_edge"]
    assert len(stored["finite"]) == 3 and sorted({r["W_var"] for r in stored["finite"]}) == [1.0, edge, 2.5]
    assert nk.signal_propagation("erf", edge**0.5, 0.05**0.5, iterations=200_000).chi_1 == pytest.approx(1, abs=1e-9)
    assert stored["ensemble"]["seeds"] == [0, 1] and stored["ensemble"]["members"] == 2
    assert stored["total_seconds"] > 0 and set(stored["machine"]) >= {"cpus", "torch"}
