"""`sleep_idle_threads`: the OpenMP wait policy the command line sets before torch starts."""

from __future__ import annotations

import os
import subprocess
import sys

import torch  # noqa: F401  (imported: the in-process case below)

from hovernet.resources import keep_freed_memory, sleep_idle_threads

PROBE = (
    "import os, sys; from hovernet.resources import sleep_idle_threads; "
    "print(sleep_idle_threads(), os.environ.get('OMP_WAIT_POLICY'))"
)


def _probe(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(env_extra)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_sets_passive_before_torch_in_a_fresh_process():
    assert _probe({}) == "True PASSIVE"


def test_keeps_the_users_policy():
    assert _probe({"OMP_WAIT_POLICY": "ACTIVE"}) == "False ACTIVE"


def test_does_nothing_once_torch_is_imported():
    env: dict[str, str] = {}
    assert sleep_idle_threads(env) is False
    assert env == {}


def test_the_command_line_entry_sets_it_first():
    """`hovernet ...` (cli.main) sets the policy before its command imports torch."""
    code = (
        "import os, sys; from hovernet import cli; "
        "sys.argv = ['hovernet', '--help']; "
        "import atexit; "
        "atexit.register(lambda: print('POLICY', os.environ.get('OMP_WAIT_POLICY'))); "
        "cli.main()"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "POLICY PASSIVE" in done.stdout


FAULTS = """
import ctypes, resource, sys
from hovernet.resources import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
size = 48 << 20  # above glibc's largest default mmap threshold (32 MB), as a batch's activations
def use():
    p = libc.malloc(size)
    libc.memset(p, 1, size)  # touch every page, as a tensor being written
    libc.free(p)
use()  # the first time the pages are faulted in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    use()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, env_extra: dict[str, str] | None = None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra or {})
    done = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True, env=env
    )
    applied, faults = done.stdout.split()
    return applied, int(faults)


def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    """`keep_freed_memory`: a large buffer allocated again and again comes back from the heap
    (next to no page faults) instead of being mapped and zeroed afresh each time."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        assert keep_freed_memory() is False
        return
    applied, kept = _faults("keep")
    _, default = _faults("default")
    assert applied == "True"
    assert default > 10_000  # each round faults its pages in again (31 k here)
    assert kept < default // 20
    # the user's own glibc settings are left alone
    assert _faults("keep", {"MALLOC_TRIM_THRESHOLD_": "1000000000"})[0] == "False"


EXIT = """
import sys
from hovernet.resources import skip_exit_collection
class Cycle:
    def __del__(self):
        print("collected at exit", flush=True)
a = Cycle()
a.me = a  # only the garbage collector can free it
if sys.argv[1] == "skip":
    skip_exit_collection()
    skip_exit_collection()  # once is enough; twice is harmless
"""


def test_the_exit_collection_is_left_out_and_the_rest_of_the_exit_still_runs():
    """`skip_exit_collection` (the command line, the demo and the workers call it): the
    interpreter's last collection, which walks every object the libraries made at import, is
    left out; atexit hooks still run and stdout is still flushed."""

    def run(mode: str) -> str:
        code = EXIT + "import atexit; atexit.register(print, 'hook ran'); print('end', end='')"
        done = subprocess.run(
            [sys.executable, "-c", code, mode], capture_output=True, text=True, check=True
        )
        return done.stdout

    assert "collected at exit" in run("default")  # what the interpreter does on its own
    out = run("skip")
    assert "collected at exit" not in out
    assert out.startswith("end") and "hook ran" in out
