"""Small-data benchmark: the NTK against classical methods on data that ships with scikit-learn.

After Arora et al. (2020, "Harnessing the power of infinitely wide deep nets on small-data tasks"),
at a much smaller scale: a few real data sets and a few generated ones, every method on the same
repeated k-fold splits, hyperparameters chosen by an inner cross-validation on the training fold.

Protocol (the same for every method):
  * features are standardised with the mean and standard deviation of the *training fold* only;
  * classification is kernel (or network) regression on one-hot targets, predicted class = argmax;
    regression targets are standardised with training-fold statistics; scores are accuracy / R^2;
  * kernel methods fit ``alpha = (K + lambda I)^-1 (Y - mean Y)`` with a relative ridge
    ``lambda = r * mean(diag K)``, and pick (r, kernel parameter) by 3-fold inner CV on the
    training fold, minimising the validation mean squared error;
  * NTK / NNGP inputs are the standardised features (no projection to the sphere), ReLU,
    ``W_std = sqrt(2)``, ``b_std = 1`` (with ``b_std = 0`` the ReLU kernels are
    positively homogeneous, f(cx) = c f(x), and cannot separate concentric classes), depth 1..5
    by inner CV.

This module is the book's, not the library's: it lives in ``ntkbook`` (installed next to
``ntklib`` by the same ``pip install``), so ``import ntklib`` needs neither scikit-learn nor SciPy.
It calls ntklib only through its public API.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Hashable

import numpy as np
import torch
from torch import Tensor

from ntklib import MLP, gaussian_kernel, infinite_width_kernels_by_depth, polynomial_kernel, solve_kernel_system

RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # relative ridges r: lambda = r * mean(diag K)
DEPTHS = (1, 2, 3, 4, 5)  # NTK / NNGP hidden layers
BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)  # Gaussian sigma, in units of sqrt(d)
DEGREES = (2, 3, 4)  # polynomial kernel (x.z / d + 1)^degree
MLP_WIDTHS = {"mlp_narrow": 64, "mlp_wide": 256}
MLP_DEPTH, MLP_STEPS, MLP_LR = 2, 300, 3e-3  # full-batch Adam, fixed, not tuned
FOREST_TREES = 100  # scikit-learn's default
INNER_SPLITS = 3


@dataclass(frozen=True)
class Dataset:
    """A data set: X (n, d) float64, y (n,) int class labels or float targets."""

    X: np.ndarray
    y: np.ndarray
    task: str  # "classification" or "regression"
    name: str

    @property
    def n_classes(self) -> int:
        return int(self.y.max()) + 1 if self.task == "classification" else 0


def _sklearn_loader(function: str) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        import sklearn.datasets

        return getattr(sklearn.datasets, function)(return_X_y=True)

    return load


def _generated(function: str, **kwargs: object) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def make() -> tuple[np.ndarray, np.ndarray]:
        import sklearn.datasets

        return getattr(sklearn.datasets, function)(random_state=0, **kwargs)

    return make


# name -> (loader, task). The generated sets use a fixed seed, so they are the same everywhere.
LOADERS: dict[str, tuple[Callable[[], tuple[np.ndarray, np.ndarray]], str]] = {
    "iris": (_sklearn_loader("load_iris"), "classification"),
    "wine": (_sklearn_loader("load_wine"), "classification"),
    "breast_cancer": (_sklearn_loader("load_breast_cancer"), "classification"),
    "digits": (_sklearn_loader("load_digits"), "classification"),
    "diabetes": (_sklearn_loader("load_diabetes"), "regression"),
    "moons": (_generated("make_moons", n_samples=300, noise=0.3), "classification"),
    "circles": (_generated("make_circles", n_samples=300, noise=0.15, factor=0.5), "classification"),
    "friedman": (_generated("make_friedman1", n_samples=300, n_features=8, noise=1.0), "regression"),
}
DATASETS = tuple(LOADERS)


def load_dataset(name: str) -> Dataset:
    """Load a data set by name: one of ``DATASETS`` (no download; all ship with scikit-learn).

    Raises:
        ValueError: unknown name (the message lists the valid ones).
        RuntimeError: the loader failed or returned malformed data.
    """
    if name not in LOADERS:
        raise ValueError(f"unknown data set {name!r}; expected one of: {', '.join(DATASETS)}")
    loader, task = LOADERS[name]
    try:
        X, y = loader()
    except Exception as error:  # noqa: BLE001 - re-raised with the data set's name
        raise RuntimeError(f"could not load data set {name!r} from scikit-learn: {error}") from error
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],) or X.shape[0] == 0 or not np.isfinite(X).all():
        raise RuntimeError(f"data set {name!r} is malformed: X {X.shape}, y {y.shape} (expected (n, d) finite, (n,))")
    if task == "classification":
        y = np.unique(y, return_inverse=True)[1].astype(np.int64)  # labels 0..C-1
    else:
        y = y.astype(np.float64)
    return Dataset(X, y, task, name)


def standardize(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale both with the *training* mean and std (constant features: scale 1)."""
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (X_train - mean) / std, (X_test - mean) / std


