"""ntkbook.images (chapter 9's protocol) and benchmarks/conv_digits.py at tiny sizes: every code
path against an independent computation, never timing."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import ntklib as nk
from ntkbook import images
from ntkbook import small_data as bm

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return images.load_digits_images()


def test_digits_are_the_sklearn_pixels_over_16(digits):
    from sklearn.datasets import load_digits

    X, y = digits
    data = load_digits()
    assert X.shape == (1797, 1, 8, 8) and X.dtype == F64 and y.dtype == np.int64
    np.testing.assert_array_equal(X.reshape(1797, 64).numpy(), data.data / 16.0)  # .data, not .images
    np.testing.assert_array_equal(y, data.target)
    assert float(X.min()) == 0.0 and float(X.max()) == 1.0


def test_shift_moves_pixels_as_index_arithmetic():
    A = torch.randn(2, 3, 5, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    for down, right in [(1, 0), (0, -2), (2, 3), (-1, -1)]:
        circular, zero = images.shift(A, down, right, True), images.shift(A, down, right, False)
        for i in range(5):
            for j in range(4):
                source = (i - down, j - right)
                assert torch.equal(circular[..., i, j], A[..., source[0] % 5, source[1] % 4])
                inside = 0 <= source[0] < 5 and 0 <= source[1] < 4
                expected = A[..., source[0], source[1]] if inside else torch.zeros(2, 3, dtype=F64)
                assert torch.equal(zero[..., i, j], expected)


def one_layer_by_hand(images_: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Sigma, Theta of conv_net("gap", depth=1) from patches and the arc-cosine formulas."""
    patches = F.unfold(images_, 3, padding=1).numpy()
    sigma1 = images.W_STD**2 * np.einsum("afp,bfq->abpq", patches, patches) / 9 + images.B_STD**2
    var = np.einsum("aapp->ap", sigma1)
    norms = np.sqrt(var[:, None, :, None] * var[None, :, None, :])
    cos = np.clip(sigma1 / norms, -1, 1)
    angle = np.arccos(cos)
    relu = norms / (2 * np.pi) * (np.sin(angle) + (np.pi - angle) * cos)
    step = (np.pi - angle) / (2 * np.pi)
    w2, b2 = images.READOUT_W_STD**2, images.READOUT_B_STD**2
    sigma = w2 * relu.mean(axis=(2, 3)) + b2
    return sigma, sigma + w2 * (step * sigma1).mean(axis=(2, 3))


def test_conv_net_kernels_match_a_hand_computation(digits):
    X, _ = digits
    sigma, theta = one_layer_by_hand(X[:4])
    kernels = images.conv_net("gap", depth=1).kernels(X[:4])
    np.testing.assert_allclose(kernels.nngp.numpy(), sigma, rtol=1e-12)
    np.testing.assert_allclose(kernels.ntk.numpy(), theta, rtol=1e-12)
    with pytest.raises(ValueError, match="readout must be 'gap' or 'flatten'"):
        images.conv_net("max")


def test_residual_kernel_matches_its_finite_networks(digits):
    """Monte Carlo of 16 finite residual CNNs of 64 channels: 5 standard errors plus O(1/k)."""
    X, _ = digits
    three = X[[0, 5, 9]]
    exact = images.residual_net().kernels(three)
    mc = nk.monte_carlo_kernels(images.residual_net(channels=64), three, n_samples=16,
                                generator=torch.Generator().manual_seed(1))  # fmt: skip
    for name in ("nngp", "ntk"):
        K, mean, se = getattr(exact, name), getattr(mc, name), getattr(mc, f"{name}_stderr")
        assert bool(((mean - K).abs() <= 5 * se + 3 * K.abs().max() / 64).all()), name


def test_gram_matrices_are_the_kernels_of_every_pair(digits):
    X, _ = digits
    A = X[:10]
    rows, cols = [1, 4, 7], [0, 2, 9, 3]
    grams = images.all_grams({name: images.conv_grams(A, name) for name in images.CONV_NETS}, images.cheap_grams(A))
    assert set(grams) == set(images.KERNEL_METHODS)
    for method, (net, which) in images.CONV_METHODS.items():
        direct = getattr(images.network(net).kernels(A[rows], A[cols]), which)
        torch.testing.assert_close(grams[method][None][rows][:, cols], direct, rtol=1e-12, atol=1e-14)
    flat = A.reshape(10, -1)
    for depth in images.FC_DEPTHS:
        direct = nk.infinite_width_kernels(flat[rows], flat[cols], depth=depth, W_std=images.W_STD,
                                           b_std=images.B_STD)  # fmt: skip
        torch.testing.assert_close(grams["fc_ntk"][depth][rows][:, cols], direct.ntk, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grams["fc_nngp"][depth][rows][:, cols], direct.nngp, rtol=1e-12, atol=1e-14)
    for ell in images.BANDWIDTHS:
        d2 = ((flat[rows][:, None] - flat[cols][None]) ** 2).sum(-1)
        torch.testing.assert_close(grams["gaussian"][ell][rows][:, cols], torch.exp(-d2 / (2 * ell**2)))


