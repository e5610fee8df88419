"""Large arrays handed to worker processes through shared memory instead of a pipe.

The engine's maps (hundreds of MB per slide region) used to be pickled whole for the worker
pool: copied into a bytes object, written through a pipe and read back. Here they are made in
files in /dev/shm (`SharedArrays.empty`), a job is pickled with each such array replaced by its
file, offset, shape and strides (`SharedArrays.dumps`; other large arrays are copied into a file
once), and the worker maps the file (`run_shipped`). The job's *holders* must live until the
worker is done: then the file goes back to a free list and is reused by a later array of at
most its size, so its pages are allocated once (first writes into fresh tmpfs pages cost about
as much as pickling them did). Files are registered with multiprocessing's resource tracker,
which removes them if this process is killed; `close()` removes the free ones, and files in use
go when their array does (files of processes that were killed together with their tracker are
swept when the next SharedArrays is made). Where /dev/shm is missing or lacks room, arrays are
plain and jobs are pickled whole.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import mmap
import os
import pickle
import threading
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any

import numpy as np

from hovernet.infer.claims import pid_alive

SHM_DIR = Path("/dev/shm")
SHM_RESERVE = 512 << 20  # leave this much of /dev/shm free


@dataclass
class _Block:
    path: Path
    mapped: mmap.mmap
    size: int
    address: int
    tracked: bool


def _destroy(block: _Block) -> None:
    """Remove the block's file (its pages go when the last mapping does)."""
    try:
        block.path.unlink(missing_ok=True)
    finally:
        if block.tracked:
            resource_tracker.unregister("/" + block.path.name, "shared_memory")


def _destroy_all(blocks: list[_Block]) -> None:
    while blocks:
        _destroy(blocks.pop())


def sweep_stale(root: Path = SHM_DIR) -> int:
    """Remove files that processes of this host left behind (named for a pid that no longer
    runs: killed with their resource tracker); returns how many."""
    removed = 0
    try:
        paths = list(Path(root).glob("hovernet-*-*"))
    except OSError:
        return 0
    for path in paths:
        try:
            pid = int(path.name.split("-")[1])
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid, None):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


def _attach(path: str, offset: int, shape: tuple, dtype: str, strides: tuple) -> np.ndarray:
    """A worker's view of an array in shared memory, mapped while the array lives; copy on
    write, so that what the worker changes stays its own, as with a pickled copy."""
    fd = os.open(path, os.O_RDONLY)
    try:
        mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
    return np.ndarray(shape, np.dtype(dtype), mapped, offset, strides)


class SharedArrays:
    """Arrays in shared memory files under `root` (see the module docstring). Arrays under
    `min_bytes` stay plain; at most `keep_bytes` of free files are kept for reuse."""

    def __init__(self, root: Path = SHM_DIR, min_bytes: int = 1 << 20, keep_bytes: int = 8 << 30):
        self.root, self.min_bytes, self.keep_bytes = Path(root), min_bytes, keep_bytes
        self.tracked = self.root == SHM_DIR
        self.prefix = f"hovernet-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.created = 0  # files made (the rest of `empty`'s arrays reused one)
        self._names = itertools.count()
        self._lock = threading.RLock()  # finalizers may run inside a locked section (GC)
        self._free: list[_Block] = []
        self._lent: dict[int, _Block] = {}  # id(array handed out) -> its block
        self._closed = False
        weakref.finalize(self, _destroy_all, self._free)  # when this object goes
        if self.tracked:
            sweep_stale(self.root)

    def room(self, nbytes: int) -> bool:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize >= nbytes + SHM_RESERVE

    def _new_block(self, nbytes: int) -> _Block | None:
        if not self.room(nbytes):
            return None
        path = self.root / f"{self.prefix}-{next(self._names)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, nbytes)
            mapped = mmap.mmap(fd, nbytes)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        if self.tracked:
            resource_tracker.register("/" + path.name, "shared_memory")
        address = np.frombuffer(mapped, np.uint8, 1).__array_interface__["data"][0]
        self.created += 1
        return _Block(path, mapped, nbytes, address, self.tracked)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialised array, in a shared file when at least `min_bytes` and there is room."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        nbytes = count * dtype.itemsize
        if nbytes < self.min_bytes:
            return np.empty(shape, dtype)
        with self._lock:
            fits = [b for b in self._free if nbytes <= b.size <= 2 * nbytes + self.min_bytes]
            block = min(fits, key=lambda b: b.size) if fits else None
            if block is not None:
                self._free.remove(block)
        if block is None:
            block = self._new_block(nbytes)
            if block is None:
                return np.empty(shape, dtype)
        array = np.frombuffer(block.mapped, dtype, count).reshape(shape)
        holder = array.base if isinstance(array.base, np.ndarray) else array
        with self._lock:
            self._lent[id(holder)] = block
        weakref.finalize(holder, self._returned, id(holder))
        return array

    def _returned(self, key: int) -> None:
        """An array handed out died (so did every view of it): its file is free again."""
        with self._lock:
            block = self._lent.pop(key)
            idle = sum(b.size for b in self._free)
            keep = not self._closed and idle + block.size <= self.keep_bytes
            if keep:
                self._free.append(block)
        if not keep:
            _destroy(block)

    def block_of(self, array: np.ndarray) -> tuple[np.ndarray, str, int] | None:
        """(the array that keeps the file in use, the file, `array`'s offset in it), or None
        when `array` is not in one of these files."""
        holder = array
        while isinstance(holder.base, np.ndarray):
            holder = holder.base
        with self._lock:
            block = self._lent.get(id(holder))
        base = holder.base
        if block is None or not (isinstance(base, memoryview) and base.obj is block.mapped):
            return None
        return holder, str(block.path), array.__array_interface__["data"][0] - block.address

    def dumps(self, job: Any) -> tuple[bytes, list, int]:
        """(pickled job, what must live until its worker is done, bytes it maps)."""
        buffer = io.BytesIO()
        pickler = _SharingPickler(buffer, self)
        pickler.dump(job)
        return buffer.getvalue(), pickler.holders, pickler.shared

    def close(self) -> None:
        """Remove the free files now; those in use go when their arrays do."""
        with self._lock:
            self._closed = True
            _destroy_all(self._free)


class _SharingPickler(pickle.Pickler):
    """Pickles arrays of at least `arrays.min_bytes` as references into shared memory."""

    def __init__(self, file, arrays: SharedArrays):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.arrays, self.holders, self.shared = arrays, [], 0

    def reducer_override(self, obj):
        if not isinstance(obj, np.ndarray) or obj.nbytes < self.arrays.min_bytes:
            return NotImplemented
        found = self.arrays.block_of(obj)
        if found is None:
            copy = self.arrays.empty(obj.shape, obj.dtype)
            found = self.arrays.block_of(copy)
            if found is None:
                return NotImplemented  # no room: pickled whole
            copy[...] = obj
            obj = copy
        holder, path, offset = found
        self.holders.append(holder)
        self.shared += obj.nbytes
        return _attach, (path, offset, obj.shape, obj.dtype.str, obj.strides)


def run_shipped(work: Callable[[Any], Any], payload: bytes) -> Any:
    """In a worker: unpickle a job made by `SharedArrays.dumps` (mapping its arrays), run it."""
    return work(pickle.loads(payload))
