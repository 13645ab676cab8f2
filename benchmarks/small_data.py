"""The small-data grid of chapter 8: every method on every data set, and few-shot curves.

    .venv/bin/python benchmarks/small_data.py [--workers 2]

Runs :func:`ntkbook.small_data.evaluate` (5-fold stratified CV repeated twice, seed 0) for all
methods on all data sets, and :func:`ntkbook.small_data.few_shot` on digits and breast cancer,
each job in its own process with one torch thread. Every number is seeded: a rerun on the same
machine gives the same scores (the finite MLPs train in float32, so another CPU may differ in
the last bits). Writes benchmarks/results/small_data.json: ``{"settings", "grid", "few_shot",
"seconds"}``, where grid and few_shot are lists of rows as the two functions return them and
seconds are wall times per job (informational only).
"""

from __future__ import annotations

import argparse
import json
import time
from multiprocessing import Pool
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "small_data.json"
SETTINGS = dict(n_splits=5, n_repeats=2, seed=0)
FEW_SHOT = dict(
    datasets=["digits", "breast_cancer"],
    methods=["ntk", "gaussian", "mlp_wide", "random_forest"],
    sizes={"digits": [10, 20, 40, 80, 160, 320, 640, 1257], "breast_cancer": [10, 20, 40, 80, 160, 398]},
    seeds=[0, 1, 2],
)


def run(job: tuple[str, str]) -> tuple[str, str, list[dict], float]:
    import torch

    from ntkbook import small_data as bm

    torch.set_num_threads(1)
    kind, name = job
    start = time.perf_counter()
    if kind == "grid":
        rows = bm.evaluate(name, bm.METHODS, **SETTINGS)
    else:
        rows = bm.few_shot(name, FEW_SHOT["methods"], FEW_SHOT["sizes"][name], FEW_SHOT["seeds"])
    return kind, name, rows, time.perf_counter() - start


def main() -> None:
    from ntkbook import small_data as bm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    # The slowest jobs first, so that the pool ends together.
    jobs = [("grid", "digits"), ("few_shot", "digits")] + [("grid", d) for d in bm.DATASETS if d != "digits"]
    jobs.append(("few_shot", "breast_cancer"))
    with Pool(args.workers) as pool:
        done = pool.map(run, jobs, chunksize=1)
    order = {d: i for i, d in enumerate(bm.DATASETS)}
    done.sort(key=lambda item: (item[0], order[item[1]]))
    out = {
        "command": ".venv/bin/python benchmarks/small_data.py",
        "settings": {**SETTINGS, "methods": list(bm.METHODS), "datasets": list(bm.DATASETS), "few_shot": FEW_SHOT},
        "grid": [row for kind, _, rows, _ in done if kind == "grid" for row in rows],
        "few_shot": [row for kind, _, rows, _ in done if kind == "few_shot" for row in rows],
        "seconds": {f"{kind}/{name}": round(seconds, 1) for kind, name, _, seconds in done},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS}: {len(out['grid'])} grid rows, {len(out['few_shot'])} few-shot rows; seconds {out['seconds']}")


if __name__ == "__main__":
    main()
