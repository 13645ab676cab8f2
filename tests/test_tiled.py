"""nk.kernel_matrix: tiles in memory, in a resumable store on disk, and on a Dask cluster.

Every path is compared with the kernels' own one-call results (an independent computation with
other blocks), and the paths with each other bit for bit (they compute the same tiles)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ntklib as nk
from ntklib.tiled import kernel_matrix

SEED = torch.Generator().manual_seed


def points(n: int, d: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=SEED(seed), dtype=torch.float64)


NET = nk.serial(nk.Dense(16, W_std=2**0.5, b_std=0.1), nk.Relu(), nk.Dense(16, W_std=2**0.5, b_std=0.1),
                nk.Relu(), nk.Dense(1))  # fmt: skip


class Counting:
    """A kernel that counts its calls (identified in stores by kernel_id)."""

    def __init__(self, kernel=nk.gaussian_kernel, interrupt_at: int | None = None):
        self.kernel, self.calls, self.interrupt_at = kernel, 0, interrupt_at

    def __call__(self, X, Z=None):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt  # Ctrl-C while this tile is in flight
        return self.kernel(X, Z)


def test_tiles_give_the_kernels_one_call_values():
    X, Z = points(50), points(23, seed=1)
    K = kernel_matrix(nk.gaussian_kernel, X, tile=16)
    torch.testing.assert_close(K, nk.gaussian_kernel(X), rtol=1e-14, atol=1e-14)
    assert torch.equal(K, K.T)  # only tiles on and above the diagonal are computed, then mirrored
    assert torch.equal(kernel_matrix(nk.gaussian_kernel, X, X, tile=16), K)  # Z is X: the same K(X, X)
    partial = functools.partial(nk.polynomial_kernel, degree=3)
    torch.testing.assert_close(kernel_matrix(partial, X, Z, tile=7), partial(X, Z), rtol=1e-13, atol=1e-13)
    # A network: both kernels in one pass, or one of them; the network itself or net.kernels.
    both = kernel_matrix(NET, X, tile=16)
    reference = NET.kernels(X)
    assert isinstance(both, nk.Kernels)
    torch.testing.assert_close(both.ntk, reference.ntk, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(both.nngp, reference.nngp, rtol=1e-12, atol=1e-12)
    assert torch.equal(kernel_matrix(NET.kernels, X, Z, get="ntk", tile=16), kernel_matrix(NET, X, Z, tile=16).ntk)
    torch.testing.assert_close(kernel_matrix(NET, X, Z, get="nngp", tile=9), NET.kernels(X, Z).nngp,
                               rtol=1e-12, atol=1e-12)  # fmt: skip
    # Images (n, C, H, W) with global pooling (pixel pairs); float32.
    conv = nk.serial(nk.Conv(4, (3, 3), padding="same", W_std=2**0.5), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1))
    images = torch.randn(9, 2, 4, 4, generator=SEED(2))
    K = kernel_matrix(conv, images, get="ntk", tile=4)
    assert K.dtype == torch.float32 and K.shape == (9, 9)
    torch.testing.assert_close(K, conv.kernels(images).ntk, rtol=1e-5, atol=1e-6)


def test_tiles_are_computed_on_the_inputs_device(device, tmp_path):
    X = points(30).to(device)
    K = kernel_matrix(NET, X, get="ntk", tile=8)
    assert K.device == X.device
    torch.testing.assert_close(K, NET.kernels(X).ntk, rtol=1e-12, atol=1e-12)
    stored = kernel_matrix(NET, X, get="ntk", tile=8, out=tmp_path / "K")  # the store is on the CPU
    assert stored.device.type == "cpu" and torch.equal(stored, K.cpu())


def test_bad_kernels_and_arguments():
    X = points(10)
    with pytest.raises(ValueError, match="get='ntk' picks one of a network's two kernels"):
        kernel_matrix(nk.gaussian_kernel, X, get="ntk")
    with pytest.raises(ValueError, match="get must be None, 'nngp' or 'ntk'"):
        kernel_matrix(NET, X, get="both")
    with pytest.raises(TypeError, match="kernel must be a kernel function"):
        kernel_matrix("rbf", X)
    with pytest.raises(ValueError, match="tile must be >= 1"):
        kernel_matrix(nk.gaussian_kernel, X, tile=0)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        kernel_matrix(nk.gaussian_kernel, X, points(4, d=2))
    with pytest.raises(TypeError, match=r"\(rows, cols\) = \(1, 1\) matrix; got shape \(1,\)"):
        kernel_matrix(lambda X, Z=None: X[:, 0], X)

    def nan_far_away(X, Z=None):  # NaN only where rows 8.. meet columns 8..
        K = nk.gaussian_kernel(X, Z)
        return K.masked_fill((X[:, :1] > 1e3) | (K < 0), float("nan")) if X.shape[0] < 9 else K

    Y = X.clone()
    Y[8:, 0] = 1e4
    with pytest.raises(ValueError, match=r"the kernel's values in rows 8:10, cols 8:10 contains 4 NaN"):
        kernel_matrix(nan_far_away, Y, tile=4)


def test_store_equals_memory_bit_for_bit_and_finished_stores_return_at_once(tmp_path):
    X = points(40)
    in_memory = kernel_matrix(NET, X, tile=16)
    stored = kernel_matrix(NET, X, tile=16, out=tmp_path / "K")
    assert torch.equal(stored.ntk, in_memory.ntk) and torch.equal(stored.nngp, in_memory.nngp)
    # The files are plain .npy matrices, readable without ntklib.
    np.testing.assert_array_equal(np.load(tmp_path / "K" / "ntk.npy"), in_memory.ntk.numpy())
    assert np.load(tmp_path / "K" / "tiles.npy").tolist() == [[2, 2, 2], [0, 2, 2], [0, 0, 2]]
    # Writing to the returned tensors never changes the store (copy-on-write maps).
    stored.ntk[0, 0] = -1.0
    assert np.load(tmp_path / "K" / "ntk.npy")[0, 0] == float(in_memory.ntk[0, 0])
    counting = Counting()
    kernel_matrix(counting, X, tile=16, out=tmp_path / "G", kernel_id="gauss")
    assert counting.calls == 1 + 6  # the probe of the output type, then 6 tiles on and above the diagonal
    again = Counting()
    K = kernel_matrix(again, X, tile=16, out=tmp_path / "G", kernel_id="gauss")
    assert again.calls == 1 and torch.equal(K, kernel_matrix(nk.gaussian_kernel, X, tile=16))


def test_an_interrupted_run_resumes_from_its_store(tmp_path):
    X, Z = points(50), points(30, seed=1)
    out = tmp_path / "K"
    with pytest.raises(KeyboardInterrupt):
        kernel_matrix(Counting(interrupt_at=1 + 5), X, Z, tile=10, out=out, kernel_id="gauss")
    done = np.load(out / "tiles.npy")
    assert (done > 0).sum() == 4  # the four tiles before the interrupted one
    resumed = Counting()
    K = kernel_matrix(resumed, X, Z, tile=10, out=out, kernel_id="gauss")
    assert resumed.calls == 1 + 15 - 4
    assert torch.equal(K, kernel_matrix(nk.gaussian_kernel, X, Z, tile=10))


def test_a_killed_process_loses_only_its_tiles_in_flight(tmp_path):
    """A real crash: a child process computing a store gets SIGKILL after some tiles; the store
    is resumed here and equals the in-memory matrix bit for bit."""
    out = tmp_path / "K"
    script = textwrap.dedent(f"""
        import functools, time, torch, ntklib as nk
        from ntklib.tiled import kernel_matrix
        def slow(X, Z=None):
            time.sleep(0.15)
            return nk.gaussian_kernel(X, Z)
        X = torch.randn(60, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        kernel_matrix(slow, X, tile=10, out={str(out)!r}, kernel_id="slow gauss")
    """)
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (out / "tiles.npy").exists() and (np.load(out / "tiles.npy") > 0).sum() >= 3:
                break
            assert child.poll() is None, "the child finished or failed before it could be killed"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    done = int((np.load(out / "tiles.npy") > 0).sum())
    assert 3 <= done < 21
    resumed = Counting()
    X = points(60)
    K = kernel_matrix(resumed, X, tile=10, out=out, kernel_id="slow gauss")
    assert resumed.calls == 1 + 21 - done
    assert torch.equal(K, kernel_matrix(nk.gaussian_kernel, X, tile=10))


def test_a_store_refuses_another_computation(tmp_path):
    X = points(20)
    gauss = functools.partial(nk.gaussian_kernel, sigma=1.0)
    out = tmp_path / "K"
    kernel_matrix(gauss, X, tile=8, out=out)
    kernel_matrix(functools.partial(nk.gaussian_kernel, sigma=1.0), X, tile=8, out=out)  # the same: fine
    cases = {
        "X: stored": {"X": X + 1},
        "Z: stored None": {"Z": X.clone()},  # Z = X itself would be K(X, X), the same
        "kernel: stored": {"kernel": functools.partial(nk.gaussian_kernel, sigma=2.0)},
        "tile: stored 8, now 4": {"tile": 4},
        "dtype: stored 'torch.float64', now 'torch.float32'": {"X": X.float()},
    }
    for message, change in cases.items():
        arguments = {"kernel": gauss, "X": X, "Z": None, "tile": 8, **change}
        with pytest.raises(ValueError, match="was made for a different computation.*" + message.replace("(", r"\(")):
            kernel_matrix(arguments.pop("kernel"), arguments.pop("X"), arguments.pop("Z"), out=out, **arguments)
    # A network's layers are part of the identity; so is what a kernel's closure holds.
    kernel_matrix(NET, X, tile=8, out=tmp_path / "net")
    other = nk.serial(nk.Dense(16, W_std=2**0.5, b_std=0.2), nk.Relu(), nk.Dense(16, W_std=2**0.5, b_std=0.1),
                      nk.Relu(), nk.Dense(1))  # fmt: skip
    with pytest.raises(ValueError, match="kernel: stored"):
        kernel_matrix(other, X, tile=8, out=tmp_path / "net")
    sigma = 1.0
    kernel_matrix(lambda A, B=None: nk.gaussian_kernel(A, B, sigma=sigma), X, tile=8, out=tmp_path / "lambda")
    sigma = 2.0
    with pytest.raises(ValueError, match="kernel: stored"):
        kernel_matrix(lambda A, B=None: nk.gaussian_kernel(A, B, sigma=sigma), X, tile=8, out=tmp_path / "lambda")
    # Kernels it cannot describe need a kernel_id; other files, or a file, are not stores.
    with pytest.raises(TypeError, match="cannot identify kernel.*Counting object.*kernel_id="):
        kernel_matrix(Counting(), X, out=tmp_path / "counting")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("")
    with pytest.raises(ValueError, match="is a directory that is not a kernel store.*todo.txt"):
        kernel_matrix(gauss, X, out=tmp_path / "notes")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        kernel_matrix(gauss, X, out=tmp_path / "notes" / "todo.txt")


def test_unsynced_tiles_are_recomputed_after_a_reboot(tmp_path):
    """Entries 1 (values in the page cache) are trusted after a process crash, not after the OS
    itself went down (another boot id): those tiles are computed again, entries 2 are kept."""
    X = points(30)
    out = tmp_path / "K"
    counting = Counting()
    kernel_matrix(counting, X, tile=10, out=out, kernel_id="g")
    record = np.load(out / "tiles.npy")
    record[0, 1] = record[1, 2] = 1
    np.save(out / "tiles.npy", record)
    same_boot = Counting()
    kernel_matrix(same_boot, X, tile=10, out=out, kernel_id="g")
    assert same_boot.calls == 1  # a process crash leaves the page cache: entries 1 are valid
    np.save(out / "tiles.npy", record)
    (out / "writer.json").write_text(json.dumps({"boot_id": "another boot"}))
    after_reboot = Counting()
    K = kernel_matrix(after_reboot, X, tile=10, out=out, kernel_id="g")
    assert after_reboot.calls == 1 + 2
    assert torch.equal(K, kernel_matrix(nk.gaussian_kernel, X, tile=10))
    assert np.load(out / "tiles.npy")[np.triu_indices(3)].tolist() == [2] * 6


def test_progress_bar_only_when_asked_under_pytest(capsys):
    X = points(20)
    kernel_matrix(nk.gaussian_kernel, X, tile=5)
    assert capsys.readouterr().err == ""
    kernel_matrix(nk.gaussian_kernel, X, tile=5, progress=True)
    err = capsys.readouterr().err
    assert "nk.kernel_matrix" in err and "10/10" in err


def test_importing_ntklib_imports_no_dask_or_zarr():
    code = "import sys, ntklib; print([m for m in sys.modules if m.startswith(('dask', 'distributed', 'zarr'))])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class KillOnce:
    """gaussian_kernel, except that the first time a Dask worker computes the tile whose rows
    start with ``first`` it writes its pid to ``marker`` and kills its own process (SIGKILL)."""

    def __init__(self, marker: str, first: float, parent: int):
        self.marker, self.first, self.parent = marker, first, parent

    def __call__(self, X, Z=None):
        if os.getpid() != self.parent and float(X[0, 0]) == self.first and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return nk.gaussian_kernel(X, Z)


def test_dask_cluster_with_a_worker_killed_mid_run_equals_the_in_process_matrix(tmp_path):
    distributed = pytest.importorskip("distributed")
    import cloudpickle

    X = points(120, d=4)
    tile = 20  # 6 x 6 tiles, 21 on and above the diagonal
    killer = KillOnce(str(tmp_path / "killed"), float(X[40, 0]), os.getpid())  # tile row 2: mid-run
    in_process = kernel_matrix(killer, X, tile=tile)
    net_in_process = kernel_matrix(NET, X, X[:50], tile=tile)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    try:
        cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                                           dashboard_address=None)  # fmt: skip
        with cluster, distributed.Client(cluster) as client:
            before = set(client.run(os.getpid).values())
            on_dask = kernel_matrix(killer, X, tile=tile, client=client, out=tmp_path / "K", kernel_id="gauss")
            killed = int((tmp_path / "killed").read_text())
            assert killed in before and killed not in set(client.run(os.getpid).values())
            assert torch.equal(on_dask, in_process)
            net_on_dask = kernel_matrix(NET, X, X[:50], tile=tile, client=client)
            assert torch.equal(net_on_dask.ntk, net_in_process.ntk)
            assert torch.equal(net_on_dask.nngp, net_in_process.nngp)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    torch.testing.assert_close(in_process, nk.gaussian_kernel(X), rtol=1e-14, atol=1e-14)
