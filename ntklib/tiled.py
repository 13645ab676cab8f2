"""Kernel matrices tile by tile: in memory, in a resumable store on disk, or as Dask tasks.

Every entry of a kernel matrix depends only on its own pair of inputs, so the matrix can be cut
into square tiles computed in any order, on any machine, and each tile is a pure function of its
rows of X and Z: a tile lost with a worker is simply computed again. Every path below (in
memory, to disk, on Dask) computes the same tiles with the same function, so their results are
equal bit for bit. When Z is None only the tiles on and above the diagonal are computed, a
diagonal tile as ``kernel(X_I)`` (so that a network's kernels take their exact-diagonal path)
and symmetrised from its upper triangle, and the others are mirrored: K is exactly symmetric.
"""

from __future__ import annotations

import math
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._checks import as_inputs, check_finite, positive_int

DEFAULT_TILE = 1024  # inputs per side of a tile: 4 MiB of float32 per tile and per matrix
GETS = ("nngp", "ntk")


def kernel_matrix(
    kernel: Callable,
    X: Tensor,
    Z: Tensor | None = None,
    *,
    get: str | None = None,
    tile: int = DEFAULT_TILE,
    out: str | os.PathLike | None = None,
    client=None,
    kernel_id: str | None = None,
    progress: bool | None = None,
):
    """The kernel matrix K(X, Z), computed tile by tile, in memory or in a resumable store.

    Args:
        kernel: a kernel function ``(X, Z=None) -> (n, m)`` tensor (``nk.gaussian_kernel``, a
            ``functools.partial`` of one, any callable), or a network's ``net.kernels`` (or the
            network ``net`` itself), which returns ``nk.Kernels(nngp, ntk)``. Diagonal tiles of a
            symmetric matrix are computed as ``kernel(X_I)``, the others as ``kernel(X_I, Z_J)``.
        X: (n, d) vectors or ``(n, C, *S)`` images; Z: (m, ...) of the same per-input shape, or
            None for K(X, X) (then only tiles on and above the diagonal are computed).
        get: for a kernel that returns ``Kernels``: "nngp" or "ntk" keeps that one; None keeps both
            (computed in the same pass). Must be None for a kernel that returns one tensor.
        tile: inputs per side of a tile, the unit of work, of resumption and of a Dask task.
        out: None: the result is in memory on X's device. A directory path: the matrices are
            written to ``<out>/kernel.npy`` (or ``nngp.npy`` and ``ntk.npy``) as tiles finish,
            with a record of finished tiles; calling again with the same arguments resumes and
            skips them, while a different X, Z, kernel, ``get``, tile size or dtype is refused
            with a ValueError. A crash or Ctrl-C loses at most the tiles in flight.
        client: a ``dask.distributed.Client``: tiles become tasks on its workers (a local cluster
            or machines behind a scheduler), at most twice as many in flight as worker threads;
            a worker that dies has its tiles recomputed elsewhere. Tiles are computed on the
            workers' own device of X's kind ("cpu" or "cuda") and written by this process.
        kernel_id: with ``out``: a name you give the kernel, for kernels the store cannot
            identify by their description (objects of your own classes); change it whenever the
            kernel changes. Otherwise the kernel is described by its code, arguments and
            parameters (``ntklib._store.describe``).
        progress: a tqdm bar over tiles on stderr; None shows it on a terminal only (never
            under pytest or in a notebook kernel), as :func:`ntklib.train` does.

    Returns:
        An (n, m) tensor, or ``Kernels(nngp, ntk)`` when the kernel returns both and ``get`` is
        None. With ``out``, CPU tensors that read the files lazily (copy-on-write memory maps:
        writing to them never changes the store); pass the ``.npy`` path to
        :func:`ntklib.solve_kernel_system` with ``solver="pcg"`` to solve without loading it.

    Raises:
        ValueError: a kernel value that is NaN or infinite (naming the tile), a store made for
            another computation, bad inputs (see ``ntklib._checks.as_inputs``).
        TypeError: a kernel that returns neither a tensor nor ``Kernels``; with ``out``, a kernel
            that cannot be identified (pass ``kernel_id``).
    """
    fn = _as_function(kernel)
    X, Z = as_inputs(X, Z)
    if get is not None and get not in GETS:
        raise ValueError(f"get must be None, 'nngp' or 'ntk'; got {get!r}")
    tile = positive_int("tile", tile)
    Z = None if Z is X else Z  # K(X, X): symmetric, as net.kernels treats it
    symmetric = Z is None
    Zs = X if symmetric else Z
    n, m = X.shape[0], Zs.shape[0]
    names, probe = _checked(fn(X[:1]) if symmetric else fn(X[:1], Zs[:1]), get, (1, 1), None)
    dtype = probe[0].dtype
    grid = (math.ceil(n / tile), math.ceil(m / tile))
    tiles = [(i, j) for i in range(grid[0]) for j in range(i if symmetric else 0, grid[1])]

    if out is None:
        results = tuple(torch.empty(n, m, dtype=dtype, device=X.device) for _ in names)
        todo = tiles

        def sink(i: int, j: int, values: tuple[Tensor, ...]) -> None:
            rows, cols = _span(i, tile, n), _span(j, tile, m)
            for result, value in zip(results, values):
                value = value.to(X.device)
                result[rows, cols] = value
                if symmetric and i != j:
                    result[cols, rows] = value.T.contiguous()  # transposed in cache, then one contiguous copy
    else:
        from ._store import KernelStore

        identity = _identity(kernel, fn, kernel_id, X, Z, get, tile, dtype)
        store = KernelStore(Path(out), identity, names, (n, m), _numpy_dtype(dtype), grid)
        todo = [(i, j) for i, j in tiles if not store.done[i, j]]

        def sink(i: int, j: int, values: tuple[Tensor, ...]) -> None:
            arrays = tuple(value.cpu().numpy() for value in values)
            store.write(i, j, _span(i, tile, n), _span(j, tile, m), arrays, mirror=symmetric and i != j)

    bar = None
    try:
        bar = _progress_bar(progress, len(todo), len(tiles))
        if client is None:
            for i, j in todo:
                rows, cols = _span(i, tile, n), _span(j, tile, m)
                same = symmetric and i == j
                sink(i, j, compute_tile(fn, get, X[rows], None if same else Zs[cols], where=(rows, cols)))
                if bar is not None:
                    bar.update(1)
        else:
            _run_on_dask(client, fn, get, X, Zs, symmetric, tile, todo, sink, bar)
    finally:
        if bar is not None:
            bar.close()
        if out is not None:
            store.close()
    if out is not None:
        results = store.tensors()
    if len(names) == 2:
        from .layers.state import Kernels

        return Kernels(*results)
    return results[0]


