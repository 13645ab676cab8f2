"""Chapter 9's grid: kernels of convolutional networks and finite CNNs on the digits images.

    .venv/bin/python benchmarks/conv_digits.py [--workers 2] [--cache DIR]

Every kernel matrix is computed once, in float64, for all 1797 images (the CNTK/CNN-GP with
global average pooling and with Flatten, the residual NTK, the fully connected NTK/NNGP and the
Gaussian kernel; ``ntkbook.images``); the splits take sub-matrices. Then, on the same splits
for every method: 5-fold stratified CV repeated twice (seed 0), and few-shot training sets of
10 to 320 images with a fixed 30% test set per seed (seeds 0-4). Kernel methods fit kernel
ridge regression with the ridge (and the depth or bandwidth) chosen by inner CV; the finite
CNNs (32 channels) train by gradient descent in the NTK parameterisation (1000 steps) and by
Adam in the standard parameterisation, whose learning rate and steps are tuned first on one
validation split. Jobs run in ``--workers`` processes with one torch thread each.

Writes benchmarks/results/conv_digits.json (``--out``): the settings, the Adam tuning table,
the grid and few-shot rows (as ``ntkbook.small_data``'s, with the chosen hyperparameters), the
CNTK gradient-flow curves of the gradient-descent runs, leave-one-out nearest-neighbour
accuracies of every kernel, wall times, and the machine. Kernel rows repeat exactly on any
machine (float64); the finite CNNs train in float32, so another CPU may differ in the last bits.
The same command runs on a GPU machine (the kernels then need about 3 GB of memory); the
finite networks stay on the CPU.

Tiny runs for tests: ``--images 60 --channels 4 --gd-steps 3 ...`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # machine.py, when run from elsewhere
from machine import describe

import ntklib as nk
from ntkbook import images

RESULTS = Path(__file__).parent / "results" / "conv_digits.json"
COMMAND = ".venv/bin/python benchmarks/conv_digits.py"

# Filled in the parent before the workers are forked (copy-on-write: never pickled).
DATA: dict = {}


def subsample(X, y, count: int, seed: int = 0):
    """``count`` images drawn stratified (all of them when count >= N)."""
    if count >= len(y):
        return X, y
    from sklearn.model_selection import train_test_split

    keep = np.sort(train_test_split(np.arange(len(y)), train_size=count, random_state=seed, stratify=y)[0])
    return X[torch.as_tensor(keep)], y[keep]


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------ phase 1: kernels


def phase1_job(job):
    torch.set_num_threads(1)
    kind, name = job
    start = time.perf_counter()
    X, y, settings = DATA["X"], DATA["y"], DATA["settings"]
    if kind == "gram":
        kernels = images.conv_grams(X.to(device()), name)
        out = (kernels.nngp.cpu(), kernels.ntk.cpu())
    else:  # tune Adam on the training images of the first outer split
        train = images.outer_splits(y, settings)[0][2]
        out = images.tune_adam(X, y, train, settings)
    return kind, name, out, time.perf_counter() - start


def conv_grams(workers: int, cache: Path | None, tune: bool):
    """{net: Kernels} for the conv nets (from the cache when there), the tuning, seconds, and
    the nets read from the cache (their time is then not in seconds)."""
    X = DATA["X"]
    grams, jobs, cached = {}, [], []
    for name in images.CONV_NETS:
        path = None if cache is None else cache / f"conv_{name}_{len(X)}.pt"
        if path is not None and path.exists():
            grams[name] = nk.Kernels(*torch.load(path))
            cached.append(name)
        else:
            jobs.append(("gram", name))
    if tune:
        jobs.append(("tune", "adam"))
    order = {"residual": 0, "gap": 1, "tune": 2, "flatten": 3}  # slowest first
    jobs.sort(key=lambda job: order.get(job[1], order["tune"]))
    tuning, seconds = None, {}
    with get_context("fork").Pool(workers) as pool:
        for kind, name, out, took in pool.imap_unordered(phase1_job, jobs):
            seconds[f"{kind}/{name}"] = round(took, 1)
            if kind == "tune":
                tuning = out
                continue
            grams[name] = nk.Kernels(*out)
            if cache is not None:
                cache.mkdir(parents=True, exist_ok=True)
                torch.save(tuple(grams[name]), cache / f"conv_{name}_{len(X)}.pt")
    return grams, tuning, seconds, cached


# ------------------------------------------------------------------- phase 2: the protocol


def _row(method, score, **keys):
    return dict(dataset="digits", method=method, score=float(score), **keys)


def phase2_job(job):
    torch.set_num_threads(1)
    kind, index = job
    start = time.perf_counter()
    X, y, settings, grams = DATA["X"], DATA["y"], DATA["settings"], DATA["grams"]
    theta = grams["cntk_gap"][None]
    few = kind.startswith("few_")
    splits = images.few_shot_splits(y, settings) if few else images.outer_splits(y, settings)
    if few:  # every size of one seed
        chosen = [s for s in splits if s[0] == settings.seeds[index]]
        where = [{"n_train": int(size), "seed": int(seed)} for seed, size, _, _ in chosen]
        seeds = [int(seed) for seed, *_ in chosen]
    else:
        chosen = [splits[index]]
        where = [{"repeat": int(r), "fold": int(f), "n_train": len(tr)} for r, f, tr, _ in chosen]
        seeds = [settings.seed * 10_000 + index]
    rows, curves = [], []
    for (_, _, train, test), keys, seed in zip(chosen, where, seeds):
        def score(pred, test=test):
            return float(np.mean(pred == y[test]))

        if kind.endswith("kernels"):
            for method in images.KERNEL_METHODS:
                pred, choice = images.fit_kernel(grams[method], y, train, test, seed)
                rows.append(_row(method, score(pred), choice=choice, **keys))
        elif kind.endswith("gd"):
            out = images.train_gd(X, y, train, test, theta, seed, settings)
            rows.append(_row("cnn_gd", score(out["pred"]), choice={"lr": out["lr"], "steps": settings.gd_steps},
                             flow_score=score(out["flow_pred"]), rms_gap=out["rms_gap"],
                             agreement=float(np.mean(out["pred"] == out["flow_pred"])), **keys))  # fmt: skip
            curves.append(dict(keys, lr=out["lr"], accuracy=out["curve"]))
        else:
            tuning = DATA["tuning"]
            (pred,) = images.train_adam(X, y, train, test, seed, tuning["lr"], tuning["steps"], settings.channels)
            rows.append(_row("cnn_adam", score(pred), choice={"lr": tuning["lr"], "steps": tuning["steps"]}, **keys))
    return kind, index, rows, curves, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    defaults = images.Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=1797, help="a stratified subsample (tests)")
    parser.add_argument("--channels", type=int, default=defaults.channels)
    parser.add_argument("--gd-steps", type=int, default=defaults.gd_steps)
    parser.add_argument("--adam-max-steps", type=int, default=defaults.adam_max_steps)
    parser.add_argument("--adam-every", type=int, default=defaults.adam_every)
    parser.add_argument("--splits", type=int, default=defaults.n_splits)
    parser.add_argument("--repeats", type=int, default=defaults.n_repeats)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(defaults.sizes))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    parser.add_argument("--cache", type=Path, default=None, help="keep the conv kernel matrices here")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    settings = dataclasses.replace(defaults, channels=args.channels, gd_steps=args.gd_steps,
                                   adam_max_steps=args.adam_max_steps, adam_every=args.adam_every,
                                   n_splits=args.splits, n_repeats=args.repeats, sizes=tuple(args.sizes),
                                   seeds=tuple(args.seeds))  # fmt: skip
    torch.set_num_threads(1)  # no OpenMP team in the parent: forking stays safe
    begin = time.perf_counter()
    X, y = subsample(*images.load_digits_images(), args.images)
    DATA.update(X=X, y=y, settings=settings)

    conv, tuning, seconds, cached = conv_grams(args.workers, args.cache, tune=True)
    start = time.perf_counter()
    grams = images.all_grams(conv, images.cheap_grams(X))
    nearest = {method: {str(key): images.nearest_neighbour_accuracy(K, y) for key, K in candidates.items()}
               for method, candidates in grams.items()}  # fmt: skip
    seconds["cheap kernels and nearest neighbours"] = round(time.perf_counter() - start, 1)
    seconds["phase 1 (kernels, tuning)"] = round(time.perf_counter() - begin, 1)
    DATA.update(grams=grams, tuning=tuning)

    n_outer = settings.n_splits * settings.n_repeats
    jobs = [(kind, i) for kind in ("gd", "adam", "kernels") for i in range(n_outer)]
    jobs += [(kind, i) for kind in ("few_gd", "few_adam", "few_kernels") for i in range(len(settings.seeds))]
    grid, few_shot, curves = [], [], []
    start = time.perf_counter()
    with get_context("fork").Pool(args.workers) as pool:
        for kind, index, rows, job_curves, took in pool.imap_unordered(phase2_job, jobs):
            (few_shot if kind.startswith("few_") else grid).extend(rows)
            curves.extend(dict(c, kind="few_shot" if kind.startswith("few_") else "grid") for c in job_curves)
            seconds[f"{kind}/{index}"] = round(took, 1)
    seconds["phase 2 (splits)"] = round(time.perf_counter() - start, 1)
    seconds["total"] = round(time.perf_counter() - begin, 1)

    order = {m: i for i, m in enumerate(images.METHODS)}
    grid.sort(key=lambda r: (order[r["method"]], r["repeat"], r["fold"]))
    few_shot.sort(key=lambda r: (order[r["method"]], r["n_train"], r["seed"]))
    curves.sort(key=lambda c: (c["kind"], c.get("repeat", 0), c.get("fold", 0), c.get("n_train", 0), c.get("seed", 0)))
    out = {
        "command": COMMAND,
        "settings": dataclasses.asdict(settings),
        "n_images": len(y),
        "protocol": {
            "W_std": images.W_STD, "b_std": images.B_STD, "readout_W_std": images.READOUT_W_STD,
            "readout_b_std": images.READOUT_B_STD, "filter": list(images.FILTER), "ridges": list(images.RIDGES),
            "fc_depths": list(images.FC_DEPTHS), "bandwidths": list(images.BANDWIDTHS),
            "flow_times": [t if math.isfinite(t) else "inf" for t in images.FLOW_TIMES],
            "methods": list(images.METHODS),
        },
        "tuning": tuning,
        "grid": grid,
        "few_shot": few_shot,
        "flow_curves": curves,
        "nearest_neighbour": nearest,
        "seconds": seconds,
        "kernels_read_from_cache": cached,
        "machine": describe(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}: {len(grid)} grid rows, {len(few_shot)} few-shot rows in {seconds['total'] / 60:.1f} min")
    return out


if __name__ == "__main__":
    main()
