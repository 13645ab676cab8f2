"""The benchmark scripts' code paths, at tiny sizes: correctness only, never timing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ntklib as nk

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    # The scripts import their sibling benchmarks/machine.py, as they do when run as files.
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_naive_analytic_baseline_computes_ntklibs_kernels():
    analytic = load("analytic_ntk")
    X = torch.randn(40, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for depth in (1, 3):
        nngp, ntk = analytic.naive_relu_kernels(X, depth)
        reference = nk.infinite_width_kernels(X, depth=depth, activation="relu")
        torch.testing.assert_close(nngp, reference.nngp, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ntk, reference.ntk, rtol=1e-10, atol=1e-10)


def test_analytic_worker_reports_a_time_and_memory():
    analytic = load("analytic_ntk")
    for what in ("matmul", "ntklib", "naive"):
        out = analytic.measure(64, 4, 2, "float64", what, repeats=1, device="cpu")
        assert out["seconds"] > 0 and out["peak_extra_MiB"] >= 0


def test_kernel_ridge_solvers_agree():
    ridge = load("kernel_ridge")
    K, y = ridge.problem(50)
    solutions = {name: solve() for name, solve in ridge.solvers(K, y).items()}
    assert set(solutions) == set(ridge.METHODS)
    for name, alpha in solutions.items():
        torch.testing.assert_close(alpha, solutions["cholesky"], rtol=1e-8, atol=1e-10, msg=name)
    assert ridge.measure(50, "sklearn", repeats=1)["relative_difference_to_cholesky"] < 1e-8


def test_kernel_ridge_has_no_sklearn_on_a_gpu():
    ridge = load("kernel_ridge")
    assert ridge.methods_on("cpu") == ridge.METHODS
    assert ridge.methods_on("cuda") == ("ntklib", "cholesky")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernel_ridge_worker_on_cuda():
    ridge = load("kernel_ridge")
    for method in ridge.methods_on("cuda"):
        out = ridge.measure(64, method, repeats=1, device="cuda")
        assert out["relative_difference_to_cholesky"] < 1e-8 and out["peak_extra_MiB"] >= 0
    with pytest.raises(ValueError, match="method 'sklearn' does not run on cuda"):
        ridge.measure(64, "sklearn", repeats=1, device="cuda")


def test_empirical_worker_checks_methods_against_structured():
    empirical = load("empirical_ntk")
    for method in ("structured", "jacobian"):
        out = empirical.measure(8, 3, 16, 2, method, repeats=1, device="cpu")
        assert out["relative_difference_to_structured"] < 1e-5
        assert out["parameters"] == 3 * 16 + 16 + 16 * 16 + 16 + 16 + 1


def test_kernel_ridge_script_runs_end_to_end(tmp_path, monkeypatch):
    ridge = load("kernel_ridge")
    result = tmp_path / "kernel_ridge.json"
    monkeypatch.setattr(ridge, "RESULTS", result)
    monkeypatch.setattr(sys, "argv", ["kernel_ridge.py", "--n", "30", "--repeats", "1"])
    # The driver re-runs the script file in subprocesses (one per method) for clean memory figures.
    ridge.main()
    written = json.loads(result.read_text())
    rows = written["rows"]
    assert [row["n"] for row in rows] == [30]
    assert written["machine"]["torch"] == torch.__version__ and written["machine"]["cpus"] >= 1
    assert set(rows[0]["methods"]) == set(ridge.METHODS)