def compute_tile(fn: Callable, get: str | None, A: Tensor, B: Tensor | None,
                 where: tuple[slice, slice] | None = None) -> tuple[Tensor, ...]:  # fmt: skip
    """One tile: ``fn(A)`` symmetrised when B is None (a diagonal tile), else ``fn(A, B)``;
    the selected matrices, each (len(A), len(B)), checked to be finite."""
    shape = (A.shape[0], A.shape[0] if B is None else B.shape[0])
    _, values = _checked(fn(A) if B is None else fn(A, B), get, shape, where)
    if B is None:  # entries (i, j) and (j, i) need not round alike: keep the upper triangle
        values = tuple(value.triu() + value.triu(1).T for value in values)
    return values


def _checked(raw: object, get: str | None, shape: tuple[int, int], where) -> tuple[tuple[str, ...], tuple]:
    """The names and the selected matrices of a kernel's result, checked: floating, finite, of ``shape``."""
    names = _names(raw, get)
    values = (raw,) if names == ("kernel",) else tuple(getattr(raw, name) for name in names)
    for name, value in zip(names, values):
        if not isinstance(value, Tensor) or tuple(value.shape) != shape or not value.dtype.is_floating_point:
            got = f"shape {tuple(value.shape)}, {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"the kernel must return a floating-point (rows, cols) = {shape} matrix; got {got}")
        if not bool(torch.isfinite(value).all()):
            place = f" in rows {where[0].start}:{where[0].stop}, cols {where[1].start}:{where[1].stop}" if where else ""
            check_finite(("the kernel's values" if name == "kernel" else f"the kernel's {name}") + place, value)
    return names, values