def test_fit_kernel_on_precomputed_grams_equals_kernels_computed_per_split(digits):
    X, y = digits
    keep = np.arange(0, 1797, 15)  # 120 images
    Xs, ys = X[keep], y[keep]
    train, test = np.arange(0, 120, 2), np.arange(1, 120, 2)
    grams = images.cheap_grams(Xs)
    pred, choice = images.fit_kernel(grams["fc_ntk"], ys, train, test, seed=3)

    def on_the_fly(P, Q):  # the images themselves, flattened: no precomputed matrix
        by_depth = nk.infinite_width_kernels_by_depth(P, Q, max_depth=5, W_std=images.W_STD, b_std=images.B_STD)
        return {depth: by_depth[depth - 1].ntk for depth in images.FC_DEPTHS}

    F_test, direct_choice = bm.kernel_ridge_cv(on_the_fly, Xs[train].flatten(1), images.one_hot(ys[train]),
                                               Xs[test].flatten(1), 3, ridges=images.RIDGES)  # fmt: skip
    assert choice == direct_choice
    np.testing.assert_array_equal(pred, F_test.argmax(1).numpy())
    assert np.mean(pred == ys[test]) > 0.8


def test_nearest_neighbour_accuracy_equals_scikit_learns(digits):
    from sklearn.neighbors import KNeighborsClassifier

    X, y = digits
    flat, labels = X[:200].flatten(1), y[:200]
    K = images.cheap_grams(X[:200])["fc_ntk"][2]
    diag = K.diagonal()
    distance = (1 - K / (diag[:, None] * diag[None, :]).sqrt()).numpy()  # 1 - cosine
    hits = 0
    for i in range(200):
        others = np.delete(np.arange(200), i)
        knn = KNeighborsClassifier(1, metric="precomputed").fit(distance[np.ix_(others, others)], labels[others])
        hits += int(knn.predict(distance[i, others][None])[0] == labels[i])
    assert images.nearest_neighbour_accuracy(K, labels) == pytest.approx(hits / 200, abs=1e-12)
    assert flat.shape == (200, 64)


def test_mean_ci_is_students_t_interval():
    from scipy.stats import t

    values = [0.91, 0.95, 0.93, 0.97, 0.9]
    mean, half = images.mean_ci(values)
    low, high = t.interval(0.95, 4, loc=np.mean(values), scale=np.std(values, ddof=1) / math.sqrt(5))
    assert mean == pytest.approx(np.mean(values)) and half == pytest.approx((high - low) / 2)


def test_splits_are_stratified_disjoint_and_repeatable(digits):
    _, y = digits
    settings = images.Settings(sizes=(10, 40), seeds=(0, 1))
    outer = images.outer_splits(y, settings)
    assert len(outer) == 10 and [(r, f) for r, f, _, _ in outer][:6] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0)]
    for _, _, train, test in outer:
        assert len(set(train) & set(test)) == 0 and len(train) + len(test) == 1797
        assert np.bincount(y[test], minlength=10).min() >= 34
    few = images.few_shot_splits(y, settings)
    assert [(s, n) for s, n, _, _ in few] == [(0, 10), (0, 40), (1, 10), (1, 40)]
    for seed, size, train, test in few:
        assert len(train) == size and not set(train) & set(test) and len(test) == 540
        assert np.bincount(y[train], minlength=10).min() == size // 10  # stratified
    assert np.array_equal(few[0][3], few[1][3]) and not np.array_equal(few[0][3], few[2][3])
    again = images.few_shot_splits(y, settings)
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(few, again))
    with pytest.raises(ValueError, match="size 5 out of range"):
        images.few_shot_splits(y, images.Settings(sizes=(5,), seeds=(0,)))


def test_gradient_descent_run_follows_the_cntk_flow_when_wide(digits):
    """256 channels, 10 images, 20 steps: the finite network's test outputs stay close to the
    CNTK's flow from its own f0 (the NTK regime); and the flow curve's last point, t = inf,
    is ridgeless kernel regression computed here with a direct solve."""
    X, y = digits
    keep = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(10)])  # 20 images
    Xs, ys = X[keep], y[keep]
    train, test = np.arange(0, 20, 2), np.arange(1, 20, 2)
    theta = images.conv_net("gap").kernels(Xs).ntk
    settings = images.Settings(channels=256, gd_steps=20)
    out = images.train_gd(Xs, ys, train, test, theta, seed=0, settings=settings)
    K = theta[np.ix_(train, train)]
    assert out["lr"] == pytest.approx(10 / float(torch.linalg.eigvalsh(K)[-1]))
    assert out["rms_gap"] < 0.05
    alpha = torch.linalg.solve(K, images.one_hot(ys[train]))
    regression = (theta[np.ix_(test, train)] @ alpha).argmax(1).numpy()
    assert out["curve"][-1] == pytest.approx(np.mean(regression == ys[test]))
    assert len(out["curve"]) == len(images.FLOW_TIMES)


