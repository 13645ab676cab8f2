"""The benchmark scripts' code paths, at tiny sizes: correctness only, never timing."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

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


def test_fused_reference_is_ntklibs_recursion_in_ntklibs_blocks():
    """The "fused" reference, run eagerly (torch.compile only fuses it): uneven blocks on and
    above the diagonal, mirrored, give ntklib's kernels."""
    analytic = load("analytic_ntk")
    X = torch.randn(40, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for depth, block in ((1, 40), (3, 7)):
        nngp, ntk = analytic.blocked_relu_kernels(X, depth, block=block)
        reference = nk.infinite_width_kernels(X, depth=depth, activation="relu")
        torch.testing.assert_close(nngp, reference.nngp, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ntk, reference.ntk, rtol=1e-10, atol=1e-10)


class FakeClock:
    """Stands in for the ``time`` and ``resource`` modules of a benchmark script: perf_counter
    steps through ``ticks``, and the resident-set peak (KiB) grows by ``grow_kib`` after the
    first reading. The worker's reported median and peak can then be checked exactly."""

    RUSAGE_SELF = 0

    def __init__(self, ticks, grow_kib):
        self.ticks, self.grow_kib, self.rss_reads = list(ticks), grow_kib, 0

    def perf_counter(self):
        return self.ticks.pop(0)

    def getrusage(self, who):
        self.rss_reads += 1
        return SimpleNamespace(ru_maxrss=1000 + (self.grow_kib if self.rss_reads > 1 else 0))


def test_analytic_worker_reports_the_median_time_and_the_peak_growth(monkeypatch):
    """Three timed repeats of 2, 5 and 3 s: the median is 3 s; a peak 3 MiB above the baseline
    reads 3.0 MiB. The clock is fake, so the worker's bookkeeping is checked, not the machine."""
    analytic = load("analytic_ntk")
    for what in ("matmul", "ntklib", "naive", "outputs"):
        clock = FakeClock([10.0, 12.0, 20.0, 25.0, 30.0, 33.0], grow_kib=3 * 1024)
        monkeypatch.setattr(analytic, "time", clock)
        monkeypatch.setattr(analytic, "resource", clock)
        out = analytic.measure(64, 4, 2, "float64", what, repeats=3, device="cpu")
        assert out == {"seconds": 3.0, "peak_extra_MiB": 3.0}, what
        assert clock.ticks == [] and clock.rss_reads == 2


def test_naive_worker_refuses_to_time_a_wrong_kernel(monkeypatch):
    """"naive" is timed only after it reproduces ntklib's kernels: a wrong transcription fails."""
    analytic = load("analytic_ntk")
    right = analytic.naive_relu_kernels
    monkeypatch.setattr(analytic, "naive_relu_kernels", lambda X, depth: right(X, depth + 1))
    with pytest.raises(AssertionError):
        analytic.measure(64, 4, 2, "float64", "naive", repeats=1, device="cpu")


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


def test_empirical_worker_computes_the_kernel_every_method_agrees_on(monkeypatch):
    """Every kernel the worker times is recorded; the "structured" one is checked against the
    torch.func Jacobian contraction of the same network and points (the worker's own
    relative_difference_to_structured is 0 for "structured" by construction), and the
    "jacobian" row's reported difference is checked against the recorded kernels."""
    import ntklib.empirical

    empirical = load("empirical_ntk")
    timed = []

    def recording(model, X, Z=None, method="auto", **kwargs):
        theta = nk.empirical_ntk(model, X, Z, method=method, **kwargs)
        timed.append((model, X, method, theta))
        return theta

    monkeypatch.setattr(ntklib.empirical, "empirical_ntk", recording)
    kernels = {}
    for method in ("structured", "jacobian"):
        timed.clear()
        out = empirical.measure(8, 3, 16, 2, method, repeats=1, device="cpu")
        assert out["parameters"] == 3 * 16 + 16 + 16 * 16 + 16 + 16 + 1
        assert len(timed) == 3  # the warm-up, one timed run, the "structured" reference
        model, X, used, theta = timed[1]
        assert used == method and X.shape == (8, 3) and theta.shape == (8, 8)
        kernels[method] = theta
        if method == "structured":
            reference = nk.empirical_ntk(model, X, method="jacobian")
            assert float((theta - reference).abs().max() / reference.abs().max()) < 1e-5
        else:
            structured = timed[2][3]
            error = float((theta - structured).abs().max() / structured.abs().max())
            assert out["relative_difference_to_structured"] == pytest.approx(error, rel=1e-6, abs=1e-12)
            assert out["relative_difference_to_structured"] < 1e-5
    # Both runs use the same seeded network and points, so they computed the same kernel.
    torch.testing.assert_close(kernels["structured"], kernels["jacobian"], rtol=1e-5, atol=1e-5)


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


def test_cnn_benchmark_kernels_are_the_books_network():
    """The benchmark's ntklib network is the one its docstring states: its kernels on a few
    images equal those of the same description written out here, and its peak-memory reading
    sees an allocation made after the reset."""
    cnn = load("cnn_kernels")
    x = cnn.inputs(6, "float64", digits=False)
    nngp, ntk = cnn.ntklib_kernels("gap")(x)
    conv = lambda: nk.Conv(1, (3, 3), padding="same", W_std=2**0.5, b_std=0.1)  # noqa: E731
    net = nk.serial(conv(), nk.Relu(), conv(), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1, W_std=1.0, b_std=0.1))
    reference = net.kernels(torch.from_numpy(x))
    assert x.shape == (6, 1, 8, 8)
    torch.testing.assert_close(torch.from_numpy(nngp), reference.nngp, rtol=0, atol=0)
    torch.testing.assert_close(torch.from_numpy(ntk), reference.ntk, rtol=0, atol=0)
    before = cnn.reset_peak_memory()
    block = torch.ones(64 * 2**20 // 8, dtype=torch.float64)  # 64 MiB, touched
    assert cnn.peak_memory() - before > 60
    del block


def test_cnn_empirical_benchmark_methods_compute_the_same_kernel():
    """The tutorial's einsum contraction, ntklib's jacobian and structured methods give one
    kernel on the benchmark's CNN (a few inputs), so the timed methods compare like with like."""
    bench = load("empirical_cnn")
    model = bench.network(torch.float64)
    X = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    kernels = [bench.compute(model, X, method) for method in bench.METHODS]
    assert kernels[0].shape == (5, 5)
    for other in kernels[1:]:
        torch.testing.assert_close(other, kernels[0], rtol=1e-10, atol=1e-12)


def test_float32_breakdown_script_measures_the_breakdown(tmp_path):
    """At n = 100 and 400: the ReLU NTK solves in float32 as in float64; the erf NTK's float32
    system is refused at n = 400 and the fixes solve it (the appendix's claims, at small n)."""
    breakdown = load("float32_breakdown")
    out = tmp_path / "breakdown.json"
    result = breakdown.main(["--sizes", "100", "400", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    rows = {(r["kernel"], r["n"]): r for r in result["rows"]}
    for n in (100, 400):
        relu, erf = rows["relu", n], rows["erf", n]
        assert erf["condition"] > 100 * relu["condition"]
        assert not relu["float32"]["raised"] and relu["float32"]["prediction_gap"] < 1e-3
        assert relu["float64"]["accuracy"] > 0.8
    erf = rows["erf", 400]
    assert erf["float32"]["raised"] and erf["condition"] > erf["one_over_n_eps_float32"]
    for fix in ("float64", "jitter"):
        solved = erf["fixes"][fix]
        assert not solved["raised"] and solved["fallback"] == fix
        assert solved["accuracy"] >= erf["float64"]["accuracy"] - 0.05
    assert erf["fixes"]["jitter"]["jitter"] > 0
