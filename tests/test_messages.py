"""Small honesty points of the command line: --version, checkpoint errors that say what the
file is, each path named once."""

from __future__ import annotations

import pytest
from conftest import run_cli

import hovernet
from hovernet.errors import HoverNetError


def test_version():
    code, out, _ = run_cli(["--version"])
    assert code == 0 and out.strip() == f"hovernet {hovernet.__version__}"


@pytest.mark.parametrize(
    "content", [bytes(range(256)) * 8, b"hello, this is text", b"\x80\x02}q\x00."[:-1]]
)
def test_random_bytes_are_not_called_code(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(HoverNetError) as info:
        hovernet.load_model(path)
    message = str(info.value)
    assert "is not a PyTorch checkpoint" in message and "Python code" not in message
    assert message.count(str(path)) == 1


def test_a_pickled_object_is_called_code(tmp_path):
    import torch

    path = tmp_path / "obj.pth"
    torch.save({"desc": {}, "thing": _Thing()}, path)
    with pytest.raises(HoverNetError, match="contains Python code or objects"):
        hovernet.load_model(path)


class _Thing:
    pass
