"""`sleep_idle_threads`: the OpenMP wait policy the command line sets before torch starts."""

from __future__ import annotations

import os
import subprocess
import sys

import torch  # noqa: F401  (imported: the in-process case below)

from hovernet.resources import sleep_idle_threads

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