def _targets(y: np.ndarray, task: str, n_classes: int) -> tuple[Tensor, float, float]:
    """(n, k) float64 targets: one-hot for classification, standardised y for regression."""
    if task == "classification":
        return torch.nn.functional.one_hot(torch.as_tensor(y), n_classes).double(), 0.0, 1.0
    mean, std = float(y.mean()), float(y.std()) or 1.0
    return torch.as_tensor((y - mean) / std)[:, None], mean, std


def _decode(F: np.ndarray, task: str, mean: float, std: float) -> np.ndarray:
    return F.argmax(axis=1) if task == "classification" else F[:, 0] * std + mean


def score(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> float:
    """Accuracy (classification) or R^2 = 1 - SSE / SST (regression)."""
    if task == "classification":
        return float(np.mean(y_true == y_pred))
    return float(1.0 - np.sum((y_true - y_pred) ** 2) / np.sum((y_true - y_true.mean()) ** 2))


def _ridge_path(K: Tensor, Y: Tensor, K_val: Tensor, ridges: tuple[float, ...]) -> list[Tensor]:
    """Validation predictions for every relative ridge from one eigendecomposition of K (n, n)."""
    evals, U = torch.linalg.eigh(K)
    evals = evals.clamp_min(0.0)
    mean, scale = Y.mean(dim=0), float(K.diagonal().mean())
    UtY = U.T @ (Y - mean)  # (n, k)
    KU = K_val @ U  # (m, n)
    return [KU @ (UtY / (evals + r * scale)[:, None]) + mean for r in ridges]


def kernel_ridge_cv(
    kernels: Callable[[Tensor, Tensor], dict[Hashable, Tensor]],
    X_train: Tensor,
    Y: Tensor,
    X_test: Tensor,
    seed: int,
    ridges: tuple[float, ...] = RIDGES,
) -> tuple[Tensor, dict]:
    """Kernel ridge regression with (kernel parameter, ridge) chosen by inner K-fold CV.

    Args:
        kernels: ``(A, B) -> {parameter: K(A, B)}``, every candidate kernel at once (so NTKs of
            all depths can share work).
        X_train: (n, d); Y: (n, k) targets; X_test: (m, d).
        seed: seed of the inner (shuffled, non-stratified) split.

    Returns:
        (m, k) test predictions and the chosen ``{"param": ..., "ridge": ...}``.
    """
    from sklearn.model_selection import KFold

    n = X_train.shape[0]
    inner = KFold(min(INNER_SPLITS, n), shuffle=True, random_state=seed)
    K_all = kernels(X_train, X_train)  # {param: (n, n)}
    errors = {key: np.zeros(len(ridges)) for key in K_all}
    for fit, val in inner.split(np.zeros(n)):
        fit_t, val_t = torch.as_tensor(fit), torch.as_tensor(val)
        for key, K in K_all.items():
            paths = _ridge_path(K[fit_t][:, fit_t], Y[fit_t], K[val_t][:, fit_t], ridges)
            errors[key] += [float(((F - Y[val_t]) ** 2).mean()) for F in paths]
    best_key, best_i = min(((key, i) for key in K_all for i in range(len(ridges))), key=lambda p: errors[p[0]][p[1]])
    K = K_all[best_key]
    ridge = ridges[best_i] * float(K.diagonal().mean())
    mean = Y.mean(dim=0)
    alpha = solve_kernel_system(K, Y - mean, ridge)
    K_test = kernels(X_test, X_train)[best_key]  # (m, n)
    return K_test @ alpha + mean, {"param": best_key, "ridge": ridges[best_i]}


def _infinite(which: str) -> Callable[[Tensor, Tensor], dict[Hashable, Tensor]]:
    def kernels(A: Tensor, B: Tensor) -> dict[Hashable, Tensor]:
        by_depth = infinite_width_kernels_by_depth(A, B, max_depth=max(DEPTHS), W_std=math.sqrt(2.0), b_std=1.0)
        return {depth: getattr(by_depth[depth - 1], which) for depth in DEPTHS}

    return kernels


def _gaussian(A: Tensor, B: Tensor) -> dict[Hashable, Tensor]:
    root_d = math.sqrt(A.shape[1])
    return {c: gaussian_kernel(A, B, sigma=c * root_d) for c in BANDWIDTHS}


def _polynomial(A: Tensor, B: Tensor) -> dict[Hashable, Tensor]:
    scale = 1.0 / math.sqrt(A.shape[1])  # (x.z / d + 1)^p keeps the entries O(1)
    return {p: polynomial_kernel(A * scale, B * scale, degree=p, c=1.0) for p in DEGREES}


def _linear(A: Tensor, B: Tensor) -> dict[Hashable, Tensor]:
    return {None: A @ B.T / A.shape[1]}


KERNELS = {"ntk": _infinite("ntk"), "nngp": _infinite("nngp"), "gaussian": _gaussian,
           "polynomial": _polynomial, "linear": _linear}  # fmt: skip
METHODS = ("ntk", "nngp", "gaussian", "polynomial", "mlp_narrow", "mlp_wide", "random_forest", "linear")


def _fit_mlp(width: int, X: Tensor, Y: Tensor, X_test: Tensor, seed: int) -> Tensor:
    """A depth-2 ReLU MLP (standard parameterisation), full-batch Adam on 1/2 |f - Y|^2, float32."""
    generator = torch.Generator().manual_seed(seed)
    net = MLP(X.shape[1], width, MLP_DEPTH, out_features=Y.shape[1], parameterization="standard",
              W_std=math.sqrt(2.0), b_std=0.0, generator=generator, dtype=torch.float32)  # fmt: skip
    X32, Y32 = X.float(), Y.float()
    optimizer = torch.optim.Adam(net.parameters(), lr=MLP_LR)
    for _ in range(MLP_STEPS):
        optimizer.zero_grad()
        loss = 0.5 * ((net(X32) - Y32) ** 2).sum(dim=1).mean()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return net(X_test.float()).double()


def fit_predict(method: str, X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray,
                task: str, n_classes: int, seed: int) -> tuple[np.ndarray, dict]:  # fmt: skip
    """Fit one method on a training fold and predict the test fold.

    Features are standardised here, with training statistics only.

    Returns:
        Predicted labels (classification) or values (regression), (m,), and the chosen
        hyperparameters (empty for methods without a search).
    """
    check_methods([method])
    Xs, Xs_test = standardize(X_train, X_test)
    if method == "random_forest":
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        forest = RandomForestClassifier if task == "classification" else RandomForestRegressor
        model = forest(n_estimators=FOREST_TREES, random_state=seed, n_jobs=1).fit(Xs, y_train)
        return model.predict(Xs_test), {}
    Y, mean, std = _targets(y_train, task, n_classes)
    A, B = torch.as_tensor(Xs), torch.as_tensor(Xs_test)
    if method in MLP_WIDTHS:
        F, choice = _fit_mlp(MLP_WIDTHS[method], A, Y, B, seed), {}
    else:
        F, choice = kernel_ridge_cv(KERNELS[method], A, Y, B, seed)
    return _decode(F.numpy(), task, mean, std), choice


def check_methods(methods: list[str] | tuple[str, ...]) -> None:
    """Raise ValueError naming the valid methods if any name is unknown (or none is given)."""
    if len(methods) == 0:
        raise ValueError(f"methods is empty; expected some of: {', '.join(METHODS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected some of: {', '.join(METHODS)}")


def evaluate(dataset: Dataset | str, methods: list[str] | tuple[str, ...] = METHODS, n_splits: int = 5,
             n_repeats: int = 2, seed: int = 0) -> list[dict]:  # fmt: skip
    """Repeated (stratified, for classification) k-fold CV of every method on the same splits.

    Args:
        dataset: a :class:`Dataset` or a name for :func:`load_dataset`.
        methods: names from ``METHODS``.
        n_splits, n_repeats: outer folds and repeats; ``seed`` fixes the splits, the inner CV
            splits, the networks' initialisation and the forests.

    Returns:
        A list with one dict per method, repeat and fold, with the keys dataset, method, repeat,
        fold, n_train, score and choice.
    """
    from sklearn.model_selection import RepeatedKFold, RepeatedStratifiedKFold

    data = load_dataset(dataset) if isinstance(dataset, str) else dataset
    check_methods(methods)
    if not (isinstance(n_splits, int) and n_splits >= 2 and isinstance(n_repeats, int) and n_repeats >= 1):
        raise ValueError(f"need integers n_splits >= 2 and n_repeats >= 1; got {n_splits!r}, {n_repeats!r}")
    splitter = RepeatedStratifiedKFold if data.task == "classification" else RepeatedKFold
    splits = splitter(n_splits=n_splits, n_repeats=n_repeats, random_state=seed).split(data.X, data.y)
    rows = []
    for index, (train, test) in enumerate(splits):
        repeat, fold = divmod(index, n_splits)
        fold_seed = seed * 10_000 + index
        for method in methods:
            pred, choice = fit_predict(method, data.X[train], data.y[train], data.X[test],
                                       data.task, data.n_classes, fold_seed)  # fmt: skip
            rows.append(dict(dataset=data.name, method=method, repeat=repeat, fold=fold, n_train=len(train),
                             score=score(data.y[test], pred, data.task), choice=choice))  # fmt: skip
    return rows


def few_shot(dataset: Dataset | str, methods: list[str] | tuple[str, ...], sizes: list[int],
             seeds: list[int], test_fraction: float = 0.3) -> list[dict]:  # fmt: skip
    """Score vs training-set size: per seed, a fixed (stratified) test split, then training
    subsets of each size drawn (stratified) from the rest; sizes must not exceed the rest.

    Returns:
        A list with one dict per method, size and seed, with the keys dataset, method, n_train,
        seed and score.
    """
    from sklearn.model_selection import train_test_split

    data = load_dataset(dataset) if isinstance(dataset, str) else dataset
    check_methods(methods)
    rows = []
    for seed in seeds:
        stratify = data.y if data.task == "classification" else None
        pool, test = train_test_split(np.arange(len(data.y)), test_size=test_fraction, random_state=seed,
                                      stratify=stratify)  # fmt: skip
        for size in sizes:
            if not 2 <= size <= len(pool):
                raise ValueError(f"size {size} out of range: need 2 <= size <= {len(pool)} (the training pool)")
            if size == len(pool):
                train = pool
            else:
                strat = data.y[pool] if data.task == "classification" and size >= data.n_classes else None
                train = train_test_split(pool, train_size=size, random_state=seed, stratify=strat)[0]
            for method in methods:
                pred, _ = fit_predict(method, data.X[train], data.y[train], data.X[test],
                                      data.task, data.n_classes, seed)  # fmt: skip
                rows.append(dict(dataset=data.name, method=method, n_train=int(size), seed=seed,
                                 score=score(data.y[test], pred, data.task)))  # fmt: skip
    return rows


def summarize(rows: list[dict]) -> dict[tuple[str, str], tuple[float, float]]:
    """(dataset, method) -> (mean, std) of the score over repeats and folds."""
    groups: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["method"]), []).append(row["score"])
    return {key: (float(np.mean(v)), float(np.std(v))) for key, v in groups.items()}


