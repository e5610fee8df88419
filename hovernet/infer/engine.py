"""The one inference engine behind tile mode and slide mode.

`run_engine` drives a stream of images through `hovernet.infer.predict.predict_stream`
(batches span image boundaries) in this process, hands each image's maps to a pool of
post-processing worker processes, and reports the results back in input order. The network
never waits for post-processing while the pool has room: maps waiting for a worker are kept
under a memory budget, and only when that budget is full does the main process wait for the
oldest job.

Front ends differ only in what they feed in (whole tiles, or overlapping regions of a slide)
and in their `FrontEnd`: what a job is (`make_job`), what a worker does with it (`work`, a
top-level function so that it pickles into spawned workers), what becomes of its result
(`on_result`) and which windows the network runs (`select`).

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


@dataclass(frozen=True)
class FrontEnd:
    """What a front end hands the engine besides its images: the three callbacks and the
    window choice.

    `make_job(key, image, maps)` returns (job, bytes it holds), or (None, 0) when the item
    makes no job of its own (an image's sub-pixel phases, `phased.PhasedStream.make_job`: the
    image's last phase makes the job, and only it is reported); `work(job)` runs in a worker
    (a top-level function, so that it pickles into spawned workers; inline when
    `EngineConfig.workers == 0`);
    `on_result(key, result, error)` reports a job. `select(key, grid)` chooses the windows of an
    image that the network runs (slide mode: those near tissue; see `predict_stream`); None:
    all of them."""

    make_job: Callable[[Any, np.ndarray, Any], tuple[Any, int]]
    work: Callable[[Any], Any]
    on_result: Callable[[Any, Any, BaseException | None], None]
    select: Select | None = None

    def __post_init__(self) -> None:
        for name in ("make_job", "work", "on_result"):
            if not callable(getattr(self, name)):
                raise TypeError(f"FrontEnd.{name} must be callable")
        if self.select is not None and not callable(self.select):
            raise TypeError("FrontEnd.select must be callable or None")


def run_engine(
    model: torch.nn.Module,
    items: Iterable[tuple[Any, np.ndarray]],
    front: FrontEnd,
    config: EngineConfig,
    pool: ProcessPoolExecutor | None = None,
) -> EngineStats:
    """Network -> workers -> `front.on_result(key, result, error)`: in the order of `items`, or
    as each job finishes with `config.report_as_done`; every job is reported before this
    returns.

    An exception in `front.work` is passed to `on_result` as `error` (result None) and the run
    goes on; an exception from `items`, the network or `on_result` ends the run. `pool` lets a
    caller keep one pool over several runs (slides). `EngineStats.n_windows` counts the windows
    the network ran (`front.select`'s choice).
    """
    own_pool = pool is None and config.workers > 0
    if own_pool:
        pool = make_pool(config.workers)
    run = _EngineRun(model, front, config, pool)
    interrupted = True
    try:
        run.feed(items)
        run.collect(block=True)
        interrupted = False
    finally:
        if interrupted and pool is not None:
            run.stopping = True
            end_workers(pool)
        if own_pool:
            pool.shutdown(wait=True, cancel_futures=True)
        run.held.clear()
        if run.shared is not None:
            run.shared.close()
    return run.stats


class _EngineRun:
    """One `run_engine` call's state: the jobs in flight (handed to a worker, not yet reported,
    in input order), the shared memory they hold, the clocks."""

    def __init__(
        self,
        model: torch.nn.Module,
        front: FrontEnd,
        config: EngineConfig,
        pool: ProcessPoolExecutor | None,
    ):
        self.model, self.front, self.config, self.pool = model, front, config, pool
        self.stats = EngineStats()
        self.in_flight: deque[tuple[Any, int, Future]] = deque()
        self.held: dict[Future, list] = {}  # shared memory a job's worker maps, until reported
        self.shared = SharedArrays() if pool is not None and config.shared_memory else None
        self.clock = None
        if config.profile:
            cuda = next(model.parameters(), torch.empty(0)).device.type == "cuda"
            self.clock = self.stats.stages = StageClock(torch.cuda.synchronize if cuda else None)
        self.lock = threading.RLock()
        self.reported = threading.Condition(self.lock)  # notified each time a job is reported
        self.stopping = False  # the workers were ended on an interrupt: nothing to report

    def timed(self, stage: str) -> contextlib.AbstractContextManager:
        return self.clock(stage) if self.clock is not None else contextlib.nullcontext()

    def feed(self, items: Iterable[tuple[Any, np.ndarray]]) -> None:
        """Run the network over `items` and hand each job to the workers (or run it here)."""
        config = self.config
        alloc = self.shared.empty if self.shared is not None else None
        stream = predict_stream(
            self.model, items, config.batch_size, config.precision,
            geometry=self.model.geometry, alloc=alloc, clock=self.clock, select=self.counted,
            span=config.span_images,
        )  # fmt: skip
        t_net = time.perf_counter()
        for key, image, maps in stream:
            self.stats.network_s += time.perf_counter() - t_net
            with self.timed("job"):
                job, nbytes = self.front.make_job(key, image, maps)
            del image, maps
            if job is not None:
                if self.pool is None:
                    self.run_here(key, job, nbytes)
                else:
                    self.submit(key, job, nbytes)
                del job
                self.collect(block=False)
            t_net = time.perf_counter()

    def counted(self, key: Any, grid: TileGrid) -> Any:
        select = self.front.select
        chosen = select(key, grid) if select is not None else None
        self.stats.n_windows += len(grid) if chosen is None else int(np.count_nonzero(chosen))
        return chosen

    def run_here(self, key: Any, job: Any, nbytes: int) -> None:
        """`work(job)` in this process (no pool), its outcome kept as a finished future."""
        done: Future = Future()
        try:
            done.set_result(self.front.work(job))
        except Exception as exc:
            done.set_exception(exc)
        entry = (key, nbytes, done)
        with self.lock:
            self.in_flight.append(entry)
        if self.config.report_as_done:
            self.report_done(entry)

    def submit(self, key: Any, job: Any, nbytes: int) -> None:
        """Wait for room under the memory budget, then ship `job` to the pool."""
        t_wait = time.perf_counter()
        if self.config.report_as_done:
            with self.reported:
                self.reported.wait_for(lambda: not self.full(nbytes))
        while self.full(nbytes):
            wait(self.oldest())
            self.collect(block=False)
        self.stats.wait_s += time.perf_counter() - t_wait
        if self.clock is not None:
            self.clock.seconds["wait"] += time.perf_counter() - t_wait
        with self.timed("ship"):
            future, holders = ship(self.pool, self.front.work, job, self.shared, self.stats)
        entry = (key, nbytes, future)
        with self.lock:
            self.held[future] = holders
            self.in_flight.append(entry)
        if self.config.report_as_done:
            future.add_done_callback(lambda _f: self.report_done(entry))

    def collect(self, block: bool) -> None:
        """Report the finished jobs at the head of the queue (`block`: all of them, waiting)."""
        in_flight = self.in_flight
        if self.config.report_as_done:
            if block:  # a future is done before its callback has reported it: wait for that
                with self.reported:
                    self.reported.wait_for(lambda: not in_flight)
            return
        while in_flight and (block or in_flight[0][2].done()):
            key, _, future = in_flight.popleft()
            exc = future.exception()
            with self.timed("report"):
                self.front.on_result(key, None if exc else future.result(), exc)
            self.held.pop(future, None)

    def report_done(self, entry: tuple[Any, int, Future]) -> None:
        """Report one job as it finishes (`report_as_done`), under the lock."""
        if self.stopping:
            return
        key, _, future = entry
        with self.reported:
            try:
                exc = future.exception()
                self.front.on_result(key, None if exc else future.result(), exc)
            finally:
                if entry in self.in_flight:
                    self.in_flight.remove(entry)
                self.held.pop(future, None)
                self.reported.notify_all()

    def full(self, nbytes: int) -> bool:
        """Whether a job of `nbytes` must wait: the jobs in flight fill the memory budget or
        the allowed count (one job always goes)."""
        with self.lock:
            if not self.in_flight:
                return False
            limit = self.config.max_in_flight
            if limit is not None and len(self.in_flight) >= limit:
                return True
            return sum(n for _, n, _ in self.in_flight) + nbytes > self.config.mem_budget

    def oldest(self) -> list[Future]:
        with self.lock:
            return [self.in_flight[0][2]] if self.in_flight else []


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
