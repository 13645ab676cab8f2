"""The disk store of :func:`ntklib.kernel_matrix`: memory-mapped ``.npy`` matrices, a record of
finished tiles, and the identity of what is being computed.

A store is a directory::

    meta.json   what is computed (X, Z, kernel, tile, dtype, ...); written last at creation
    kernel.npy  the (n, m) matrix (or nngp.npy and ntk.npy for a network's two kernels)
    tiles.npy   uint8, one entry per tile: 1 once the tile's values are on disk

Why ``.npy`` and not zarr: a kernel matrix is dense floating point, which compresses poorly, so
zarr's chunked compression buys little; an ``.npy`` file is the matrix itself, readable by
``numpy.load(path, mmap_mode="r")`` anywhere without ntklib, written in place at any offset, and
needs no new dependency. Only the process that called ``kernel_matrix`` writes (Dask workers
return their tiles to it), so the store needs neither locks nor a shared file system.

Order of writes, which makes a crash or Ctrl-C lose at most the tiles in flight: a tile's values
are written to the file (the OS page cache), then its record entry is set to 1. A process that
dies, however, leaves the page cache to the OS, which writes it to disk, so every entry 1 is
valid on the next call. Only a crash of the OS itself can lose pages (in any order), so every
``SYNC_SECONDS`` and at the end of a call the values are flushed to disk (fsync) and then their
entries raised to 2; a store is reopened after a reboot (another Linux boot id than its last
writer's) with its entries 1 set back to 0. Syncing every tile instead would cost a disk flush
per tile (about 40 ms for a 4 MiB tile here, as much as computing it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import types
from pathlib import Path

import numpy as np
import torch

FORMAT = "ntklib-kernel-store/1"
RECORD = "tiles.npy"
META = "meta.json"
WRITER = "writer.json"
SYNC_SECONDS = 30.0


class UnidentifiableKernel(TypeError):
    """The kernel cannot be told apart from a different one by its description."""


# -- identity: what makes two calls "the same computation" -------------------------------------
def digest(value: torch.Tensor) -> str:
    """``dtype shape sha256:<hex>`` of a tensor's values (bytes in C order, on the CPU)."""
    data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return f"{str(value.dtype).removeprefix('torch.')} {tuple(value.shape)} sha256:{hashlib.sha256(data).hexdigest()}"


def describe(obj: object) -> str:
    """A description of a kernel that changes whenever its result may change.

    Plain values by repr, tensors and arrays by a hash of their values, ``functools.partial``
    by its function and arguments, a bound method by its object and function, a Python function
    by its qualified name, a hash of its bytecode and constants, its defaults, the values its
    closure holds and the globals it reads (recursively), ntklib's objects (layers, activations,
    dual maps) by their class and attributes, a torch module by its repr and parameters, C
    functions (``torch.relu``), classes and modules by name. Any other object raises
    :class:`UnidentifiableKernel`, except a global read by a function whose class comes from
    another library (a logger, a typing construct), which is described by its type. Changes
    inside other libraries' code are not seen (torch's and ntklib's versions are recorded).
    """
    return _describe(obj, set())


