"""Handing a cohort's slides to processes as they become free, so that no process idles while
another still has a queue of slides fixed in advance.

A *cohort* is the list of slides and a way of handing them out: iterate over it to get, one at a
time, the next slide this process should do, and call `ended(path, status)` when it is done.

- `FixedCohort`: a plain list, every slide to this process in order (one process; the tests);
- `CounterClaims`: the ranks of one torchrun job share a counter in torch.distributed's
  key-value store (`store.add(key, 1)` is atomic): each call hands out the next slide index;
- `FileClaims`: processes with no common process group (the tasks of a `--shard i/n` job
  array, or several torchrun jobs) claim a slide by creating `<out>/.claims/<slide>.claim`
  atomically (written under a temporary name, then `os.link`ed: the link fails if the claim
  exists, and a claim is never seen half written). The claim holds its owner (host, pid, the
  process's start time, a token) and is touched every `heartbeat_s` while the slide runs. A
  claim can be taken over (`claim_is_free`) when its owner is gone: on the same host its pid
  is not alive (or belongs to a later process), on another host the claim has not been
  touched for `stale_s`; an *ended* claim only when it is from an earlier run (another run id,
  or, without run ids, ended before this process started). So a rerun picks up the slides of a
  crashed process, finished slides are skipped as before (their summary exists, and
  `run_slide` skips them), and a failed slide is retried by the next run, not by every process
  of this one.

Everything here is stdlib; torch.distributed is imported only for the default store.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hovernet.errors import HoverNetError
from hovernet.io.names import output_stem

RUN_ID_VARIABLES = ("HOVERNET_RUN_ID", "SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID")
_COUNTERS = itertools.count()  # one key per CounterClaims made in this process


class Cohort:
    """Slides handed out one at a time (this base class: all of them, in order)."""

    def __init__(self, slides: Iterable[Path]):
        self.slides = [Path(p) for p in slides]
        self._number: dict[Path, int] = {}
        for i, path in enumerate(self.slides, start=1):
            self._number.setdefault(path, i)

    def __len__(self) -> int:
        return len(self.slides)

    def __iter__(self) -> Iterator[Path]:
        return iter(self.slides)

    def number(self, path: Path) -> int:
        """The slide's place in the cohort (1-based), for "[k/total]" lines."""
        return self._number[Path(path)]

    def ended(self, path: Path, status: str) -> None:
        """This process is done with `path` ("done", "skipped" or "failed")."""


class FixedCohort(Cohort):
    """Every slide of the list to this process."""


def as_cohort(slides: Cohort | Iterable[Path]) -> Cohort:
    return slides if isinstance(slides, Cohort) else FixedCohort(slides)


def slide_bytes(path: Path) -> int:
    """The slide's size on disk: its file, plus a folder of the same stem beside it (MRXS
    keeps its tiles there); 0 when it cannot be read."""
    total = 0
    with contextlib.suppress(OSError):
        total += path.stat().st_size
    folder = path.with_suffix("")
    if folder != path and folder.is_dir():
        for sub in folder.rglob("*"):
            with contextlib.suppress(OSError):
                total += sub.stat().st_size if sub.is_file() else 0
    return total


def largest_first(slides: Iterable[Path], size: Callable[[Path], int] = slide_bytes) -> list[Path]:
    """Slides in decreasing size (ties in the given order): handed out in this order, the big
    slides start first and the small ones fill the gaps at the end."""
    slides = list(slides)
    return sorted(slides, key=lambda p: -size(p))  # sorted() is stable


# ----------------------------------------------------------------------------------------------
# a shared counter (torchrun)


def default_store():
    """The key-value store of the initialised torch.distributed process group."""
    import torch.distributed as dist

    if not dist.is_initialized():
        raise HoverNetError("no torch.distributed process group: start the job with torchrun")
    return dist.distributed_c10d._get_default_store()


class CounterClaims(Cohort):
    """The next slide from a counter that every rank shares (`store.add` is atomic), so each
    slide goes to exactly one rank, whichever asks first. All ranks must make their
    CounterClaims in the same order over the same list."""

    def __init__(self, slides: Iterable[Path], store=None, key: str | None = None):
        super().__init__(slides)
        self.store = store if store is not None else default_store()
        self.key = key or f"hovernet/cohort/{next(_COUNTERS)}"

    def __iter__(self) -> Iterator[Path]:
        while True:
            index = int(self.store.add(self.key, 1)) - 1
            if index >= len(self.slides):
                return
            yield self.slides[index]


# ----------------------------------------------------------------------------------------------
# claim files (job arrays, several jobs on one folder)


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), None if there is no
    such process or no /proc: with the pid, it names one process even after pids are reused."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[19]  # field 22; the name in (...) may hold spaces


