"""The one inference engine behind tile mode and slide mode.

`run_engine` drives a stream of images through `hovernet.infer.predict.predict_stream`
(batches span image boundaries) in this process, hands each image's maps to a pool of
post-processing worker processes, and reports the results back in input order. The network
never waits for post-processing while the pool has room: maps waiting for a worker are kept
under a memory budget, and only when that budget is full does the main process wait for the
oldest job.

Front ends differ only in what they feed in (whole tiles, or overlapping regions of a slide),
what a job is (`make_job`) and what a worker does with it (`work`, a top-level function so that
it pickles into spawned workers).

Jobs reach the workers without their arrays being copied through a pipe: the network's maps are
made in shared memory (`hovernet.infer.sharedmem.SharedArrays`, files in /dev/shm, reused from
job to job), and a job is pickled in this process with its large arrays replaced by references
that the worker maps. Where /dev/shm is missing or too full, jobs are pickled whole as before.
`EngineConfig.profile` times the main process's stages (`EngineStats.stages`,
`hovernet.infer.predict.StageClock`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hovernet.infer.predict import Select, StageClock, predict_stream
from hovernet.infer.sharedmem import SharedArrays, run_shipped
from hovernet.infer.tiling import TileGrid
from hovernet.infer.workers import end_workers, make_pool


@dataclass(frozen=True)
class EngineConfig:
    batch_size: int = 8
    precision: str = "auto"
    workers: int = 1  # post-processing processes; 0 = post-process in this process
    mem_budget: int = 1 << 30  # bytes of maps waiting for workers (at least one job waits)
    max_in_flight: int | None = None  # jobs waiting or running; None = no limit but memory
    # False: `on_result` in input order, from this thread (slide mode: its SQLite store lives
    # here). True: from the thread that sees the worker finish, as soon as it finishes, under a
    # lock (tile mode: each image's line appears when its outputs are written)
    report_as_done: bool = False
    shared_memory: bool = True  # hand maps to workers through /dev/shm (where it has room)
    profile: bool = False  # time the main process's stages (EngineStats.stages)
    span_images: bool = True  # False: no batch mixes two images' windows (predict_stream span)


@dataclass
class EngineStats:
    n_windows: int = 0
    network_s: float = 0.0  # main process: waiting for input, padding, network, stitching
    wait_s: float = 0.0  # main process: waiting for workers (budget full)
    stages: StageClock | None = None  # with EngineConfig.profile
    bytes_pickled: int = 0  # bytes of pickled jobs sent to workers through pipes
    bytes_shared: int = 0  # bytes of arrays workers mapped from shared memory


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def read_ahead(
    keys: Iterable[Any], read: Callable[[Any], Any], workers: int
) -> Iterator[tuple[Any, Future]]:
    """(key, future of `read(key)`) in the order of `keys`, with up to `workers` reads running
    ahead in threads; the caller takes `future.result()` (and decides what a failed read means)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        queue: deque[tuple[Any, Future]] = deque()
        todo = iter(keys)
        for key in todo:
            queue.append((key, pool.submit(read, key)))
            if len(queue) > workers:
                break
        while queue:
            key, future = queue.popleft()
            for nxt in todo:  # one more read for the one taken
                queue.append((nxt, pool.submit(read, nxt)))
                break
            yield key, future


