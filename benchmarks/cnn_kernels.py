"""CNN kernels: ntklib's net.kernels against neural-tangents' jitted kernel_fn, in one run.

    python benchmarks/cnn_kernels.py [--n 100 200 400] [--digits] [--repeats 2]

The network is the issue's benchmark, serial(Conv 3x3 same, Relu, Conv 3x3 same, Relu,
GlobalAvgPool or Flatten, Dense), NTK parameterisation, on inputs (n, 1, 8, 8); both libraries
compute the NNGP and the NTK of X with itself. neural-tangents is timed only when it can be
imported: it is not a dependency of ntklib, so run this script with an interpreter that has
both (e.g. a throwaway venv with ``pip install "jax[cpu]==0.4.25" "jaxlib==0.4.25"
neural-tangents==0.6.5 "numpy<2" torch==2.13.0`` and ``pip install --no-deps -e .``); without
it the neural-tangents rows say so. ``--digits`` adds ntklib on all 1797 digits (scikit-learn),
which neural-tangents cannot hold here (its (n, n, 8, 8, 8, 8) covariances need about 106 GB in
float64).

Each measurement runs in a fresh subprocess; its peak memory is the high-water mark of the
process's resident memory (VmHWM, reset through /proc/self/clear_refs after the imports and the
inputs) minus the resident memory at that point, so imports do not count; the time is the median
over repeats after one warm-up call (of the same size for neural-tangents, which compiles for
each shape): at least ``--repeats`` of them, and more, up to 100, until they add up to a second.
A configuration whose memory, projected from the previous n of the same library, would exceed
the machine's is skipped and recorded as such. The two libraries' kernels are compared on the
first 50 inputs before any timing. Writes benchmarks/results/cnn_kernels.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import (  # benchmarks/machine.py: the script's folder is on sys.path
    available_MiB,
    peak_memory,
    reset_peak_memory,
    write_results,
)

RESULTS = Path(__file__).parent / "results" / "cnn_kernels.json"
READOUTS = ("gap", "flatten")
MIN_SECONDS, MAX_REPEATS = 1.0, 100  # repeats: at least --repeats, and a second of runs in all


def inputs(n: int, dtype: str, digits: bool):
    """(n, 1, 8, 8) images: the digits (scaled to [0, 1]) or standard normal pixels."""
    import numpy as np

    if digits:
        from sklearn.datasets import load_digits

        images = load_digits().images[:n].astype(np.float64) / 16.0
    else:
        images = np.random.default_rng(0).standard_normal((n, 8, 8))
    return images[:, None, :, :].astype(dtype)


def ntklib_kernels(readout: str):
    import ntklib as nk

    conv = lambda: nk.Conv(1, (3, 3), padding="same", W_std=2**0.5, b_std=0.1)  # noqa: E731
    pool = nk.GlobalAvgPool() if readout == "gap" else nk.Flatten()
    net = nk.serial(conv(), nk.Relu(), conv(), nk.Relu(), pool, nk.Dense(1, W_std=1.0, b_std=0.1))

    def run(x):
        import torch

        kernels = net.kernels(torch.from_numpy(x))
        return kernels.nngp.numpy(), kernels.ntk.numpy()

    return run


def neural_tangents_kernels(readout: str, dtype: str):
    import jax

    jax.config.update("jax_enable_x64", dtype == "float64")
    import numpy as np
    from neural_tangents import stax

    conv = lambda: stax.Conv(1, (3, 3), padding="SAME", W_std=2**0.5, b_std=0.1)  # noqa: E731
    pool = stax.GlobalAvgPool() if readout == "gap" else stax.Flatten()
    kernel_fn = jax.jit(stax.serial(conv(), stax.Relu(), conv(), stax.Relu(), pool,
                                    stax.Dense(1, W_std=1.0, b_std=0.1))[2], static_argnames="get")  # fmt: skip

    def run(x):
        k = kernel_fn(np.moveaxis(x, 1, -1), None, get=("nngp", "ntk"))  # NHWC
        return np.asarray(jax.block_until_ready(k.nngp)), np.asarray(k.ntk)

    return run


def measure(library: str, readout: str, n: int, dtype: str, digits: bool, repeats: int) -> dict:
    """One configuration, in this (fresh) process: seconds and peak extra memory."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    run = ntklib_kernels(readout) if library == "ntklib" else neural_tangents_kernels(readout, dtype)
    x = inputs(n, dtype, digits)
    run(x if library == "neural_tangents" else x[:50])  # warm-up; neural-tangents compiles per shape
    rss_before = reset_peak_memory()
    times = []
    # A fast configuration (tens of ms) repeats until it has run a second: a median of two would
    # be at the mercy of one scheduler hiccup.
    while len(times) < repeats or (sum(times) < MIN_SECONDS and len(times) < MAX_REPEATS):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "repeats": times, "peak_extra_MiB": peak_memory() - rss_before}