def pid_alive(pid: int, start: str | None) -> bool:
    """Whether process `pid` (started at `start`, as `process_start` gives it) still runs."""
    now = process_start(pid)
    if now is not None:
        return start is None or now == start
    if Path("/proc/self/stat").exists():
        return False  # /proc works here and has no such process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_id_from_env(env: dict[str, str] | None = None) -> str | None:
    """What names this run for every process of it: HOVERNET_RUN_ID, else SLURM's (array) job
    id, else torchrun's rendezvous id; None when none is set."""
    env = os.environ if env is None else env
    for name in RUN_ID_VARIABLES:
        value = env.get(name)
        if value and value != "none":
            return f"{name}={value}"
    return None


@dataclass(frozen=True)
class Claimer:
    """The process judging a claim: its host, run id (None: unknown), start time (epoch s),
    and how long another host's claim may go untouched before it counts as abandoned."""

    host: str
    run_id: str | None
    started: float
    stale_s: float

    def __post_init__(self) -> None:
        if not self.stale_s > 0:
            raise HoverNetError(f"claim stale timeout must be positive, got {self.stale_s}")


def claim_is_free(
    record: dict | None,
    mtime: float,
    now: float,
    claimer: Claimer,
    alive: Callable[[int, str | None], bool] = pid_alive,
) -> bool:
    """Whether an existing claim may be taken over by `claimer` (see the module docstring).

    `record` is the claim's content (None: unreadable), `mtime` when it was last touched."""
    if record is None:
        return now - mtime > claimer.stale_s
    if record.get("state") == "ended":
        theirs = record.get("run_id")
        if claimer.run_id is not None and theirs is not None:
            return theirs != claimer.run_id
        return float(record.get("ended", now)) < claimer.started
    if record.get("host") == claimer.host:
        return not alive(int(record.get("pid", -1)), record.get("pid_start"))
    return now - mtime > claimer.stale_s


def _read(path: Path) -> tuple[dict | None, float] | None:
    """(content or None if unreadable, mtime); None when there is no claim."""
    try:
        mtime = path.stat().st_mtime
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return None, time.time()
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    return (record if isinstance(record, dict) else None), mtime


def _write_new(path: Path, record: dict) -> bool:
    """Create `path` holding `record` if it does not exist (atomic, never half written)."""
    tmp = path.with_name(f".{path.name}.{record['token']}.tmp")
    tmp.write_text(json.dumps(record), encoding="utf-8")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class FileClaims(Cohort):
    """The next slide nobody has claimed, by claim files in `output_dir/.claims/`."""

    def __init__(
        self,
        slides: Iterable[Path],
        output_dir: Path,
        stale_s: float = 900.0,
        heartbeat_s: float | None = None,
        run_id: str | None = None,
        host: str | None = None,
    ):
        super().__init__(slides)
        if stale_s <= 0:
            raise HoverNetError(f"claim stale timeout must be positive, got {stale_s}")
        self.dir = Path(output_dir) / ".claims"
        self.stale_s = stale_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else stale_s / 5
        self.run_id = run_id if run_id is not None else run_id_from_env()
        self.host = host or socket.gethostname()
        self.pid = os.getpid()
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self._working: Path | None = None  # the claim being touched by the heartbeat
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def claim_path(self, slide: Path) -> Path:
        return self.dir / f"{output_stem(slide)}.claim"

    def _record(self, state: str, **extra) -> dict:
        return {
            "state": state,
            "host": self.host,
            "pid": self.pid,
            "pid_start": process_start(self.pid),
            "token": self.token,
            "run_id": self.run_id,
            "time": time.time(),
            **extra,
        }

    def try_claim(self, slide: Path) -> bool:
        """Claim `slide` for this process: a new claim, or one whose owner is gone."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.claim_path(slide)
        if _write_new(path, self._record("working")):
            return True
        seen = _read(path)
        if seen is None:  # removed meanwhile: try once more
            return _write_new(path, self._record("working"))
        record, mtime = seen
        claimer = Claimer(self.host, self.run_id, self.started, self.stale_s)
        free = claim_is_free(record, mtime, time.time(), claimer)
        if not free:
            return False
        with _locked(self.dir / ".takeover.lock"):  # one takeover at a time
            if _read(path) != seen:
                return False  # changed since it was judged: someone else took it
            path.unlink(missing_ok=True)
            return _write_new(path, self._record("working", took_over=record))

    def __iter__(self) -> Iterator[Path]:
        self._start_heartbeat()
        try:
            for slide in self.slides:
                if self.try_claim(slide):
                    with self._lock:
                        self._working = self.claim_path(slide)
                    yield slide
        finally:
            self._stop.set()

    def ended(self, path: Path, status: str) -> None:
        claim = self.claim_path(path)
        with self._lock:
            if self._working == claim:
                self._working = None
        seen = _read(claim)
        if seen is None or (seen[0] or {}).get("token") != self.token:
            return  # not ours (any more): leave it
        record = self._record("ended", status=status, ended=time.time())
        tmp = claim.with_name(f".{claim.name}.{self.token}.tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, claim)

    def _start_heartbeat(self) -> None:
        if self._beat is not None:
            return

        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                with self._lock:
                    working = self._working
                if working is not None:
                    with contextlib.suppress(OSError):
                        os.utime(working)

        self._beat = threading.Thread(target=beat, name="claim-heartbeat", daemon=True)
        self._beat.start()
