"""Empirical NTK speed: the three methods of ntklib.empirical.empirical_ntk, side by side, in one run.

    .venv/bin/python benchmarks/empirical_ntk.py [--n 128 256 512 1024] [--width 512] [--depth 3]
        [--repeats 10] [--slow-repeats 3] [--methods structured jacobian ntk_vp]

The network is MLP(d=64 -> width x depth -> 1), float32, relu, "ntk" parameterization, and the
kernel is the square Theta(X, X) of n points. Each (device, n, method) runs in a fresh subprocess so
that its peak resident memory (ru_maxrss; torch.cuda.max_memory_allocated on cuda) is its own.
Times are medians: "structured" over --repeats runs after a warm-up at full size; "jacobian" and
"ntk_vp", which take seconds to minutes, over --slow-repeats runs after a warm-up at n = 64
(which pays their one-time costs: torch.func set-up, forward-AD decompositions). Every result is
also checked against "structured" (max |difference| / max |Theta|).
Writes benchmarks/results/empirical_ntk.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

from machine import write_results  # benchmarks/machine.py: the script's folder is on sys.path

RESULTS = Path(__file__).parent / "results" / "empirical_ntk.json"
METHODS = ("structured", "jacobian", "ntk_vp")


def measure(n: int, d: int, width: int, depth: int, method: str, repeats: int, device: str) -> dict:
    import torch

    from ntklib.empirical import empirical_ntk
    from ntklib.networks import MLP

    warnings.filterwarnings("ignore", message=".*torch.jit.script.*")  # torch's own, on first jvp
    gen = torch.Generator().manual_seed(0)
    net = MLP(d, width, depth, activation="relu", generator=gen, dtype=torch.float32, device=device)
    X = torch.randn(n, d, generator=gen).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    # The baseline is taken before the warm-up, which for "structured" runs at full size already.
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    warm = X if method == "structured" else X[:64]
    empirical_ntk(net, warm, method=method), sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        theta = empirical_ntk(net, X, method=method)
        sync()
        times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before  # KiB on Linux
    if device.startswith("cuda"):
        peak_kib = torch.cuda.max_memory_allocated() // 1024
    reference = empirical_ntk(net, X, method="structured")
    error = float((theta - reference).abs().max() / reference.abs().max())
    return {
        "seconds": statistics.median(times),
        "all_seconds": times,
        "peak_extra_MiB": peak_kib / 1024,
        "relative_difference_to_structured": error,
        "parameters": sum(p.numel() for p in net.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--slow-repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--one", nargs=6, help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.one:
        n, d, width, depth, method, device = args.one
        repeats = args.repeats if method == "structured" else args.slow_repeats
        print(json.dumps(measure(int(n), int(d), int(width), int(depth), method, repeats, device)))
        return

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    header = f"{'device':6} {'n':>5} {'method':10} {'median s':>10} {'x faster than jacobian':>23} {'peak +MiB':>10} {'rel. diff':>9}"
    print(header, flush=True)
    for device in devices:
        for n in args.n:
            results = {}
            for method in args.methods:
                print(f"  running {device} n={n} {method} ...", file=sys.stderr, flush=True)
                out = subprocess.run(
                    [sys.executable, __file__, "--repeats", str(args.repeats), "--slow-repeats", str(args.slow_repeats),
                     "--one", str(n), str(args.d), str(args.width), str(args.depth), method, device],
                    capture_output=True, text=True,
                )
                if out.returncode != 0:  # e.g. out of memory: record it and go on
                    results[method] = {"failed": (out.stderr.strip().splitlines() or ["killed"])[-1]}
                else:
                    results[method] = json.loads(out.stdout)
            jac = results.get("jacobian", {}).get("seconds")
            for method, r in results.items():
                if "failed" in r:
                    print(f"{device:6} {n:5} {method:10} failed: {r['failed']}", flush=True)
                    continue
                if jac:
                    r["speedup_vs_jacobian"] = jac / r["seconds"]
                speedup = f"{r['speedup_vs_jacobian']:.1f}" if jac else "-"
                print(f"{device:6} {n:5} {method:10} {r['seconds']:10.3f} {speedup:>23} "
                      f"{r['peak_extra_MiB']:10.0f} {r['relative_difference_to_structured']:9.1e}", flush=True)
            rows.append({"device": device, "n": n, "d": args.d, "width": args.width, "depth": args.depth,
                         "dtype": "float32", "methods": results})
    if "structured" in args.methods and "jacobian" in args.methods:
        for row in rows:
            s = row["methods"].get("structured", {}).get("speedup_vs_jacobian")
            if s is not None:
                print(f"{row['device']} n={row['n']}: structured is {s:.0f}x faster than jacobian (target >= 50x)")
    settings = {"repeats": args.repeats, "slow_repeats": args.slow_repeats,
                "warm_up": "one run at full size (structured), at n=64 (jacobian, ntk_vp)"}
    write_results(RESULTS, settings=settings, rows=rows)


if __name__ == "__main__":
    main()