def compare(readout: str, dtype: str) -> float:
    """Largest relative difference between the two libraries' NNGP and NTK on 50 inputs."""
    import numpy as np

    x = inputs(50, dtype, digits=False)
    ours = ntklib_kernels(readout)(x)
    theirs = neural_tangents_kernels(readout, dtype)(x)
    return max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(ours, theirs))


def worker(library: str, readout: str, n: int, dtype: str, digits: bool, repeats: int, timeout: float) -> dict:
    command = [sys.executable, __file__, "--one", library, readout, str(n), dtype, str(int(digits)),
               "--repeats", str(repeats)]  # fmt: skip
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"took longer than {timeout:.0f} s"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no message"])[-1]
        return {"failed": f"exit status {out.returncode}: {last}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def have_neural_tangents() -> bool:
    try:
        import neural_tangents  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--digits", action="store_true", help="also ntklib on all 1797 digits")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--one", nargs=5, help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.one:
        library, readout, n, dtype, digits = args.one
        print(json.dumps(measure(library, readout, int(n), dtype, digits == "1", args.repeats)))
        return

    with_nt = have_neural_tangents()
    libraries = ["ntklib"] + (["neural_tangents"] if with_nt else [])
    rows, agreement = [], {}
    for readout in READOUTS:
        for dtype in ("float64", "float32"):
            if with_nt:
                agreement[f"{readout} {dtype}"] = compare(readout, dtype)
            last_peak: dict[str, tuple[int, float]] = {}
            for n in args.n:
                row = {"readout": readout, "dtype": dtype, "n": n}
                for library in libraries:
                    previous = last_peak.get(library)
                    projected = previous and previous[1] * (n / previous[0]) ** 2
                    if projected and projected > 0.7 * available_MiB():
                        row[library] = {"skipped": f"needs about {projected / 1024:.0f} GiB, projected from n = "
                                                   f"{previous[0]}; {available_MiB() / 1024:.0f} GiB available"}  # fmt: skip
                    else:
                        row[library] = worker(library, readout, n, dtype, False, args.repeats, args.timeout)
                        if "peak_extra_MiB" in row[library]:
                            last_peak[library] = (n, row[library]["peak_extra_MiB"])
                if not with_nt:
                    row["neural_tangents"] = {"skipped": "neural-tangents is not importable here"}
                ours, theirs = row["ntklib"], row["neural_tangents"]
                if "seconds" in ours and "seconds" in theirs:
                    row["speedup"] = theirs["seconds"] / ours["seconds"]
                    row["memory_ratio"] = theirs["peak_extra_MiB"] / max(ours["peak_extra_MiB"], 1.0)
                rows.append(row)
                print(json.dumps(row), flush=True)
    digits = []
    if args.digits:
        for dtype in ("float32", "float64"):
            row = {"readout": "gap", "dtype": dtype, "n": 1797, "digits": True,
                   "ntklib": worker("ntklib", "gap", 1797, dtype, True, 1, args.timeout * 2)}  # fmt: skip
            digits.append(row)
            print(json.dumps(row), flush=True)
    write_results(args.out, rows=rows, digits=digits, agreement_on_50_inputs=agreement,
                  neural_tangents=with_nt)  # fmt: skip


if __name__ == "__main__":
    main()
