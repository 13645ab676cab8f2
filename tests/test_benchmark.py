"""ntkbook.small_data (chapter 8's benchmark) at tiny sizes: every code path against an
independent computation, never timing."""

import functools

import numpy as np
import pytest
import torch

import ntklib as nk
from ntkbook import small_data as bm


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    """Fewer Adam steps and trees, one torch thread: the code paths, not the full budget."""
    monkeypatch.setattr(bm, "MLP_STEPS", 40)
    monkeypatch.setattr(bm, "FOREST_TREES", 10)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small(name: str, n: int) -> bm.Dataset:
    data = bm.load_dataset(name)
    keep = np.random.default_rng(0).permutation(len(data.y))[:n]
    return bm.Dataset(data.X[keep], data.y[keep], data.task, data.name)


@pytest.mark.parametrize("name", bm.DATASETS)
def test_load_dataset(name):
    data = bm.load_dataset(name)
    n, d = data.X.shape
    assert data.name == name and data.y.shape == (n,) and n > 100 and d >= 2
    assert data.X.dtype == np.float64 and np.isfinite(data.X).all()
    if data.task == "classification":
        assert set(np.unique(data.y)) == set(range(data.n_classes)) and data.n_classes >= 2
    else:
        assert data.task == "regression" and data.y.dtype == np.float64 and data.n_classes == 0


def test_unknown_dataset():
    with pytest.raises(ValueError, match=r"unknown data set 'mnist'; expected one of: iris, wine"):
        bm.load_dataset("mnist")
    with pytest.raises(ValueError, match="unknown data set"):
        bm.evaluate("mnist", ["ntk"])


def test_loader_errors(monkeypatch):
    def broken():
        raise OSError("file not found: iris.csv")

    monkeypatch.setitem(bm.LOADERS, "iris", (broken, "classification"))
    with pytest.raises(RuntimeError, match=r"could not load data set 'iris' from scikit-learn: file not found"):
        bm.load_dataset("iris")
    monkeypatch.setitem(bm.LOADERS, "iris", (lambda: (np.zeros((5, 2)), np.zeros(4)), "classification"))
    with pytest.raises(RuntimeError, match=r"data set 'iris' is malformed"):
        bm.load_dataset("iris")
    monkeypatch.setitem(bm.LOADERS, "iris", (lambda: (np.full((5, 2), np.nan), np.zeros(5)), "classification"))
    with pytest.raises(RuntimeError, match="malformed"):
        bm.load_dataset("iris")


def test_unknown_method_and_bad_protocol():
    data = small("iris", 30)
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['svm'\]; expected some of: ntk, nngp, gaussian"):
        bm.evaluate(data, ["ntk", "svm"])
    with pytest.raises(ValueError, match="unknown method"):
        bm.fit_predict("svm", data.X, data.y, data.X, data.task, 3, 0)
    with pytest.raises(ValueError, match="methods is empty"):
        bm.evaluate(data, [])
    with pytest.raises(ValueError, match="n_splits >= 2"):
        bm.evaluate(data, ["ntk"], n_splits=1)
    with pytest.raises(ValueError, match="size 500 out of range"):
        bm.few_shot(data, ["ntk"], [500], [0])


def test_every_method_on_iris():
    data = small("iris", 90)
    rows = bm.evaluate(data, bm.METHODS, n_splits=3, n_repeats=1, seed=0)
    assert len(rows) == 3 * len(bm.METHODS)
    assert {r["method"] for r in rows} == set(bm.METHODS) and {r["fold"] for r in rows} == {0, 1, 2}
    for r in rows:  # 3 stratified folds of 90 points: 60 to train, 30 to test, accuracy = k / 30
        assert r["n_train"] == 60 and abs(30 * r["score"] - round(30 * r["score"])) < 1e-12
    for (_, method), (mean, std) in bm.summarize(rows).items():
        scores = [r["score"] for r in rows if r["method"] == method]
        assert (mean, std) == pytest.approx((np.mean(scores), np.std(scores)), abs=1e-15)
        assert mean > 0.6, (method, mean)  # chance is 1/3
    chosen = [r["choice"] for r in rows if r["method"] == "ntk"]
    assert all(c["param"] in bm.DEPTHS and c["ridge"] in bm.RIDGES for c in chosen)