def test_adam_tuning_picks_the_best_validation_point(digits):
    X, y = digits
    keep = np.concatenate([np.flatnonzero(y == c)[:6] for c in range(10)])
    settings = images.Settings(channels=4, adam_lrs=(1e-3, 1e-2), adam_max_steps=6, adam_every=3)
    tuning = images.tune_adam(X[keep], y[keep], np.arange(60), settings)
    assert tuning["read_at"] == [0, 3, 6] and tuning["n_fit"] + tuning["n_val"] == 60
    table = tuning["validation"]
    best = max(acc for lr in table for acc in table[lr])
    assert table[str(tuning["lr"])][tuning["read_at"].index(tuning["steps"])] == best
    # Reading the predictions along the way does not change the run.
    along = images.train_adam(X[keep], y[keep], np.arange(40), np.arange(40, 60), 0, 1e-2, 6, 4, every=3)
    (end,) = images.train_adam(X[keep], y[keep], np.arange(40), np.arange(40, 60), 0, 1e-2, 6, 4)
    assert len(along) == 3 and np.array_equal(along[-1], end)


def test_locally_connected_layer_with_tied_weights_is_a_convolution():
    gen = torch.Generator().manual_seed(0)
    layer = images.LocallyConnected(2, 3, (5, 4), W_std=1.3, b_std=0.2, generator=gen)
    with torch.no_grad():
        for module in layer.pixels:  # tie every pixel's weights and bias to the first pixel's
            module.weight.copy_(layer.pixels[0].weight)
            module.bias.copy_(layer.pixels[0].bias)
    x = torch.randn(2, 2, 5, 4, dtype=F64, generator=gen)
    first = layer.pixels[0]
    weight = (first.weight * first.weight_scale).reshape(3, 2, 3, 3)
    expected = F.conv2d(x, weight, padding=1) + (first.bias_scale * first.bias)[:, None, None]
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_locally_connected_network_has_the_cnn_flatten_kernels(digits):
    """Novak et al. (2019): without pooling, the CNN-GP is the locally connected network's GP."""
    X, _ = digits
    three = X[[0, 5, 9]]
    exact = images.conv_net("flatten").kernels(three)
    gen, k, count = torch.Generator().manual_seed(2), 32, 16
    draws = {"nngp": [], "ntk": []}
    for _ in range(count):
        lcn = images.locally_connected_net(k, "flatten", generator=gen)
        draws["nngp"].append(images.readout_nngp(lcn, three))
        draws["ntk"].append(nk.empirical_ntk(lcn, three))
    for name, values in draws.items():
        stack, K = torch.stack(values), getattr(exact, name)
        se = stack.std(0) / count**0.5
        assert bool(((stack.mean(0) - K).abs() <= 5 * se + 3 * K.abs().max() / k).all()), name


def load_script():
    spec = importlib.util.spec_from_file_location("bench_conv_digits", ROOT / "benchmarks" / "conv_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_runs_end_to_end_and_its_rows_can_be_recomputed(tmp_path, digits):
    out = tmp_path / "conv_digits.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "conv_digits.py"), "--images", "100", "--channels", "2",
               "--gd-steps", "2", "--adam-max-steps", "2", "--adam-every", "1", "--splits", "2", "--repeats", "1",
               "--sizes", "10", "20", "--seeds", "0", "--workers", "1", "--out", str(out)]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
    result = json.loads(out.read_text())
    assert result["n_images"] == 100 and result["settings"]["channels"] == 2
    assert result["protocol"]["methods"] == list(images.METHODS)
    assert len(result["grid"]) == len(images.METHODS) * 2
    assert len(result["few_shot"]) == len(images.METHODS) * 2 * 1
    assert {r["method"] for r in result["grid"]} == set(images.METHODS)
    assert len(result["flow_curves"]) == 2 + 2 and result["seconds"]["total"] > 0
    assert result["tuning"]["steps"] in (0, 1, 2) and result["kernels_read_from_cache"] == []
    # The kernel rows again, from the same subsample, with kernels computed here.
    X, y = load_script().subsample(*digits, 100)
    settings = images.Settings(n_splits=2, n_repeats=1)
    repeat, fold, train, test = images.outer_splits(y, settings)[1]
    grams = images.cheap_grams(X)
    for method in ("fc_nngp", "gaussian"):
        pred, choice = images.fit_kernel(grams[method], y, train, test, seed=1)
        (row,) = [r for r in result["grid"] if r["method"] == method and (r["repeat"], r["fold"]) == (repeat, fold)]
        assert row["score"] == pytest.approx(float(np.mean(pred == y[test])), abs=1e-12)
        assert row["choice"]["ridge"] == choice["ridge"] and str(row["choice"]["param"]) == str(choice["param"])
