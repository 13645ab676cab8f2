"""Chapter 9's experiment protocol: kernels of convolutional networks on scikit-learn's digits.

The 1797 digits of ``sklearn.datasets.load_digits`` are 8 x 8 images with 17 grey levels; they
enter every method as ``pixel / 16`` in [0, 1] (no statistics of any split are used, so every
kernel matrix is computed once for all images and the splits take sub-matrices of it).

Methods (one description per network, :func:`conv_net` and :func:`residual_net`):
  * kernels of a two-layer ReLU CNN, 3 x 3 filters, "same" padding, sigma_w = sqrt 2,
    sigma_b = 0.1 in every conv layer, a Dense readout (sigma_w = 1, sigma_b = 0.1) after
    global average pooling (GAP) or Flatten: the CNTK and the CNN-GP (NNGP) of each;
  * the NTK of a residual network: one conv layer, then one block x + Conv(Relu(x)), Relu, GAP;
  * the NTK and NNGP of a fully connected ReLU network on the 64 pixels (same sigma_w, sigma_b),
    depth 1..5 by inner cross-validation, and the Gaussian kernel with its bandwidth chosen so;
  * the finite CNN of the CNTK-GAP architecture with ``channels`` channels, trained on one-hot
    targets either by full-batch gradient descent in the NTK parameterisation at the learning
    rate n / lambda_max(Theta) (``cnn_gd``; the infinite-width prediction for the same run, the
    CNTK's gradient flow from the network's own initial outputs, is stored next to it), or by
    full-batch Adam in the standard parameterisation with (learning rate, steps) tuned once on
    a validation split (``cnn_adam``).

Kernel methods are kernel ridge regression on one-hot targets with the ridge chosen by inner
3-fold CV (``ntkbook.small_data.kernel_ridge_cv``, chapter 8's protocol). This module is the
book's, not the library's, and calls ntklib only through its public API.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import ntklib as nk
from ntklib.layers import DenseModule

from . import small_data as bm

IMAGE_SHAPE = (1, 8, 8)
FILTER = (3, 3)
W_STD, B_STD = math.sqrt(2.0), 0.1  # every conv (and fully connected hidden) layer
READOUT_W_STD, READOUT_B_STD = 1.0, 0.1
FC_DEPTHS = (1, 2, 3, 4, 5)
BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)  # Gaussian length scales ell, pixels in [0, 1]
RIDGES = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # relative ridges r: lambda = r mean(diag K)
CONV_NETS = ("gap", "flatten", "residual")
# method -> (network, which kernel); the fully connected and Gaussian kernels have parameters.
CONV_METHODS = {"cntk_gap": ("gap", "ntk"), "cnngp_gap": ("gap", "nngp"), "cntk_flatten": ("flatten", "ntk"),
                "cnngp_flatten": ("flatten", "nngp"), "resntk_gap": ("residual", "ntk")}  # fmt: skip
KERNEL_METHODS = (*CONV_METHODS, "fc_ntk", "fc_nngp", "gaussian")
NETWORK_METHODS = ("cnn_gd", "cnn_adam")
METHODS = KERNEL_METHODS + NETWORK_METHODS
FLOW_TIMES = (1e2, 1e3, 1e4, 1e5, 1e6, math.inf)  # steps at which the CNTK-GAP flow is scored


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a run of the benchmark depends on (stored with its results)."""

    channels: int = 32  # of the finite CNNs
    gd_steps: int = 1000
    gd_lr_factor: float = 1.0  # lr = factor * n / lambda_max(Theta(X, X))
    adam_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    adam_max_steps: int = 400
    adam_every: int = 50  # validation accuracy is read every so many steps while tuning
    n_splits: int = 5
    n_repeats: int = 2
    seed: int = 0
    sizes: tuple[int, ...] = (10, 20, 40, 80, 160, 320)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    test_fraction: float = 0.3


# ------------------------------------------------------------------------------------ data