def test_every_method_on_regression():
    data = small("friedman", 60)
    rows = bm.evaluate(data, bm.METHODS, n_splits=2, n_repeats=1, seed=0)
    assert len(rows) == 2 * len(bm.METHODS)
    assert all(np.isfinite(r["score"]) for r in rows)
    assert bm.summarize(rows)[("friedman", "gaussian")][0] > 0.3  # R^2 of a constant is <= 0


def test_every_method_is_perfect_on_a_separable_set():
    """Two classes 20 standard deviations apart: every method, kernels and networks alike, labels
    every test point correctly (a method that predicts the wrong class or mixes up the folds
    would not)."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    X = rng.normal(size=(60, 3)) + 20.0 * y[:, None] * np.array([1.0, -1.0, 0.5])
    data = bm.Dataset(X, y, "classification", "separable")
    rows = bm.evaluate(data, bm.METHODS, n_splits=3, n_repeats=1, seed=0)
    assert [r["method"] for r in rows if r["score"] != 1.0] == []


def test_score_matches_scikit_learn():
    from sklearn.metrics import accuracy_score, r2_score

    rng = np.random.default_rng(1)
    labels, predicted = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
    assert bm.score(labels, predicted, "classification") == pytest.approx(accuracy_score(labels, predicted), abs=1e-15)
    y, f = rng.normal(size=40), rng.normal(size=40)
    assert bm.score(y, f, "regression") == pytest.approx(r2_score(y, f), rel=1e-12)
    assert bm.score(y, y, "regression") == 1.0 and bm.score(y, np.full(40, y.mean()), "regression") == 0.0


def test_standardize_uses_training_statistics():
    rng = np.random.default_rng(0)
    X_train, X_test = rng.normal(3.0, 2.0, (50, 4)), rng.normal(-5.0, 9.0, (20, 4))
    X_train[:, 2] = 1.0  # a constant feature
    A, B = bm.standardize(X_train, X_test)
    np.testing.assert_allclose(A.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(A[:, [0, 1, 3]].std(axis=0), 1.0)
    np.testing.assert_allclose(B, (X_test - X_train.mean(0)) / np.where(X_train.std(0) > 0, X_train.std(0), 1.0))


@pytest.mark.parametrize("method", ["ntk", "gaussian", "polynomial", "random_forest"])
def test_no_leakage_from_the_test_fold(method):
    """A prediction does not depend on the other test points (no statistics from the test fold)."""
    data = small("wine", 80)
    X_train, y_train, X_test = data.X[:60], data.y[:60], data.X[60:]
    alone = bm.fit_predict(method, X_train, y_train, X_test[:1], data.task, 3, seed=0)[0]
    outlier = np.vstack([X_test[:1], 1e3 * np.ones((1, X_test.shape[1])), X_test[1:]])
    together = bm.fit_predict(method, X_train, y_train, outlier, data.task, 3, seed=0)[0]
    assert alone[0] == together[0]


def test_determinism():
    data = small("iris", 60)
    methods = ["ntk", "mlp_narrow", "random_forest"]
    first = bm.evaluate(data, methods, n_splits=2, n_repeats=2, seed=3)
    assert first == bm.evaluate(data, methods, n_splits=2, n_repeats=2, seed=3)
    curves = bm.few_shot(data, ["ntk", "random_forest"], [10, 20], [0, 1])
    assert curves == bm.few_shot(data, ["ntk", "random_forest"], [10, 20], [0, 1])
    assert len(curves) == 2 * 2 * 2 and {r["n_train"] for r in curves} == {10, 20}


def test_kernel_ridge_cv_matches_kernel_ridge():
    """The selected model's predictions equal nk.KernelRidge with the chosen kernel and ridge,
    and a kernel that fits a linear target exactly beats one that cannot."""
    gen = torch.Generator().manual_seed(0)
    X, Z = torch.randn(40, 3, generator=gen, dtype=torch.float64), torch.randn(7, 3, generator=gen, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    kernels = {"linear": nk.linear_kernel, "narrow": functools.partial(nk.gaussian_kernel, sigma=0.05)}
    F, choice = bm.kernel_ridge_cv(lambda A, B: {k: f(A, B) for k, f in kernels.items()}, X, y[:, None], Z, seed=0)
    assert choice["param"] == "linear" and choice["ridge"] == min(bm.RIDGES)
    K = kernels["linear"]
    ridge = choice["ridge"] * float(K(X, X).diagonal().mean())
    mean = float(y.mean())
    reference = nk.KernelRidge(K, ridge=ridge).fit(X, y - mean).predict(Z) + mean
    torch.testing.assert_close(F[:, 0], reference)


def test_summaries():
    rows = [dict(dataset=d, method=m, repeat=0, fold=f, score=s)
            for d, scores in {"a": {"ntk": [0.9, 0.8], "rf": [0.7, 0.8]}, "b": {"ntk": [0.5, 0.5], "rf": [0.6, 0.7]}}.items()
            for m, ss in scores.items() for f, s in enumerate(ss)]  # fmt: skip
    table = bm.summarize(rows)
    assert table[("a", "ntk")] == pytest.approx((0.85, 0.05))
    assert bm.average_ranks(rows) == {"ntk": 1.5, "rf": 1.5}
    paired = bm.paired_comparison(rows)["rf"]
    assert (paired["wins"], paired["ties"], paired["losses"]) == (1, 1, 2)
    assert paired["mean_diff"] == pytest.approx((0.2 + 0.0 - 0.1 - 0.2) / 4)
    text = bm.format_table(["method", "score"], [["ntk", 0.85], ["rf", 0.75]])
    assert text.splitlines() == ["method  score", "------  -----", "ntk     0.850", "rf      0.750"]


def exact_wilcoxon_p(differences: list[float]) -> float:
    """Two-sided p-value of the signed-rank statistic W+ by enumerating all 2^N sign patterns
    (distinct non-zero |differences|, so the ranks are 1..N): under the null every pattern has
    probability 2^-N, and p = P(|W+ - N(N+1)/4| >= |W+_observed - N(N+1)/4|)."""
    N = len(differences)
    ranks = {v: i + 1 for i, v in enumerate(sorted(abs(d) for d in differences))}
    observed = sum(ranks[abs(d)] for d in differences if d > 0)
    centre = N * (N + 1) / 4
    patterns = [sum(r for r, bit in zip(range(1, N + 1), f"{mask:0{N}b}") if bit == "1") for mask in range(2**N)]
    return sum(abs(w - centre) >= abs(observed - centre) for w in patterns) / 2**N


@pytest.mark.parametrize("differences", [[0.125, -0.25, 0.375, 0.5, -0.625, 0.75], [0.125, 0.25, 0.375, 0.5, 0.625]])
def test_paired_comparison_p_value_is_the_exact_signed_rank_test(differences):
    """Differences that are exact in binary (no ties, no zeros): scipy's exact test, which
    paired_comparison runs for so few folds, must equal the enumeration (36/64 and 2/32 here)."""
    rows = [dict(dataset="a", method=m, repeat=0, fold=f, score=s)
            for f, d in enumerate(differences) for m, s in (("ntk", 0.5 + d / 2), ("rf", 0.5 - d / 2))]  # fmt: skip
    paired = bm.paired_comparison(rows)["rf"]
    assert paired["p_value"] == pytest.approx(exact_wilcoxon_p(differences), rel=1e-12)
    assert paired["p_value"] == pytest.approx({6: 36 / 64, 5: 2 / 32}[len(differences)], rel=1e-12)
    assert paired["wins"] == sum(d > 0 for d in differences) and paired["ties"] == 0
