"""How much of the machine this process may use.

`available_cpus()` is the number of CPU cores the scheduler lets this process run on
(`os.sched_getaffinity`), further limited by a cgroup CPU quota (containers, CI runners,
`docker --cpus`, Slurm). `os.cpu_count()` counts every core of the machine and over-counts in
all of those settings, which oversubscribes the cores when it sizes thread or process pools.
"""

from __future__ import annotations

import atexit
import gc
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_CGROUP = Path("/sys/fs/cgroup")


def _cgroup_quota(root: Path = _CGROUP) -> float | None:
    """CPU cores allowed by a cgroup quota (v2 `cpu.max`, v1 `cfs_quota_us`); None: no limit."""
    try:
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cpus() -> int:
    """CPU cores this process may use: the affinity mask, capped by a cgroup quota (>= 1)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        count = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def rank_cpus() -> int:
    """This process's share of the usable cores: `available_cpus()` divided among the
    LOCAL_WORLD_SIZE processes that torchrun starts on this machine (1 without torchrun)."""
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, available_cpus() // local)


def spare_cpus(at_most: int, at_least: int = 1) -> int:
    """The one default for helper processes or threads beside a busy main process (network,
    training loop): this process's cores (`rank_cpus`) less one, within [at_least, at_most]."""
    return max(at_least, min(at_most, rank_cpus() - 1))


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while many small objects that cannot form cycles
    are made (records, outlines), restored after. The collections their allocations trigger
    scan every object of the process: with torch imported (730k objects), the records of 300
    nuclei took 29-48 ms with it on (spikes to 490 ms: full collections) and 20-35 ms off."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def sleep_idle_threads(environ: dict | None = None) -> bool:
    """Let the network's idle OpenMP threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE)
    unless the user chose a policy. Only takes effect before torch is imported; returns whether
    it set the policy.

    Slide mode runs the network on every core while post-processing workers and slide reads
    share them; spinning threads then burn the workers' time. On this project's 2-core CPU the
    demo mosaic (`benchmarks/bench_end_to_end.py`) took 22.9 s wall and 35.7 s of CPU with
    PASSIVE against 26.8 s and 51.5 s with spinning threads (ACTIVE), the same nuclei."""
    import sys

    env = os.environ if environ is None else environ
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in env:
        return False
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 512 << 20) -> bool:
    """glibc: serve allocations under `mmap_threshold` from the heap and keep up to
    `trim_threshold` of freed heap for reuse, instead of mapping every large buffer afresh and
    handing it back when freed (glibc's default above 32 MB at most), which zeroes and faults
    in every page of every batch's activations again. Returns whether it applied (glibc only,
    and not where the user set MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_).

    On this project's 2-core CPU the demo mosaic (`benchmarks/bench_end_to_end.py`) took
    17.3-18.6 s wall with 290 k page faults against 20.8-23.6 s and 480-510 k without it."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
        return False  # the user's own settings (glibc read them at start)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
        and libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold))
    )


def skip_exit_collection() -> None:
    """At exit, leave out the interpreter's last garbage collection of the objects still
    alive (`gc.freeze` from an atexit hook; the other hooks and the flushing of files still
    run). That collection walks every object torch, SciPy and the rest made at import (about
    195 k): 0.4-0.6 s of each `hovernet infer wsi` on these 2 cores (mosaic: 0.65-0.75 s from
    the last line to the exit, 0.16-0.18 s with it). Outputs are closed and renamed before exit."""
    atexit.unregister(gc.freeze)  # registered once however often this is called
    atexit.register(gc.freeze)


def tune_process() -> None:
    """The command line's and the demo's process settings, called first thing (before torch
    is imported): `sleep_idle_threads` and `keep_freed_memory`, each unless the user set its
    environment variables, and `skip_exit_collection`."""
    sleep_idle_threads()
    keep_freed_memory()
    skip_exit_collection()