def _describe(obj: object, seen: set[int], home: str | None = None) -> str:
    """``home``: set for a global read by a function of that module (see :func:`describe`)."""
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        return repr(obj)
    if isinstance(obj, (torch.dtype, torch.device)):
        return repr(obj)
    if isinstance(obj, torch.Tensor):
        return f"tensor({digest(obj)})"
    if isinstance(obj, np.ndarray):
        return f"array({digest(torch.from_numpy(np.ascontiguousarray(obj)))})"
    if isinstance(obj, np.generic):
        return repr(obj.item())
    if id(obj) in seen:  # a function that reaches itself (recursion): described once
        return f"<again {getattr(obj, '__qualname__', type(obj).__name__)}>"
    seen = seen | {id(obj)}
    if isinstance(obj, (tuple, list)):
        inner = ", ".join(_describe(item, seen) for item in obj)
        return f"{type(obj).__name__}({inner})"
    if isinstance(obj, dict):
        items = sorted(obj.items(), key=repr)
        return "{" + ", ".join(f"{_describe(k, seen)}: {_describe(v, seen)}" for k, v in items) + "}"
    if isinstance(obj, functools.partial):
        return f"partial({_describe(obj.func, seen)}, {_describe(obj.args, seen)}, {_describe(obj.keywords, seen)})"
    if isinstance(obj, types.MethodType):
        return f"method({_describe(obj.__self__, seen)}.{_describe(obj.__func__, seen)})"
    if isinstance(obj, types.FunctionType):
        return _describe_function(obj, seen)
    if isinstance(obj, (types.BuiltinFunctionType, types.ModuleType, type)) or _is_torch_callable(obj):
        name = getattr(obj, "__qualname__", getattr(obj, "__name__", repr(obj)))
        return f"{getattr(obj, '__module__', None) or ''}:{name}"
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if isinstance(obj, torch.nn.Module):
        return f"module({obj!r}, {_describe(dict(obj.state_dict()), seen)})"
    if type(obj).__module__.split(".")[0] == "ntklib":
        state = dict(getattr(obj, "__dict__", {}))
        state.update({name: getattr(obj, name) for name in getattr(type(obj), "__slots__", ()) if hasattr(obj, name)})
        return f"{kind}{_describe(state, seen)}"
    if home is not None and type(obj).__module__.split(".")[0] != home.split(".")[0]:
        return f"<a {kind}>"
    raise UnidentifiableKernel(f"a {kind} object")


def _is_torch_callable(obj: object) -> bool:
    """C functions of torch (``torch.relu``) and its op overloads: fixed by torch's version."""
    return type(obj).__module__.split(".")[0] == "torch" and callable(obj) and not isinstance(obj, torch.nn.Module)


def _describe_function(fn: types.FunctionType, seen: set[int]) -> str:
    code = fn.__code__
    parts = [f"{fn.__module__}:{fn.__qualname__}", f"code:{_code_hash(code)}",
             f"defaults:{_describe(fn.__defaults__, seen)}",
             f"kwdefaults:{_describe(fn.__kwdefaults__, seen)}"]  # fmt: skip
    if fn.__closure__:
        cells = []
        for name, cell in zip(code.co_freevars, fn.__closure__):
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell: a name assigned after the function was made
                contents = None
            cells.append(f"{name}={_describe(contents, seen)}")
        parts.append("closure:" + ", ".join(cells))
    names = sorted(_global_names(code))
    used = [(name, fn.__globals__[name]) for name in names if name in fn.__globals__]
    if used:
        home = fn.__module__ or "__main__"
        parts.append("globals:" + ", ".join(f"{name}={_describe(value, seen, home)}" for name, value in used))
    return "function(" + "; ".join(parts) + ")"


def _code_hash(code: types.CodeType) -> str:
    digest_ = hashlib.sha256(code.co_code)
    for const in code.co_consts:
        digest_.update((_code_hash(const) if isinstance(const, types.CodeType) else repr(const)).encode())
    digest_.update(repr(code.co_names).encode())
    return digest_.hexdigest()[:16]