def _as_function(kernel: object) -> Callable:
    from .layers.base import Layer

    if isinstance(kernel, Layer):
        return kernel.kernels
    if not callable(kernel):
        raise TypeError(f"kernel must be a kernel function (X, Z=None) -> K or an ntklib network; "
                        f"got {type(kernel).__name__}")  # fmt: skip
    return kernel


def _names(raw: object, get: str | None) -> tuple[str, ...]:
    if isinstance(raw, Tensor):
        if get is not None:
            raise ValueError(f"get={get!r} picks one of a network's two kernels, but this kernel returns one "
                             "tensor; leave get=None")  # fmt: skip
        return ("kernel",)
    if isinstance(raw, tuple) and hasattr(raw, "nngp") and hasattr(raw, "ntk"):
        return GETS if get is None else (get,)
    if isinstance(raw, list):
        raise ValueError(f"the kernel returned a list of {len(raw)} results (a network with several outputs): "
                         "give a network with one output")  # fmt: skip
    raise TypeError(f"the kernel must return a tensor or nk.Kernels(nngp, ntk); got {type(raw).__name__}")


def _span(index: int, tile: int, size: int) -> slice:
    return slice(index * tile, min((index + 1) * tile, size))


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    if dtype not in (torch.float16, torch.float32, torch.float64):
        raise TypeError(f"a kernel store holds float16, float32 or float64 matrices; the kernel returns {dtype}")
    return torch.empty(0, dtype=dtype).numpy().dtype


def _identity(kernel, fn, kernel_id, X, Z, get, tile, dtype) -> dict:
    """What must agree for a store's tiles to be resumed (see ntklib/_store.py)."""
    from . import __version__
    from ._store import UnidentifiableKernel, describe, digest

    if kernel_id is not None:
        if not isinstance(kernel_id, str) or not kernel_id:
            raise TypeError(f"kernel_id must be a non-empty string; got {kernel_id!r}")
        what = f"kernel_id:{kernel_id}"
    else:
        try:
            what = describe(fn)
        except UnidentifiableKernel as error:
            raise TypeError(f"the kernel store cannot identify kernel {kernel!r}: it reaches {error}, whose "
                            "changes it cannot see; pass kernel_id='a name you change whenever the kernel "
                            "changes'") from None  # fmt: skip
    return {"X": digest(X), "Z": None if Z is None else digest(Z), "kernel": what, "get": get, "tile": tile,
            "dtype": str(dtype), "device": X.device.type, "torch": torch.__version__,
            "ntklib": __version__}  # fmt: skip


def _progress_bar(progress: bool | None, todo: int, total: int):
    from .training import PROGRESS_MIN_STEPS, _show_progress

    # training's rule (a terminal, not pytest, not a notebook kernel), for any run of 2+ tiles
    if not _show_progress(progress, PROGRESS_MIN_STEPS if todo > 1 else 0) or todo == 0:
        return None
    from tqdm import tqdm  # only when a bar is shown

    return tqdm(total=todo, desc="nk.kernel_matrix", unit="tile", file=sys.stderr, dynamic_ncols=True,
                postfix={"done before": total - todo} if todo < total else None)  # fmt: skip


# -- Dask -------------------------------------------------------------------------------------------
def _remote_tile(fn, get, A: Tensor, B: Tensor | None, device: str, where) -> tuple[np.ndarray, ...]:
    """A Dask task: one tile on the worker's device, returned as numpy arrays."""
    if device != "cpu":
        A, B = A.to(device), (None if B is None else B.to(device))
    return tuple(value.cpu().numpy() for value in compute_tile(fn, get, A, B, where))


def _as_is(value):
    return value


