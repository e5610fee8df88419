import os
import stat
from pathlib import Path

import pytest

from hovernet.io.atomic import atomic_path, write_text_atomic


def test_rename_on_success_with_readable_permissions(tmp_path: Path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "sub" / "out.json", "{}")
    finally:
        os.umask(old)
    out = tmp_path / "sub" / "out.json"
    assert out.read_text() == "{}"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in out.parent.iterdir()] == ["out.json"]


def test_failure_leaves_nothing_and_keeps_old_file(tmp_path: Path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.suffix == ".csv" and tmp.parent == tmp_path
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