def load_digits_images() -> tuple[Tensor, np.ndarray]:
    """The 1797 digits as images (1797, 1, 8, 8) float64 with values pixel / 16 in [0, 1], and
    their labels (1797,) int64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = torch.as_tensor(digits.images / 16.0, dtype=torch.float64)[:, None]
    return X, np.asarray(digits.target, dtype=np.int64)


def shift(X: Tensor, down: int, right: int, circular: bool) -> Tensor:
    """Images (n, C, H, W) moved by ``down`` rows and ``right`` columns: wrapped around
    (``circular``) or with the pixels that enter set to 0 (the background of the digits)."""
    out = torch.roll(X, shifts=(down, right), dims=(-2, -1))
    if not circular:
        H, W = X.shape[-2:]
        rows, cols = torch.arange(H) - down, torch.arange(W) - right  # where each pixel came from
        keep = ((rows >= 0) & (rows < H))[:, None] & ((cols >= 0) & (cols < W))[None, :]
        out = out * keep.to(X.dtype)
    return out


# -------------------------------------------------------------------------------- networks


def _conv(channels: int, parameterization: str, padding: str) -> nk.Conv:
    return nk.Conv(channels, FILTER, padding=padding, W_std=W_STD, b_std=B_STD, parameterization=parameterization)


def _readout(out_features: int, parameterization: str) -> nk.Dense:
    return nk.Dense(out_features, W_std=READOUT_W_STD, b_std=READOUT_B_STD, parameterization=parameterization)


def conv_net(readout: str = "gap", channels: int = 1, out_features: int = 1, parameterization: str = "ntk",
             padding: str = "same", depth: int = 2) -> nk.Layer:  # fmt: skip
    """``depth`` x (Conv 3x3, Relu), then GlobalAvgPool ("gap") or Flatten ("flatten"), then a
    Dense readout. ``channels`` matters only for the finite network (and for "standard")."""
    if readout not in ("gap", "flatten"):
        raise ValueError(f"readout must be 'gap' or 'flatten'; got {readout!r}")
    layers = []
    for _ in range(depth):
        layers += [_conv(channels, parameterization, padding), nk.Relu()]
    pool = nk.GlobalAvgPool() if readout == "gap" else nk.Flatten()
    return nk.serial(*layers, pool, _readout(out_features, parameterization))


def residual_net(channels: int = 1, out_features: int = 1, parameterization: str = "ntk",
                 padding: str = "same") -> nk.Layer:  # fmt: skip
    """Conv, then one residual block h + Conv(Relu(h)), then Relu, GlobalAvgPool, Dense: the
    same two conv layers as ``conv_net("gap")``, with a skip connection around the second."""
    block = nk.parallel(nk.serial(nk.Relu(), _conv(channels, parameterization, padding)), nk.Identity())
    return nk.serial(_conv(channels, parameterization, padding), nk.FanOut(2), block, nk.FanInSum(), nk.Relu(),
                     nk.GlobalAvgPool(), _readout(out_features, parameterization))  # fmt: skip


def network(name: str, **options) -> nk.Layer:
    """"gap", "flatten" or "residual" (``CONV_NETS``)."""
    if name == "residual":
        return residual_net(**options)
    return conv_net(name, **options)


# ------------------------------------------------------------------------- kernel matrices


def conv_grams(X: Tensor, name: str) -> nk.Kernels:
    """NNGP and NTK of ``network(name)`` on all images, (N, N) each (one symmetric call)."""
    return network(name).kernels(X)


def cheap_grams(X: Tensor) -> dict[str, dict[Hashable, Tensor]]:
    """Candidates of the fully connected and Gaussian methods: method -> {parameter: (N, N)}."""
    flat = X.reshape(X.shape[0], -1)
    by_depth = nk.infinite_width_kernels_by_depth(flat, flat, max_depth=max(FC_DEPTHS), W_std=W_STD, b_std=B_STD)
    return {
        "fc_ntk": {depth: by_depth[depth - 1].ntk for depth in FC_DEPTHS},
        "fc_nngp": {depth: by_depth[depth - 1].nngp for depth in FC_DEPTHS},
        "gaussian": {ell: nk.gaussian_kernel(flat, sigma=ell) for ell in BANDWIDTHS},
    }


def all_grams(conv: dict[str, nk.Kernels], cheap: dict[str, dict[Hashable, Tensor]]) -> dict[str, dict]:
    """method -> {parameter: Gram matrix} for every kernel method (parameter None: no search)."""
    out = {method: {None: getattr(conv[net], which)} for method, (net, which) in CONV_METHODS.items()}
    return {**out, **cheap}


def precomputed(candidates: dict[Hashable, Tensor]) -> Callable[[Tensor, Tensor], dict[Hashable, Tensor]]:
    """The ``kernels`` argument of ``small_data.kernel_ridge_cv`` for precomputed Gram matrices:
    its "inputs" are 1-D index tensors into the Gram matrices."""

    def kernels(rows: Tensor, cols: Tensor) -> dict[Hashable, Tensor]:
        return {key: G[rows[:, None], cols[None, :]] for key, G in candidates.items()}

    return kernels


def one_hot(y: np.ndarray, dtype: torch.dtype = torch.float64) -> Tensor:
    return F.one_hot(torch.as_tensor(y), 10).to(dtype)


def fit_kernel(candidates: dict[Hashable, Tensor], y: np.ndarray, train: np.ndarray, test: np.ndarray,
               seed: int) -> tuple[np.ndarray, dict]:  # fmt: skip
    """Kernel ridge regression on one-hot targets, (parameter, ridge) by inner 3-fold CV on the
    training images; returns the predicted test labels and the choice."""
    F_test, choice = bm.kernel_ridge_cv(precomputed(candidates), torch.as_tensor(train), one_hot(y[train]),
                                        torch.as_tensor(test), seed, ridges=RIDGES)  # fmt: skip
    return F_test.argmax(dim=1).numpy(), choice


def normalized(K: Tensor, diag_rows: Tensor, diag_cols: Tensor) -> Tensor:
    """K(x, z) / sqrt(K(x, x) K(z, z)): the cosine of the two inputs' feature vectors."""
    return K / (diag_rows[:, None] * diag_cols[None, :]).sqrt()


