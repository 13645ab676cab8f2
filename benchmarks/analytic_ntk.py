"""Analytic NTK speed and memory: nk.infinite_width_kernels vs the X @ X.T floor, in one run.

    .venv/bin/python benchmarks/analytic_ntk.py [--n 4000] [--d 64] [--depth 3] [--repeats 5]

Each configuration runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its
own. Times are medians over repeats after one warm-up. Writes benchmarks/results/analytic_ntk.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "analytic_ntk.json"


def measure(n: int, d: int, depth: int, dtype: str, what: str, repeats: int, device: str) -> dict:
    import torch

    import ntklib as nk

    torch.manual_seed(0)
    X = torch.randn(n, d, dtype=getattr(torch, dtype), device=device)
    work = {
        "matmul": lambda: X @ X.T,
        "ntklib": lambda: nk.infinite_width_kernels(X, depth=depth, activation="relu"),
    }[what]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    work(), sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        sync()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before  # KiB on Linux
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() // 1024
    return {"seconds": statistics.median(times), "peak_extra_MiB": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4000])
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", nargs=6, help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.one:
        n, d, depth, dtype, what, device = args.one
        print(json.dumps(measure(int(n), int(d), int(depth), dtype, what, args.repeats, device)))
        return

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for n in args.n:
            for dtype in ("float64", "float32"):
                row = {"device": device, "n": n, "d": args.d, "depth": args.depth, "dtype": dtype}
                for what in ("matmul", "ntklib"):
                    out = subprocess.run(
                        [sys.executable, __file__, "--repeats", str(args.repeats), "--one",
                         str(n), str(args.d), str(args.depth), dtype, what, device],
                        capture_output=True, text=True, check=True,
                    )
                    row[what] = json.loads(out.stdout)
                row["ratio"] = row["ntklib"]["seconds"] / row["matmul"]["seconds"]
                rows.append(row)
                print(f"{device} n={n} {dtype}: X@X.T {row['matmul']['seconds'] * 1e3:8.1f} ms, "
                      f"NTK+NNGP depth {args.depth} {row['ntklib']['seconds'] * 1e3:8.1f} ms "
                      f"(x{row['ratio']:.1f}), peak +{row['ntklib']['peak_extra_MiB']:.0f} MiB")
    machine = {"platform": platform.platform(), "processor": platform.processor(),
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
