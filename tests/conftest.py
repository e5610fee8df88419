"""Shared test fixtures. Real data lives in ../shared beside the checkout (read-only)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# ONNX exports cached by the tests go to a folder of this run, not the user's ~/.cache
_CACHE = tempfile.mkdtemp(prefix="hovernet-test-cache.")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault("HOVERNET_CACHE", _CACHE)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HOVERNET_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
DATA = SHARED / "data"


def pytest_configure(config: pytest.Config) -> None:
    if not REFERENCE.is_dir():
        raise pytest.UsageError(
            f"test data not found at {SHARED}: the tests need the read-only shared/ folder beside "
            "the checkout (or set HOVERNET_SHARED)"
        )


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


def recipe_arrays(case: str) -> dict:
    """The reference recipe weights (../shared/reference/weights.py) for keys_<case>.json, as
    {key: numpy array}: identical to those the golden outputs were made with."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("ref_weights", REFERENCE / "weights.py")
    weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(weights)
    keys = json.loads((REFERENCE / f"keys_{case}.json").read_text())
    return weights.reference_state_dict(keys)


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """`hovernet ARGS` in this process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    from hovernet.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()