def run_engine(
    model: torch.nn.Module,
    items: Iterable[tuple[Any, np.ndarray]],
    make_job: Callable[[Any, np.ndarray, Any], tuple[Any, int]],
    work: Callable[[Any], Any],
    on_result: Callable[[Any, Any, BaseException | None], None],
    config: EngineConfig,
    pool: ProcessPoolExecutor | None = None,
    select: Select | None = None,
) -> EngineStats:
    """Network -> workers -> `on_result(key, result, error)`: in the order of `items`, or as
    each job finishes with `config.report_as_done`; every job is reported before this returns.

    `make_job(key, image, maps)` returns (job, bytes it holds), or (None, 0) when the item
    makes no job of its own (tile mode's sub-pixel phases: the image's last phase makes the
    job, and only it is reported); `work(job)` runs in a worker
    (or inline when `config.workers == 0`). An exception in `work` is passed to `on_result` as
    `error` (result None) and the run goes on; an exception from `items`, the network or
    `on_result` ends the run. `pool` lets a caller keep one pool over several runs (slides).
    `select(key, grid)` chooses the windows of an image that the network runs (slide mode:
    those near tissue; see `predict_stream`); `EngineStats.n_windows` counts those run.
    """
    geometry = model.geometry
    stats = EngineStats()
    own_pool = pool is None and config.workers > 0
    if own_pool:
        pool = make_pool(config.workers)
    in_flight: deque[tuple[Any, int, Future]] = deque()
    held: dict[Future, list] = {}  # shared memory a job's worker maps, kept until reported
    shared = SharedArrays() if pool is not None and config.shared_memory else None
    clock = None
    if config.profile:
        cuda = next(model.parameters(), torch.empty(0)).device.type == "cuda"
        clock = stats.stages = StageClock(torch.cuda.synchronize if cuda else None)
    timed = clock or (lambda stage: contextlib.nullcontext())
    lock = threading.RLock()
    reported = threading.Condition(lock)  # notified each time a job has been reported
    stopping: list[bool] = []

    def collect(block: bool) -> None:
        if config.report_as_done:
            if block:  # a future is done before its callback has reported it: wait for that
                with reported:
                    reported.wait_for(lambda: not in_flight)
            return
        while in_flight and (block or in_flight[0][2].done()):
            key, _, future = in_flight.popleft()
            exc = future.exception()
            with timed("report"):
                on_result(key, None if exc else future.result(), exc)
            held.pop(future, None)

    def report_done(entry: tuple[Any, int, Future]) -> None:
        if stopping:  # the workers were ended on an interrupt: nothing to report
            return
        key, _, future = entry
        with reported:
            try:
                exc = future.exception()
                on_result(key, None if exc else future.result(), exc)
            finally:
                if entry in in_flight:
                    in_flight.remove(entry)
                held.pop(future, None)
                reported.notify_all()

    def full(nbytes: int) -> bool:
        with lock:
            if not in_flight:
                return False
            if config.max_in_flight is not None and len(in_flight) >= config.max_in_flight:
                return True
            return sum(n for _, n, _ in in_flight) + nbytes > config.mem_budget

    def oldest() -> list[Future]:
        with lock:
            return [in_flight[0][2]] if in_flight else []

    interrupted = True
    try:
        alloc = shared.empty if shared is not None else None

        def counted(key: Any, grid: TileGrid) -> Any:
            chosen = select(key, grid) if select is not None else None
            stats.n_windows += len(grid) if chosen is None else int(np.count_nonzero(chosen))
            return chosen

        stream = predict_stream(
            model, items, config.batch_size, config.precision, geometry=geometry, alloc=alloc,
            clock=clock, select=counted, span=config.span_images,
        )  # fmt: skip
        t_net = time.perf_counter()
        for key, image, maps in stream:
            stats.network_s += time.perf_counter() - t_net
            with timed("job"):
                job, nbytes = make_job(key, image, maps)
            del image, maps
            if job is None:
                t_net = time.perf_counter()
                continue
            if pool is None:
                done: Future = Future()
                try:
                    done.set_result(work(job))
                except Exception as exc:
                    done.set_exception(exc)
                entry = (key, nbytes, done)
                with lock:
                    in_flight.append(entry)
                if config.report_as_done:
                    report_done(entry)
            else:
                t_wait = time.perf_counter()
                if config.report_as_done:
                    with reported:
                        reported.wait_for(lambda n=nbytes: not full(n))
                while full(nbytes):
                    wait(oldest())
                    collect(block=False)
                stats.wait_s += time.perf_counter() - t_wait
                if clock is not None:
                    clock.seconds["wait"] += time.perf_counter() - t_wait
                with timed("ship"):
                    future, holders = ship(pool, work, job, shared, stats)
                entry = (key, nbytes, future)
                with lock:
                    held[future] = holders
                    in_flight.append(entry)
                if config.report_as_done:
                    entry[2].add_done_callback(lambda _f, e=entry: report_done(e))
            del job
            collect(block=False)
            t_net = time.perf_counter()
        collect(block=True)
        interrupted = False
    finally:
        if interrupted and pool is not None:
            stopping.append(True)
            end_workers(pool)
        if own_pool:
            pool.shutdown(wait=True, cancel_futures=True)
        held.clear()
        if shared is not None:
            shared.close()
    return stats


def ship(
    pool: ProcessPoolExecutor,
    work: Callable[[Any], Any],
    job: Any,
    shared: SharedArrays | None,
    stats: EngineStats,
) -> tuple[Future, list]:
    """Submit `job` to the pool: pickled here with its arrays in shared memory, or (without
    `shared`) pickled whole by the pool. Returns its future and what must live until it is done."""
    if shared is None:
        if stats.stages is not None:  # profiling: what the pool will pickle
            stats.bytes_pickled += len(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
        return pool.submit(work, job), []
    payload, holders, nbytes = shared.dumps(job)
    stats.bytes_pickled += len(payload)
    stats.bytes_shared += nbytes
    return pool.submit(run_shipped, work, payload), holders