def kernel_diagonal(net: nk.Layer, X: Tensor) -> nk.Kernels:
    """K(x_i, x_i) for every image, (N,) each, one image at a time (no N x N matrix)."""
    pairs = [net.kernels(X[i : i + 1]) for i in range(X.shape[0])]
    return nk.Kernels(torch.cat([k.nngp[0] for k in pairs]), torch.cat([k.ntk[0] for k in pairs]))


def nearest_neighbour_accuracy(K: Tensor, y: np.ndarray) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy, with the most similar other image under the
    normalised kernel as the neighbour."""
    diag = K.diagonal()
    S = normalized(K, diag, diag).clone()
    S.fill_diagonal_(-math.inf)
    return float(np.mean(y[S.argmax(dim=1).numpy()] == y))


# -------------------------------------------------------------------------- finite networks


def train_gd(X: Tensor, y: np.ndarray, train: np.ndarray, test: np.ndarray, theta: Tensor, seed: int,
             settings: Settings) -> dict:  # fmt: skip
    """The finite CNN of ``conv_net("gap")`` (NTK parameterisation, ``settings.channels``
    channels, 10 outputs, float32), full-batch gradient descent for ``settings.gd_steps`` steps
    at lr = gd_lr_factor n / lambda_max(Theta(X_train, X_train)) with the analytic CNTK Theta
    (``theta``, (N, N), the readout's sigma_w and sigma_b as here).

    Returns the test labels of the network and of the CNTK's gradient flow at the same time and
    lr from the network's own initial outputs (what infinite width predicts for this run), the
    RMS gap between their test outputs, the lr, and the flow's test accuracy curve from zero
    initial outputs at ``FLOW_TIMES`` (the last, t = inf, is ridgeless kernel regression).
    """
    model = conv_net("gap", settings.channels, 10).init(IMAGE_SHAPE, generator=torch.Generator().manual_seed(seed),
                                                        dtype=torch.float32)  # fmt: skip
    tr, te = torch.as_tensor(train), torch.as_tensor(test)
    K, K_test = theta[tr[:, None], tr[None, :]], theta[te[:, None], tr[None, :]]
    lr = settings.gd_lr_factor * len(train) / float(torch.linalg.eigvalsh(K)[-1])
    Y = one_hot(y[train])
    run = nk.train(model, X[tr].float(), Y.float(), lr, settings.gd_steps, X_test=X[te].float(),
                   record=[0, settings.gd_steps], progress=False)  # fmt: skip
    f0, f0_test, f_test = run.train[0].double(), run.test[0].double(), run.test[-1].double()
    flow = nk.gradient_flow(K, Y, f0, settings.gd_steps, lr, K_test, f0_test).test
    curve = nk.gradient_flow(K, Y, None, list(FLOW_TIMES), lr, K_test).test  # (T, m, 10)
    return {"pred": f_test.argmax(1).numpy(), "flow_pred": flow.argmax(1).numpy(), "lr": lr,
            "rms_gap": float((f_test - flow).square().mean().sqrt()),
            "curve": [float(np.mean(F.argmax(1).numpy() == y[test])) for F in curve]}  # fmt: skip


def _adam_model(seed: int, channels: int) -> nn.Module:
    net = conv_net("gap", channels, 10, parameterization="standard")
    return net.init(IMAGE_SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def train_adam(X: Tensor, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int, lr: float, steps: int,
               channels: int, every: int | None = None) -> list[np.ndarray]:  # fmt: skip
    """The finite CNN of ``conv_net("gap")`` in the standard parameterisation (float32), full-
    batch Adam on 1/2 |f - Y|^2 averaged over images. Returns the predicted test labels after
    ``steps`` steps, or after every ``every`` steps (0, every, 2 every, ..., steps) when given."""
    model = _adam_model(seed, channels)
    X_train, Y = X[torch.as_tensor(train)].float(), one_hot(y[train], torch.float32)
    X_test = X[torch.as_tensor(test)].float()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    labels = []
    for step in range(steps + 1):
        if (every and step % every == 0) or step == steps:
            with torch.no_grad():
                labels.append(model(X_test).argmax(1).numpy())
        if step == steps:
            break
        optimizer.zero_grad()
        loss = 0.5 * (model(X_train) - Y).square().sum(dim=1).mean()
        loss.backward()
        optimizer.step()
    return labels if every else labels[-1:]


def tune_adam(X: Tensor, y: np.ndarray, train: np.ndarray, settings: Settings) -> dict:
    """Choose Adam's (lr, steps) on one stratified 80/20 split of the training images: every lr
    of ``settings.adam_lrs`` for ``adam_max_steps`` steps, validation accuracy read every
    ``adam_every`` steps; the best pair wins (ties: fewer steps, then the smaller lr)."""
    from sklearn.model_selection import train_test_split

    fit, val = train_test_split(train, test_size=0.2, random_state=settings.seed, stratify=y[train])
    table = {}
    for lr in settings.adam_lrs:
        labels = train_adam(X, y, fit, val, settings.seed, lr, settings.adam_max_steps, settings.channels,
                            every=settings.adam_every)  # fmt: skip
        table[lr] = [float(np.mean(pred == y[val])) for pred in labels]
    steps = list(range(0, settings.adam_max_steps + 1, settings.adam_every))
    best = max(((lr, i) for lr in settings.adam_lrs for i in range(len(steps))),
               key=lambda p: (table[p[0]][p[1]], -p[1], -p[0]))  # fmt: skip
    return {"lr": best[0], "steps": steps[best[1]], "validation": {str(lr): acc for lr, acc in table.items()},
            "read_at": steps, "n_fit": len(fit), "n_val": len(val)}  # fmt: skip


# --------------------------------------------------------------------------------- splits


def outer_splits(y: np.ndarray, settings: Settings) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """(repeat, fold, train, test) of repeated stratified k-fold CV, as chapter 8's grid."""
    from sklearn.model_selection import RepeatedStratifiedKFold

    splitter = RepeatedStratifiedKFold(n_splits=settings.n_splits, n_repeats=settings.n_repeats,
                                       random_state=settings.seed)  # fmt: skip
    return [(*divmod(i, settings.n_splits), train, test)
            for i, (train, test) in enumerate(splitter.split(np.zeros(len(y)), y))]  # fmt: skip


def few_shot_splits(y: np.ndarray, settings: Settings) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """(seed, size, train, test): per seed a stratified test set of ``test_fraction``, then a
    stratified training set of each size from the rest (chapter 8's ``few_shot`` protocol)."""
    from sklearn.model_selection import train_test_split

    out = []
    for seed in settings.seeds:
        pool, test = train_test_split(np.arange(len(y)), test_size=settings.test_fraction, random_state=seed,
                                      stratify=y)  # fmt: skip
        for size in settings.sizes:
            if not 10 <= size <= len(pool):
                raise ValueError(f"size {size} out of range: need 10 <= size <= {len(pool)} (the training pool)")
            train = pool if size == len(pool) else train_test_split(pool, train_size=size, random_state=seed,
                                                                    stratify=y[pool])[0]  # fmt: skip
            out.append((seed, size, train, test))
    return out


# ----------------------------------------------------------------------------- summaries


def mean_ci(values, level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (splits treated as
    independent, which overlapping folds are not: the interval is optimistic)."""
    from scipy.stats import t

    values = np.asarray(values, dtype=float)
    half = t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(half)


def few_shot_as_folds(rows: list[dict]) -> list[dict]:
    """Few-shot rows (n_train, seed) as grid rows (dataset "n=<size>", repeat = seed, fold 0),
    so that ``small_data.paired_comparison`` pairs the methods on the same training sets."""
    return [dict(row, dataset=f"n={row['n_train']}", repeat=row["seed"], fold=0) for row in rows]


# ------------------------------------------------------------------ locally connected network


class LocallyConnected(nn.Module):
    """A 3 x 3 "same"-padded layer like :class:`ntklib.Conv` in the NTK parameterisation, but with
    weights and a bias of its own at every output pixel (no weight sharing): one ntklib
    ``DenseModule`` per pixel, applied to that pixel's patch, so ``nk.empirical_ntk`` handles it.

    ``(n, in_channels, H, W) -> (n, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, spatial: tuple[int, int], W_std: float, b_std: float,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> None:  # fmt: skip
        super().__init__()
        self.spatial = spatial
        fan_in = in_channels * math.prod(FILTER)
        self.pixels = nn.ModuleList([DenseModule(fan_in, out_channels, W_std, b_std, "ntk", generator=generator,
                                                 dtype=dtype) for _ in range(math.prod(spatial))])  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        patches = F.unfold(F.pad(x, (1, 1, 1, 1)), FILTER)  # (n, C_in 9, H W), channel-major as Conv
        out = torch.stack([module(patches[:, :, p]) for p, module in enumerate(self.pixels)], dim=-1)
        return out.reshape(x.shape[0], -1, *self.spatial)  # (n, C_out, H, W)


def locally_connected_net(channels: int, readout: str = "flatten", generator: torch.Generator | None = None,
                          dtype: torch.dtype = torch.float64) -> nn.Sequential:  # fmt: skip
    """The locally connected twin of ``conv_net(readout, channels)``: same layers, scales and
    padding, every conv replaced by :class:`LocallyConnected`; the last module is the readout."""
    spatial = IMAGE_SHAPE[1:]
    layers: list[nn.Module] = []
    in_channels = IMAGE_SHAPE[0]
    for _ in range(2):
        layers += [LocallyConnected(in_channels, channels, spatial, W_STD, B_STD, generator, dtype), nn.ReLU()]
        in_channels = channels
    if readout == "gap":
        layers.append(nn.AdaptiveAvgPool2d(1))
    layers.append(nn.Flatten())
    fan_in = channels * (1 if readout == "gap" else math.prod(spatial))
    layers.append(DenseModule(fan_in, 1, READOUT_W_STD, READOUT_B_STD, "ntk", generator=generator, dtype=dtype))
    return nn.Sequential(*layers)


def readout_nngp(model: nn.Sequential, X: Tensor) -> Tensor:
    """E[f(x) f(z) | the layers below the readout] = W_std^2 a(x).a(z) / fan_in + b_std^2, with
    the readout's weights integrated out exactly (as ``nk.monte_carlo_kernels`` does)."""
    readout = model[-1]
    with torch.no_grad():
        a = model[:-1](X)
    return (a @ a.T).mul_(readout.W_std**2 / a.shape[1]).add_(readout.b_std**2)