def _run_on_dask(client, fn, get, X, Zs, symmetric, tile, todo, sink, bar) -> None:
    try:
        from distributed import as_completed
    except ImportError as error:  # a client without distributed cannot happen; a clear message anyway
        raise ImportError("client= needs Dask: pip install 'ntklib[dask]'") from error
    if not todo:
        return
    n, m = X.shape[0], Zs.shape[0]
    run = uuid.uuid4().hex[:8]

    def block(source: Tensor, side: str, index: int, size: int):
        # A task that returns its block of inputs: workers fetch it once per block (not once per
        # tile), and since the scheduler keeps the task, a block lost with every worker that held
        # it is made again (scattered data would be gone: Dask keeps one replica of it).
        # clone(): a slice would pickle its whole storage.
        data = source[_span(index, tile, size)].cpu().clone()
        return client.submit(_as_is, data, key=f"ntklib-inputs-{run}-{side}-{index}")

    if symmetric:
        blocks = {i: block(X, "X", i, n) for i in sorted({k for tile_ in todo for k in tile_})}
        row_blocks = col_blocks = blocks
    else:
        row_blocks = {i: block(X, "X", i, n) for i in sorted({i for i, _ in todo})}
        col_blocks = {j: block(Zs, "Z", j, m) for j in sorted({j for _, j in todo})}
    limit = max(2, 2 * sum(client.nthreads().values()))
    waiting = iter(todo)
    futures = {}

    def submit() -> bool:
        for i, j in waiting:
            same = symmetric and i == j
            where = (_span(i, tile, n), _span(j, tile, m))
            future = client.submit(_remote_tile, fn, get, row_blocks[i], None if same else col_blocks[j],
                                   X.device.type, where, key=f"ntklib-tile-{run}-{i}-{j}")  # fmt: skip
            futures[future] = (i, j)
            return True
        return False

    try:
        for _ in range(limit):
            if not submit():
                break
        queue = as_completed(list(futures))
        for future in queue:
            i, j = futures.pop(future)
            values = tuple(torch.from_numpy(value) for value in future.result())
            future.release()
            sink(i, j, values)
            if bar is not None:
                bar.update(1)
            if submit():
                queue.add(next(reversed(futures)))
    finally:
        inputs = {future.key: future for future in [*row_blocks.values(), *col_blocks.values()]}
        client.cancel([*futures, *inputs.values()])


# -- products with K recomputed: what KernelRidge(solver="pcg") uses without a store ---------------
class TileOperator:
    """K = kernel(X, X) recomputed tile by tile at every product (nothing n x n is kept)."""

    def __init__(self, kernel: Callable, X: Tensor, get: str | None = None, tile: int = DEFAULT_TILE) -> None:
        self.fn, self.X, self.get, self.tile = _as_function(kernel), X, get, positive_int("tile", tile)
        self.n, self.device = X.shape[0], X.device
        _, (probe, *others) = _checked(self.fn(X[:1]), get, (1, 1), None)
        if others:
            raise ValueError("the kernel returns nk.Kernels(nngp, ntk): pick one, e.g. with get='ntk' or "
                             "lambda X, Z=None: net.kernels(X, Z).ntk")  # fmt: skip
        self.dtype = probe.dtype

    def matmul(self, V: Tensor) -> Tensor:
        from .pcg import product

        X, n, tile = self.X, self.n, self.tile
        out = torch.zeros_like(V)
        for i in range(math.ceil(n / tile)):
            for j in range(i, math.ceil(n / tile)):
                rows, cols = _span(i, tile, n), _span(j, tile, n)
                (block,) = compute_tile(self.fn, self.get, X[rows], None if i == j else X[cols], (rows, cols))
                out[rows] += product(block, V[cols])
                if i != j:
                    out[cols] += product(block.T, V[rows])
        return out

    def rows(self, index: Tensor) -> Tensor:
        """K[index, :] (k, n), computed against column tiles of X."""
        X, n, tile = self.X, self.n, self.tile
        A = X[index]
        blocks = [compute_tile(self.fn, self.get, A, X[_span(j, tile, n)])[0] for j in range(math.ceil(n / tile))]
        return torch.cat(blocks, dim=1)

    def products(self, Z: Tensor, V: Tensor) -> Tensor:
        """kernel(Z, X) @ V, (m, k) in V's dtype, a tile at a time."""
        X, n, tile = self.X, self.n, self.tile
        out = torch.zeros(Z.shape[0], V.shape[1], dtype=V.dtype, device=V.device)
        for start in range(0, Z.shape[0], tile):
            rows = slice(start, min(start + tile, Z.shape[0]))
            for j in range(math.ceil(n / tile)):
                cols = _span(j, tile, n)
                out[rows] += compute_tile(self.fn, self.get, Z[rows], X[cols])[0] @ V[cols].to(self.dtype)
        return out
