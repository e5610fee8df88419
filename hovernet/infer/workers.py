"""The post-processing worker pool: spawned processes with one thread each.

Nothing here imports torch: a worker imports only what its jobs need (slide mode's
`hovernet.infer.slide_worker` is numpy, OpenCV, SciPy and scikit-image), so it starts in about
0.4 s of CPU instead of the ~1.9 s that importing torch would add to every worker, time taken
from the network on a small machine.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from hovernet.resources import keep_freed_memory, skip_exit_collection

# thread pools of the libraries a worker may use, capped before they start (libraries the
# spawned main module imported already keep theirs; `hovernet` itself imports none of them)
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def worker_init() -> None:
    """One thread per worker: the pool itself is the parallelism, and the network needs the
    cores. Ctrl-C reaches the whole process group: the main process ends the workers itself."""
    for name in _THREAD_VARS:
        os.environ[name] = "1"
    keep_freed_memory()
    skip_exit_collection()  # the pool's shutdown waits for its workers to exit
    import cv2

    cv2.setNumThreads(1)
    if "torch" in sys.modules:  # a job of the spawned parent's kind imported it already
        sys.modules["torch"].set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def end_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's processes now (after an interrupt): a job they were running is
    not finished, and the front ends redo unfinished work on the next run."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


def make_pool(workers: int) -> ProcessPoolExecutor | None:
    """`workers` spawned processes (None for 0: post-process in the caller); they start with
    the first job (or `warm`)."""
    if workers <= 0:
        return None
    # spawn: forking a process that has started torch's thread pools can deadlock
    ctx = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, ctx, initializer=worker_init)


def warm(pool: ProcessPoolExecutor, workers: int, module: str) -> None:
    """Start the pool's `workers` processes now, each importing `module`, while the caller
    reads the slide and runs the first batches, rather than when the first job arrives and
    competes with the network (a no-op for processes that have it already)."""
    for _ in range(workers):
        pool.submit(_import, module).add_done_callback(_drop_result)


def _import(module: str) -> None:
    importlib.import_module(module)


def _drop_result(future) -> None:
    future.exception()  # an import error resurfaces when the first job runs


def maps_nbytes(*arrays: np.ndarray | None) -> int:
    """Bytes of a job's arrays (None counts 0): what it holds while it waits for a worker."""
    return sum(0 if a is None else a.nbytes for a in arrays)
