"""`hovernet train` exits promptly after its last line, also when it stops in the middle of an
epoch with DataLoader workers still holding prefetched batches (time limit)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from conftest import REPO
from support.patchdata import make_patch_folder


def test_train_exits_promptly_after_a_time_limit_stop(tmp_path):
    data = make_patch_folder(tmp_path / "data", train=[0, 1, 2, 3], valid=[], size=256)
    cmd = [
        sys.executable, "-m", "hovernet", "train", "--data", str(data), "--out",
        str(tmp_path / "run"), "--arch", "lite", "--batch", "1", "--steps-per-epoch", "50",
        "--epochs", "1", "--workers", "2", "--time-limit", "0.0001", "--quiet",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    last_line_at = None
    for line in proc.stdout:
        if "stopped at the time limit" in line:
            last_line_at = time.monotonic()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("hovernet train did not exit within 60 s of its last line") from None
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    assert last_line_at is not None
    assert time.monotonic() - last_line_at < 10, "slow to exit after the final message"
    assert (tmp_path / "run" / "last.pth").is_file()