def _global_names(code: types.CodeType) -> set[str]:
    """Names a function (and the functions defined inside it) may read as globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


# -- the store ------------------------------------------------------------------------------------
class KernelStore:
    """One store directory, opened for writing tiles (see the module docstring)."""

    def __init__(self, path: Path, identity: dict, names: tuple[str, ...], shape: tuple[int, int],
                 dtype: np.dtype, grid: tuple[int, int]) -> None:  # fmt: skip
        self.path, self.names, self.shape, self.dtype = path, names, shape, np.dtype(dtype)
        meta = {"format": FORMAT, "identity": identity, "arrays": list(names), "shape": list(shape),
                "dtype": self.dtype.name, "grid": list(grid)}  # fmt: skip
        if path.exists() and not path.is_dir():
            raise ValueError(f"out={str(path)!r} exists and is not a directory; a kernel store is a directory")
        if (path / META).exists():
            self._check_same(json.loads((path / META).read_text()), meta)
        else:
            self._create(meta)
        self.offsets = {name: _data_offset(path / f"{name}.npy") for name in names}
        self.record = os.open(path / RECORD, os.O_RDWR)
        self._lock()
        self.record_offset = _data_offset(path / RECORD)
        self.done = np.load(path / RECORD)  # (tile rows, tile cols) uint8: 0 to do, 1 written, 2 on disk
        boot = _boot_id()
        writer = path / WRITER
        last = json.loads(writer.read_text()).get("boot_id") if writer.exists() else None
        if boot is None or last != boot:  # a reboot since the last writer: its unsynced tiles may be lost
            self.done[self.done == 1] = 0
            os.pwrite(self.record, self.done.tobytes(), self.record_offset)
        writer.write_text(json.dumps({"boot_id": boot}))
        self.synced = time.monotonic()

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not on POSIX: no lock
            return
        try:
            fcntl.flock(self.record, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.record)
            raise ValueError(f"another process is writing the kernel store at {str(self.path)!r}") from None

    def _create(self, meta: dict) -> None:
        path = self.path
        ours = {META, RECORD, WRITER, META + ".tmp"} | {f"{name}.npy" for name in ("kernel", "nngp", "ntk")}
        if path.exists():
            strangers = sorted(p.name for p in path.iterdir() if p.name not in ours)
            if strangers:
                raise ValueError(f"out={str(path)!r} is a directory that is not a kernel store (it holds "
                                 f"{', '.join(strangers[:3])}); give a new or empty directory")  # fmt: skip
        path.mkdir(parents=True, exist_ok=True)
        for name in self.names:  # sparse files: no disk is used until tiles are written
            np.lib.format.open_memmap(path / f"{name}.npy", mode="w+", dtype=self.dtype, shape=self.shape).flush()
        np.save(path / RECORD, np.zeros(meta["grid"], dtype=np.uint8))
        tmp = path / (META + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, path / META)  # the store exists from this moment on, complete

    def _check_same(self, stored: dict, meta: dict) -> None:
        where = f"the kernel store at {str(self.path)!r}"
        if stored.get("format") != FORMAT:
            raise ValueError(f"{where} has format {stored.get('format')!r}, not {FORMAT!r}")
        old, new = stored["identity"], meta["identity"]
        differ = [key for key in new if old.get(key) != new[key]]
        for key in ("arrays", "shape", "dtype", "grid"):
            if key not in differ and stored.get(key) != meta[key]:
                differ.append(key)
        if differ:
            lines = "; ".join(f"{key}: stored {_short(old.get(key, stored.get(key)))}, now "
                              f"{_short(new.get(key, meta.get(key)))}" for key in differ)  # fmt: skip
            raise ValueError(f"{where} was made for a different computation ({lines}); its tiles will not be "
                             "mixed with these: give another out= directory, or delete this one to start "
                             "over")  # fmt: skip

    def write(self, i: int, j: int, rows: slice, cols: slice, values: tuple[np.ndarray, ...], mirror: bool) -> None:
        """Put tile (i, j) on disk (and its transpose at (j, i) when ``mirror``), then record it."""
        for name, tile in zip(self.names, values):
            self._write_band(name, rows, cols, tile)
            if mirror:
                self._write_band(name, cols, rows, tile.T)
        self.done[i, j] = 1
        os.pwrite(self.record, b"\x01", self.record_offset + i * self.done.shape[1] + j)
        if time.monotonic() - self.synced > SYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        """Flush the values to disk, then mark their tiles 2 (on disk) and flush the record."""
        written = self.done == 1
        if written.any():
            for name in self.names:
                fd = os.open(self.path / f"{name}.npy", os.O_RDWR)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self.done[written] = 2
            os.pwrite(self.record, self.done.tobytes(), self.record_offset)
            os.fsync(self.record)
        self.synced = time.monotonic()

    def close(self) -> None:
        """Sync and release the store (its lock)."""
        if self.record >= 0:
            try:
                self.sync()
            finally:
                os.close(self.record)
                self.record = -1

    def _write_band(self, name: str, rows: slice, cols: slice, tile: np.ndarray) -> None:
        m = self.shape[1]
        band = np.memmap(self.path / f"{name}.npy", dtype=self.dtype, mode="r+",
                         offset=self.offsets[name] + rows.start * m * self.dtype.itemsize,
                         shape=(rows.stop - rows.start, m))  # fmt: skip
        band[:, cols] = tile
        del band  # unmapped: the page cache holds the values, whatever happens to this process

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The finished matrices as CPU tensors that read the files lazily (copy-on-write
        memory maps: writing to them never changes the store)."""
        return tuple(torch.from_numpy(np.load(self.path / f"{name}.npy", mmap_mode="c")) for name in self.names)


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _data_offset(path: Path) -> int:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        return f.tell()


def _short(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
