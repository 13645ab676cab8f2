"""Write neural_tangents_predict_reference.json: neural-tangents' ``predict`` module on small random
cases, the reference for tests/test_dynamics.py.

Not run by the tests (it needs JAX). To refresh, in a separate virtual environment:
    pip install neural-tangents==0.6.5 jax==0.4.30 jaxlib==0.4.30 tf2jax==0.3.6 "numpy<2" "scipy<1.14"
    python tests/data/make_neural_tangents_predict_reference.py

Three kinds of case, all in float64 (jax_enable_x64):
  * "gradient_descent_mse": ``nt.predict.gradient_descent_mse(k_train_train, y_train,
    learning_rate, diag_reg=0.)`` at several times t and at t=None (infinity), on train and test
    points, from non-zero initial outputs fx_train_0, fx_test_0;
  * "gp_inference": ``nt.predict.gp_inference(k_train_train, y_train, diag_reg,
    diag_reg_absolute_scale=True)`` with get="nngp": posterior mean and covariance on test points;
  * "ensemble": ``nt.predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train,
    learning_rate)`` of a stax MLP, get=("nngp", "ntk"), compute_cov=True, at several t and at
    t=None; the kernels it used (train-train, test-train, test-test) are stored too.

neural-tangents normalises time by y_train.size = n k (its loss is the mean over points *and*
outputs); the test converts with lr_ntklib = learning_rate / k.
"""

import json
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

TIMES = [0.0, 0.7, 4.0, 25.0]


def random_psd(rng, n, rank):
    """A A^T / rank + 0.1 I with A (n, rank): PSD and well conditioned."""
    A = rng.randn(n, rank)
    return A @ A.T / rank + 0.1 * np.eye(n)


def mse_case(rng, n, m, k, learning_rate):
    d = 4
    X, Z = rng.randn(n, d), rng.randn(m, d)
    # A Gaussian kernel on random points: a genuine kernel, with K_test_train consistent with K.
    def gauss(A, B):
        return np.exp(-((A[:, None, :] - B[None, :, :]) ** 2).sum(-1) / (2 * 2.0**2))

    k_train_train, k_test_train = gauss(X, X) + 0.05 * np.eye(n), gauss(Z, X)
    y_train = rng.randn(n, k)
    fx_train_0, fx_test_0 = 0.3 * rng.randn(n, k), 0.3 * rng.randn(m, k)
    predict_fn = nt.predict.gradient_descent_mse(k_train_train, y_train, learning_rate=learning_rate, diag_reg=0.0)
    train_t, test_t = predict_fn(np.array(TIMES), fx_train_0, fx_test_0, k_test_train)
    train_inf, test_inf = predict_fn(None, fx_train_0, fx_test_0, k_test_train)
    return {
        "kind": "gradient_descent_mse", "learning_rate": learning_rate, "times": TIMES,
        "k_train_train": k_train_train.tolist(), "k_test_train": k_test_train.tolist(),
        "y_train": y_train.tolist(), "fx_train_0": fx_train_0.tolist(), "fx_test_0": fx_test_0.tolist(),
        "train_t": np.asarray(train_t).tolist(), "test_t": np.asarray(test_t).tolist(),
        "train_inf": np.asarray(train_inf).tolist(), "test_inf": np.asarray(test_inf).tolist(),
    }


def gp_case(rng, n, m, k, diag_reg):
    K = random_psd(rng, n + m, rank=n + m + 3)
    y_train = rng.randn(n, k)
    predict_fn = nt.predict.gp_inference(K[:n, :n], y_train, diag_reg=diag_reg, diag_reg_absolute_scale=True)
    mean, cov = predict_fn("nngp", K[n:, :n], K[n:, n:])
    return {
        "kind": "gp_inference", "diag_reg": diag_reg,
        "k_train_train": K[:n, :n].tolist(), "k_test_train": K[n:, :n].tolist(), "k_test_test": K[n:, n:].tolist(),
        "y_train": y_train.tolist(), "mean": np.asarray(mean).tolist(), "cov": np.asarray(cov).tolist(),
    }


def ensemble_case(rng, n, m, k, learning_rate, activation, depth, W_std, b_std):
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(64, W_std, b_std), {"erf": stax.Erf, "relu": stax.Relu}[activation]()]
    layers.append(stax.Dense(1, W_std, b_std))
    kernel_fn = stax.serial(*layers)[2]
    x_train, x_test = rng.randn(n, 3), rng.randn(m, 3)
    y_train = rng.randn(n, k)
    predict_fn = nt.predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, learning_rate=learning_rate)
    finite = predict_fn(np.array(TIMES), x_test, ("nngp", "ntk"), compute_cov=True)
    infinite = predict_fn(None, x_test, ("nngp", "ntk"), compute_cov=True)
    k_dd = kernel_fn(x_train, None, ("nngp", "ntk"))
    k_td = kernel_fn(x_test, x_train, ("nngp", "ntk"))
    k_tt = kernel_fn(x_test, None, "nngp")
    out = {
        "kind": "ensemble", "learning_rate": learning_rate, "times": TIMES,
        "activation": activation, "depth": depth, "W_std": W_std, "b_std": b_std,
        "x_train": x_train.tolist(), "x_test": x_test.tolist(), "y_train": y_train.tolist(),
        "nngp_train_train": np.asarray(k_dd.nngp).tolist(), "ntk_train_train": np.asarray(k_dd.ntk).tolist(),
        "nngp_test_train": np.asarray(k_td.nngp).tolist(), "ntk_test_train": np.asarray(k_td.ntk).tolist(),
        "nngp_test_test": np.asarray(k_tt).tolist(),
    }
    for get in ("nngp", "ntk"):
        out[get] = {
            "mean_t": np.asarray(getattr(finite, get).mean).tolist(),
            "cov_t": np.asarray(getattr(finite, get).covariance).tolist(),
            "mean_inf": np.asarray(getattr(infinite, get).mean).tolist(),
            "cov_inf": np.asarray(getattr(infinite, get).covariance).tolist(),
        }
    return out


def main():
    rng = np.random.RandomState(2027)
    cases = [
        mse_case(rng, n=6, m=3, k=1, learning_rate=1.0),
        mse_case(rng, n=5, m=4, k=2, learning_rate=0.5),
        gp_case(rng, n=6, m=3, k=1, diag_reg=0.0),
        gp_case(rng, n=5, m=4, k=2, diag_reg=0.05),
        ensemble_case(rng, n=6, m=3, k=1, learning_rate=1.0, activation="erf", depth=2, W_std=1.3, b_std=0.2),
        ensemble_case(rng, n=5, m=4, k=2, learning_rate=2.0, activation="relu", depth=1, W_std=1.0, b_std=0.1),
    ]
    out = {"neural_tangents": nt.__version__, "jax": jax.__version__, "cases": cases}
    path = Path(__file__).with_name("neural_tangents_predict_reference.json")
    path.write_text(json.dumps(out))
    print(f"wrote {len(cases)} cases ({path.stat().st_size} bytes) to {path}")


if __name__ == "__main__":
    main()