def average_ranks(rows: list[dict]) -> dict[str, float]:
    """Mean over data sets of each method's rank by mean score (1 = best; ties share ranks)."""
    from scipy.stats import rankdata

    table = summarize(rows)
    datasets = sorted({d for d, _ in table})
    methods = sorted({m for _, m in table})
    ranks = np.array([rankdata([-table[(d, m)][0] for m in methods]) for d in datasets])  # (D, M)
    return dict(zip(methods, ranks.mean(axis=0).tolist()))


def paired_comparison(rows: list[dict], reference: str = "ntk", tol: float = 1e-12) -> dict[str, dict]:
    """``reference`` vs each other method on the same folds: wins / ties / losses of the
    reference, the mean score difference (reference - other), and a two-sided Wilcoxon
    signed-rank p-value (folds share data, so the p-values are optimistic)."""
    from scipy.stats import wilcoxon

    by_fold = {(r["dataset"], r["method"], r["repeat"], r["fold"]): r["score"] for r in rows}
    folds = sorted({(d, rep, f) for d, m, rep, f in by_fold if m == reference})
    out = {}
    for method in sorted({m for _, m, _, _ in by_fold} - {reference}):
        diff = np.array([by_fold[(d, reference, rep, f)] - by_fold[(d, method, rep, f)] for d, rep, f in folds])
        nonzero = np.abs(diff) > tol
        p = float(wilcoxon(diff[nonzero]).pvalue) if nonzero.sum() > 0 else 1.0
        out[method] = dict(wins=int((diff > tol).sum()), ties=int((~nonzero).sum()), losses=int((diff < -tol).sum()),
                           mean_diff=float(diff.mean()), p_value=p)  # fmt: skip
    return out


def format_table(header: list[str], body: list[list[object]]) -> str:
    """A plain fixed-width text table (strings as given, floats with 3 decimals)."""
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in [header, *body]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
