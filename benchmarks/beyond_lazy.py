"""Chapter 10's grids: how the NTK of finite networks moves, by width, learning rate and depth.

    .venv/bin/python benchmarks/beyond_lazy.py [--workers 2] [--out PATH]

Every job is a function of ``ntkbook.lazy`` with fixed seeds (float64 throughout):

  * ``width``: ReLU MLPs with 2 hidden layers in the NTK, standard and muP parameterisations,
    widths 64 to 2048, three seeds (split and initialisation), each trained 300 steps at half
    its critical learning rate 2n / lambda_max(Theta_hat_0) on 128 digits (parity), with the
    kernel tracked at log-spaced steps and kernel regression with the initial and the trained
    empirical NTK scored on 500 test digits; and the infinite-width NTK's score per seed;
  * ``trained``: the same runs at widths 64 and 256 with ten seeds, NTK parameterisation at
    0.5 and 1.5 times the critical learning rate and muP at 0.5, for the trained-kernel scores;
  * ``catapult``: a one-hidden-layer network of width 2048 and a two-hidden-layer one of width
    512 in the NTK parameterisation, at multiples of their critical learning rate, loss at
    every step and lambda_max of the empirical NTK;
  * ``depth``: the infinite-width NTK of erf networks with sigma_b^2 = 0.05, depths 1..200, for
    a range of sigma_w^2 (condition number, loss ratio of kernel gradient descent, test
    accuracy of kernel regression), and finite erf networks of width 128 at a few depths;
  * ``ensemble``: 128 networks of width 1024 trained from different initialisations on the
    same 64 digits; the mean and variance of their test outputs at several times, their
    covariance at the last time (Lee et al. 2019's ensemble), and two members' outputs.

Writes benchmarks/results/beyond_lazy.json (``--out``): the settings, the rows of each grid
(floats to 10 significant digits, one row per line), each job's wall time, the total wall time
and the machine. Jobs run in ``--workers`` processes
with one torch thread each. Smaller runs for tests: see ``--help``.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # machine.py, when run from elsewhere
from machine import describe

from ntkbook import lazy

RESULTS = Path(__file__).parent / "results" / "beyond_lazy.json"
COMMAND = ".venv/bin/python benchmarks/beyond_lazy.py"
SIGNIFICANT = 10  # digits kept in the JSON file


@dataclasses.dataclass(frozen=True)
class Settings:
    parameterizations: tuple[str, ...] = ("ntk", "standard", "mup")
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    seeds: tuple[int, ...] = (0, 1, 2)
    # trained vs initial NTK as a kernel: (parameterisation, width, lr as a fraction of the critical one)
    trained: tuple[tuple[str, int, float], ...] = (("ntk", 64, 0.5), ("ntk", 64, 1.5), ("ntk", 256, 0.5),
                                                   ("ntk", 256, 1.5), ("mup", 64, 0.5), ("mup", 256, 0.5))
    trained_seeds: tuple[int, ...] = tuple(range(10))
    n_train: int = 128
    n_test: int = 500
    steps: int = 300
    # catapult: (depth, width, learning rates as multiples of the critical one)
    catapult: tuple[tuple[int, int, tuple[float, ...]], ...] = (
        (1, 2048, (0.5, 0.9, 1.1, 1.2, 1.4, 1.6, 1.7, 1.8, 1.9, 2.0, 2.2, 2.5, 3.0)),
        (2, 512, (0.5, 0.9, 1.2, 1.6, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0)),
    )
    catapult_steps: int = 200
    b_var: float = 0.05  # erf depth grid
    w_vars: tuple[float, ...] = (0.8, 1.0, 1.2, 1.3, 1.45, 1.6, 1.8, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0)
    max_depth: int = 200
    finite_w_vars: tuple[float, ...] = (1.0, 2.5)  # and the edge, computed
    finite_depths: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    finite_width: int = 128
    ensemble_members: int = 128
    ensemble_chunk: int = 16
    ensemble_times: tuple[int, ...] = (0, 3, 10, 30, 100, 300)
    ensemble_width: int = 1024


def jobs(settings: Settings, edge: float) -> list[tuple]:
    """Every job as a tuple (kind, arguments...), the slowest first (the pool starts them in order);
    ``edge`` is sigma_w^2 at the edge of chaos for erf at settings.b_var."""
    out: list[tuple] = []
    for width in sorted(settings.widths, reverse=True):
        for parameterization in settings.parameterizations:
            for seed in settings.seeds:
                out.append(("width", parameterization, width, seed))
    for parameterization, width, fraction in settings.trained:
        for seed in settings.trained_seeds:
            out.append(("trained", parameterization, width, fraction, seed))
    for seed in sorted({*settings.seeds, *settings.trained_seeds}):
        out.append(("infinite", seed))
    for depth, width, ratios in settings.catapult:
        for ratio in ratios:
            out.append(("catapult", depth, width, ratio))
    for w_var in settings.w_vars:
        out.append(("depth", w_var))
    for w_var in (*settings.finite_w_vars, edge):
        for depth in settings.finite_depths:
            out.append(("finite", w_var, depth))
    for start in range(0, settings.ensemble_members, settings.ensemble_chunk):
        out.append(("ensemble", start, min(start + settings.ensemble_chunk, settings.ensemble_members)))
    return out


def run_job(args: tuple) -> tuple[tuple, object, float]:
    job, settings = args
    torch.set_num_threads(1)
    start = time.perf_counter()
    kind, *rest = job
    data = {"n_train": settings.n_train, "n_test": settings.n_test}
    if kind == "width":
        parameterization, width, seed = rest
        out = lazy.width_run(parameterization, width, seed, steps=settings.steps, **data)
    elif kind == "trained":
        parameterization, width, fraction, seed = rest
        out = lazy.width_run(parameterization, width, seed, steps=settings.steps, lr_fraction=fraction, **data)
    elif kind == "infinite":
        out = {"seed": rest[0], "accuracy": lazy.infinite_ntk_accuracy(rest[0], **data)}
    elif kind == "catapult":
        depth, width, ratio = rest
        out = {"depth": depth, "width": width,
               **lazy.catapult_run(ratio, width=width, depth=depth, steps=settings.catapult_steps, **data)}  # fmt: skip
    elif kind == "depth":
        (w_var,) = rest
        split = lazy.digits_split(settings.n_train, settings.n_test, 0)
        kernels = lazy.depth_kernels(split, w_var, settings.b_var, settings.max_depth)
        rows = [lazy.depth_point(k.ntk, split, settings.steps) for k in kernels]
        out = {"W_var": w_var, "b_var": settings.b_var, "depths": list(range(1, settings.max_depth + 1)),
               **{key: [row[key] for row in rows] for key in rows[0]}}  # fmt: skip
    elif kind == "finite":
        w_var, depth = rest
        out = lazy.finite_depth_run(w_var, settings.b_var, depth, width=settings.finite_width, steps=settings.steps,
                                    **data)  # fmt: skip
    elif kind == "ensemble":
        first, last = rest
        out = {"seeds": list(range(first, last)),
               **lazy.ensemble_members(range(first, last), settings.ensemble_times, width=settings.ensemble_width)}  # fmt: skip
    else:
        raise ValueError(f"unknown job {job!r}")
    return job, out, time.perf_counter() - start


def rounded(value: object, digits: int = SIGNIFICANT) -> object:
    """Floats rounded to ``digits`` significant digits, through dicts and lists (a smaller file)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {key: rounded(v, digits) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def dumps(record: dict) -> str:
    """JSON with one line per grid row (and per top-level entry otherwise)."""
    lines = []
    for key, value in record.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            rows = ",\n  ".join(json.dumps(row, separators=(",", ":")) for row in value)
            lines.append(f" {json.dumps(key)}: [\n  {rows}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, separators=(',', ':'))}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main(argv: list[str] | None = None) -> dict:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--widths", type=int, nargs="+", default=list(defaults.widths))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    parser.add_argument("--trained-seeds", type=int, nargs="+", default=list(defaults.trained_seeds))
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--n-train", type=int, default=defaults.n_train)
    parser.add_argument("--n-test", type=int, default=defaults.n_test)
    parser.add_argument("--catapult-width", type=int, nargs=2, default=None, help="widths of the two catapult nets")
    parser.add_argument("--catapult-steps", type=int, default=defaults.catapult_steps)
    parser.add_argument("--max-depth", type=int, default=defaults.max_depth)
    parser.add_argument("--finite-depths", type=int, nargs="+", default=list(defaults.finite_depths))
    parser.add_argument("--finite-width", type=int, default=defaults.finite_width)
    parser.add_argument("--ensemble", type=int, nargs=3, default=None, metavar=("MEMBERS", "CHUNK", "WIDTH"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    catapult = defaults.catapult
    if args.catapult_width:
        catapult = tuple((depth, width, ratios) for (depth, _, ratios), width in zip(catapult, args.catapult_width))
    members, chunk, width = args.ensemble or (defaults.ensemble_members, defaults.ensemble_chunk,
                                              defaults.ensemble_width)  # fmt: skip
    settings = dataclasses.replace(
        defaults, widths=tuple(args.widths), seeds=tuple(args.seeds),
        trained_seeds=tuple(args.trained_seeds), steps=args.steps, n_train=args.n_train,
        n_test=args.n_test, catapult=catapult, catapult_steps=args.catapult_steps, max_depth=args.max_depth,
        finite_depths=tuple(args.finite_depths), finite_width=args.finite_width, ensemble_members=members,
        ensemble_chunk=chunk, ensemble_width=width)  # fmt: skip
    start = time.perf_counter()
    edge = lazy.erf_edge(settings.b_var)
    todo = jobs(settings, edge)
    results: dict[str, list] = {"width": [], "trained": [], "infinite": [], "catapult": [], "depth": [], "finite": [],
                                "ensemble": []}  # fmt: skip
    seconds = {}
    with get_context("fork").Pool(args.workers) as pool:
        for job, out, wall in pool.imap_unordered(run_job, [(job, settings) for job in todo]):
            results[job[0]].append(out)
            seconds["/".join(map(str, job))] = round(wall, 2)
            print(f"{'/'.join(map(str, job))}: {wall:.1f} s", flush=True)
    # A fixed order, whatever order the workers finished in.
    results["width"].sort(key=lambda r: (r["parameterization"], r["width"], r["seed"]))
    results["trained"].sort(key=lambda r: (r["parameterization"], r["width"], r["lr_fraction"], r["seed"]))
    results["infinite"].sort(key=lambda r: r["seed"])
    results["catapult"].sort(key=lambda r: (r["depth"], r["lr_ratio"]))
    results["depth"].sort(key=lambda r: r["W_var"])
    results["finite"].sort(key=lambda r: (r["W_var"], r["depth"]))
    ensemble = lazy.ensemble_summary(results.pop("ensemble"))
    total = time.perf_counter() - start
    record = {"command": COMMAND + ("" if argv is None else " " + " ".join(argv)),
              "settings": dataclasses.asdict(settings), "erf_edge": edge, **results, "ensemble": ensemble,
              "seconds": seconds, "total_seconds": round(total, 1), "machine": describe()}  # fmt: skip
    record = rounded(record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dumps(record))
    print(f"wrote {args.out} ({total / 60:.1f} min)")
    return record


if __name__ == "__main__":
    main()
