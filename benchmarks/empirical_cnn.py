"""Empirical NTK of a small CNN: ntklib's structured method against torch.func, in one run.

    .venv/bin/python benchmarks/empirical_cnn.py [--n 128 256 512] [--repeats 3]

The network is serial(Conv(64, 3x3, same), Relu, Conv(64, 3x3, same), Relu, GlobalAvgPool,
Dense(1)) in NTK parameterisation, float32, on inputs (n, 1, 8, 8); the kernel is Theta(X, X).
Three ways to compute it:
  * "structured": nk.empirical_ntk(method="structured"), layer by layer from backward signals and
    layer inputs, never the P-column Jacobian;
  * "jacobian": nk.empirical_ntk(method="jacobian"), vmap(jacrev) per-sample Jacobians contracted
    parameter by parameter (X's Jacobian reused for the symmetric kernel);
  * "tutorial": PyTorch's "Neural Tangent Kernels" tutorial's Jacobian contraction, verbatim in
    spirit: both Jacobians by vmap(jacrev), then an einsum per parameter.
Each (n, method) runs in a fresh subprocess; its peak memory is the growth of VmHWM after a reset
(/proc/self/clear_refs) over the resident memory at that point; the time is the median over
repeats after a warm-up at n = 16. Every result is checked against "structured".
Writes benchmarks/results/empirical_cnn.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import write_results  # benchmarks/machine.py: the script's folder is on sys.path

RESULTS = Path(__file__).parent / "results" / "empirical_cnn.json"
METHODS = ("structured", "jacobian", "tutorial")


def network(dtype):
    import torch

    import ntklib as nk

    conv = lambda: nk.Conv(64, (3, 3), padding="same", W_std=2**0.5, b_std=0.1)  # noqa: E731
    net = nk.serial(conv(), nk.Relu(), conv(), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1, b_std=0.1))
    return net.init((1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=dtype)


def tutorial_ntk(model, x1, x2):
    """PyTorch's tutorial: per-sample Jacobians of both inputs, contracted with an einsum."""
    import torch
    from torch.func import functional_call, jacrev, vmap

    params = {name: p.detach() for name, p in model.named_parameters()}

    def fnet_single(params, x):
        return functional_call(model, params, (x.unsqueeze(0),)).squeeze(0)

    jac1 = [j.flatten(2) for j in vmap(jacrev(fnet_single), (None, 0))(params, x1).values()]
    jac2 = [j.flatten(2) for j in vmap(jacrev(fnet_single), (None, 0))(params, x2).values()]
    return torch.stack([torch.einsum("Naf,Mbf->NMab", j1, j2) for j1, j2 in zip(jac1, jac2)]).sum(0)[:, :, 0, 0]


def compute(model, X, method):
    import ntklib as nk

    if method == "tutorial":
        return tutorial_ntk(model, X, X)
    return nk.empirical_ntk(model, X, method=method)


def measure(n: int, method: str, repeats: int) -> dict:
    import torch

    from machine import peak_memory, reset_peak_memory

    model = network(torch.float32)
    X = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    compute(model, X[:16], method)  # warm-up: torch.func's one-time costs
    rss = reset_peak_memory()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        theta = compute(model, X, method)
        times.append(time.perf_counter() - start)
    peak = peak_memory() - rss
    reference = compute(model, X, "structured")
    error = float((theta - reference).abs().max() / reference.abs().max())
    return {"seconds": statistics.median(times), "all_seconds": times, "peak_extra_MiB": peak,
            "relative_difference_to_structured": error,
            "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1], args.repeats)))
        return
    rows = []
    for n in args.n:
        row = {"n": n}
        for method in METHODS:
            out = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats), "--one", str(n), method],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            row[method] = json.loads(out.stdout.strip().splitlines()[-1])
        row["speedup_vs_jacobian"] = row["jacobian"]["seconds"] / row["structured"]["seconds"]
        row["speedup_vs_tutorial"] = row["tutorial"]["seconds"] / row["structured"]["seconds"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_results(args.out, rows=rows)


if __name__ == "__main__":
    main()
