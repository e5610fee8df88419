"""Cohorts (`hovernet.infer.claims`): processes take the next unclaimed slide when they are free.

The claim rules, two claimers sharing a list, a crashed owner's claim taken over (a real
process killed with SIGKILL), a live owner's kept, another host's claim going stale without its
heartbeat, ended claims of this run and of an earlier one, a counter in a real TCPStore, and
run_slides pulling slides from claims; then two gloo ranks over slides of very different sizes
(~20 s): the fixed split against the counter and against claim files, every slide done exactly
once, and the ranks' busy times measured side by side.

Run as a script, this file is the rank process of the multi-process test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hovernet.errors import HoverNetError
from hovernet.infer.claims import (
    Claimer,
    CounterClaims,
    FileClaims,
    FixedCohort,
    claim_is_free,
    largest_first,
    run_id_from_env,
)

HERE = Path(__file__).resolve()


def slides_named(n: int) -> list[Path]:
    return [Path(f"slides/s{i:02d}.svs") for i in range(n)]


def record(path: Path) -> dict:
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------------------------
# the rules


def test_claim_rules():
    alive = {(10, "100"): True}

    def is_alive(pid, start):
        return alive.get((pid, start), False)

    now, started = 1000.0, 900.0

    def free(rec, mtime=now, run_id="r1"):
        return claim_is_free(rec, mtime, now, Claimer("here", run_id, started, 60.0), is_alive)

    working = {"state": "working", "host": "here", "pid": 10, "pid_start": "100", "run_id": "r1"}
    assert not free(working)  # its owner runs
    assert free({**working, "pid_start": "999"})  # the pid now names a later process
    assert free({**working, "pid": 11})  # the owner is gone
    other = {**working, "host": "elsewhere"}
    assert not free(other, mtime=now - 30)  # touched 30 s ago
    assert free(other, mtime=now - 61)  # no heartbeat for longer than stale_s
    ended = {**working, "state": "ended", "ended": 950.0}
    assert not free(ended)  # ended in this run (same run id)
    assert free({**ended, "run_id": "r0"})  # ended in another run: retried / redone
    assert not free({**ended, "run_id": None}, run_id=None)  # no ids: ended after we started
    assert free({**ended, "run_id": None, "ended": 850.0}, run_id=None)  # ... before
    assert not free(None, mtime=now - 10) and free(None, mtime=now - 61)  # unreadable


def test_run_id_from_env():
    assert run_id_from_env({}) is None
    assert run_id_from_env({"TORCHELASTIC_RUN_ID": "none"}) is None
    assert run_id_from_env({"SLURM_ARRAY_JOB_ID": "77", "SLURM_JOB_ID": "78"}) == (
        "SLURM_ARRAY_JOB_ID=77"
    )
    assert run_id_from_env({"HOVERNET_RUN_ID": "a", "SLURM_JOB_ID": "78"}) == "HOVERNET_RUN_ID=a"


def test_largest_first_keeps_order_among_equals():
    sizes = {"a": 5, "b": 9, "c": 5, "d": 1}
    paths = [Path(n) for n in "abcd"]
    assert [p.name for p in largest_first(paths, lambda p: sizes[p.name])] == list("bacd")


def test_largest_first_counts_an_mrxs_folder(tmp_path):
    (tmp_path / "big.mrxs").write_bytes(b"x" * 10)
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "Data0000.dat").write_bytes(b"x" * 5000)
    (tmp_path / "small.svs").write_bytes(b"x" * 1000)
    order = largest_first([tmp_path / "small.svs", tmp_path / "big.mrxs"])
    assert [p.name for p in order] == ["big.mrxs", "small.svs"]


# ----------------------------------------------------------------------------------------------
# claim files


def test_two_claimers_share_a_list_exactly_once(tmp_path):
    slides = slides_named(40)
    got: dict[str, list[Path]] = {"a": [], "b": []}

    def work(name: str) -> None:
        claims = FileClaims(slides, tmp_path, run_id="run")
        rng = np.random.default_rng(len(name))
        for slide in claims:
            time.sleep(float(rng.uniform(0, 0.004)))
            got[name].append(slide)
            claims.ended(slide, "done")

    threads = [threading.Thread(target=work, args=(n,)) for n in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got["a"] + got["b"]) == slides
    assert not set(got["a"]) & set(got["b"])
    assert got["a"] and got["b"]  # both worked
    assert {record(p)["state"] for p in (tmp_path / ".claims").glob("*.claim")} == {"ended"}
    assert not list((tmp_path / ".claims").glob(".*.tmp"))  # no temporary files left


OWNER = """
import sys, time
from pathlib import Path
from hovernet.infer.claims import FileClaims
claims = FileClaims([Path("s/a.svs"), Path("s/b.svs")], Path(sys.argv[1]), run_id="run")
for slide in claims:
    print("claimed", slide.stem, flush=True)
    time.sleep(600)
"""


def test_crashed_owner_is_taken_over_and_a_live_one_is_not(tmp_path):
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert owner.stdout.readline().split() == ["claimed", "a"]
        claim = tmp_path / ".claims" / "a.claim"
        assert record(claim)["pid"] == owner.pid
        rerun = FileClaims([Path("s/a.svs"), Path("s/b.svs")], tmp_path, run_id="run")
        assert not rerun.try_claim(Path("s/a.svs"))  # its owner is alive on this host
        assert rerun.try_claim(Path("s/b.svs"))  # nobody has it
    finally:
        owner.send_signal(signal.SIGKILL)  # a crash: no chance to mark anything
        owner.wait()
    assert record(claim)["state"] == "working"
    assert rerun.try_claim(Path("s/a.svs"))  # the owner is gone: taken over
    taken = record(claim)
    assert (taken["pid"], taken["token"]) == (os.getpid(), rerun.token)
    assert taken["took_over"]["pid"] == owner.pid
    # a third process of the same run leaves both alone: their owner (this process) runs
    third = FileClaims([Path("s/a.svs"), Path("s/b.svs")], tmp_path, run_id="run")
    assert list(third) == []


def test_another_hosts_claim_is_kept_while_touched_then_taken(tmp_path):
    claims = FileClaims(slides_named(1), tmp_path, stale_s=60, run_id="run")
    path = claims.claim_path(slides_named(1)[0])
    path.parent.mkdir(parents=True)
    theirs = {"state": "working", "host": "node-7", "pid": os.getpid(), "run_id": "run"}
    path.write_text(json.dumps(theirs))
    assert not claims.try_claim(slides_named(1)[0])  # touched just now on another host
    old = time.time() - 120
    os.utime(path, (old, old))
    assert claims.try_claim(slides_named(1)[0])  # silent for 2 minutes: its owner is gone
    assert record(path)["host"] == claims.host


def test_heartbeat_touches_the_claim_while_the_slide_runs(tmp_path):
    slides = slides_named(2)
    claims = FileClaims(slides, tmp_path, stale_s=0.4, heartbeat_s=0.05, run_id="run")
    walk = iter(claims)
    first = next(walk)
    path = claims.claim_path(first)
    old = time.time() - 100
    os.utime(path, (old, old))
    time.sleep(0.3)
    assert path.stat().st_mtime > old + 99  # touched again
    other = FileClaims(slides, tmp_path, stale_s=0.4, run_id="run", host="elsewhere")
    assert not other.try_claim(first)  # looks alive from another host
    claims.ended(first, "done")
    os.utime(path, (old, old))
    time.sleep(0.2)
    assert path.stat().st_mtime == pytest.approx(old)  # no longer touched once ended
    assert record(path)["status"] == "done"
    walk.close()


def test_ended_claims_are_redone_only_by_another_run(tmp_path):
    slides = slides_named(3)
    first = FileClaims(slides, tmp_path, run_id="run-1")
    for slide in first:
        first.ended(slide, "failed" if slide.stem == "s01" else "done")
    assert list(FileClaims(slides, tmp_path, run_id="run-1")) == []  # same run: not again
    assert list(FileClaims(slides, tmp_path, run_id="run-2")) == slides  # next run: all
    with pytest.raises(HoverNetError, match="stale timeout must be positive"):
        FileClaims(slides, tmp_path, stale_s=0)


def test_counter_in_a_real_store_hands_each_slide_once():
    from datetime import timedelta

    import torch.distributed as dist

    server = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=30))
    slides = slides_named(30)
    got: list[list[Path]] = [[], [], []]

    def rank(r: int) -> None:
        client = dist.TCPStore("127.0.0.1", server.port, is_master=False)
        for slide in CounterClaims(slides, store=client, key="cohort"):
            got[r].append(slide)
            time.sleep(0.001)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(sum(got, [])) == slides
    assert sum(len(g) for g in got) == len(slides)
    # a second cohort in the same process group counts under its own key
    again = CounterClaims(slides[:2], store=server)
    assert again.key != "cohort" and list(again) == slides[:2]


def test_run_slides_pulls_slides_from_claims(tmp_path):
    from support.slide_helpers import ArraySlide, dark_tissue, disk_image

    from hovernet.infer.slide import run_slides
    from hovernet.infer.slide_setup import SlideConfig
    from hovernet.model.standin import BlobNet

    images = {
        "a": disk_image((200, 200), [(60, 100)]),
        "b": disk_image((200, 200), [(60, 100), (140, 100)]),
    }

    def opener(path, config):
        if path.stem == "bad":
            raise HoverNetError(f"{path}: cannot read the slide")
        return ArraySlide(path, images[path.stem], 0.25)

    slides = [Path("a.svs"), Path("bad.svs"), Path("b.svs")]
    config = SlideConfig(tmp_path, proc_mpp=0.25, quiet=True, post_proc_workers=0)
    lines: list[str] = []
    claims = FileClaims(slides, tmp_path, run_id="one")
    results = run_slides(BlobNet(), claims, config, lines.append, opener, dark_tissue)
    assert [(r.name, r.status, r.n_nuclei) for r in results] == [
        ("a", "done", 1),
        ("bad", "failed", 0),
        ("b", "done", 2),
    ]
    assert lines[1].startswith("[2/3] bad: FAILED")
    status = {p.stem: record(p)["status"] for p in (tmp_path / ".claims").glob("*.claim")}
    assert status == {"a": "done", "bad": "failed", "b": "done"}
    # the next run skips the finished slides and retries the failed one
    again = run_slides(
        BlobNet(), FileClaims(slides, tmp_path, run_id="two"), config, lines.append, opener,
        dark_tissue,
    )  # fmt: skip
    assert [r.status for r in again] == ["skipped", "failed", "skipped"]
    # a plain list still works, numbered as before
    plain = run_slides(
        BlobNet(), FixedCohort(slides[2:]), config, lines.append, opener, dark_tissue
    )
    assert [r.status for r in plain] == ["skipped"] and lines[-1].startswith("[1/1] b: skipped")


def test_cli_shard_tasks_claim_slides_and_a_later_task_skips_them(tmp_path, monkeypatch):
    import tifffile
    import torch
    from conftest import run_cli

    from hovernet.model.checkpoints import save_checkpoint
    from hovernet.model.registry import build_model

    for name in ("HOVERNET_RUN_ID", "SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    torch.manual_seed(0)
    checkpoint = tmp_path / "lite.pth"
    save_checkpoint(checkpoint, build_model("lite", 3).eval(), mpp=0.5)
    slides = tmp_path / "slides"
    slides.mkdir()
    rng = np.random.default_rng(0)
    for name, side in (("small", 260), ("large", 420)):
        image = rng.integers(0, 200, (side, side, 3), np.uint8)
        res = {"resolution": (1e4 / 0.5, 1e4 / 0.5), "resolutionunit": "CENTIMETER"}
        tifffile.imwrite(slides / f"{name}.tif", image, **res)
    out = tmp_path / "out"

    def task(i: int):
        return run_cli(
            [
                "infer", f"--model_path={checkpoint}", "--batch_size=4", "--precision=fp32",
                "--nr_post_proc_workers=0", "wsi", f"--input_dir={slides}", f"--output_dir={out}",
                f"--shard={i}/2", "--no_tissue_detection", "--quiet",
            ]
        )  # fmt: skip

    code, stdout, stderr = task(1)
    assert code == 0, stderr
    assert "taken one at a time as ranks free up" in stdout
    # task 1 of 2 found both slides free and took them, the largest first
    assert stdout.index("large: ") < stdout.index("small: ")
    assert "2 slides done" in stdout
    states = {p.stem: record(p) for p in (out / ".claims").glob("*.claim")}
    assert {k: (v["state"], v["status"]) for k, v in states.items()} == {
        "large": ("ended", "done"),
        "small": ("ended", "done"),
    }
    # a task that starts after they ended (a rerun) finds them finished
    code, stdout, stderr = task(0)
    assert code == 0, stderr
    assert "0 slides done" in stdout and "2 skipped as finished" in stdout


# ----------------------------------------------------------------------------------------------
# ranks in separate processes


BIG, SMALL = (1000, 1000), (200, 200)


def make_cohort_slides(slide_dir: Path) -> dict[str, tuple[int, int]]:
    """Two big slides and four small ones, named so that the fixed split (every 2nd slide)
    gives both big ones to rank 0."""
    from conftest import DATA

    from hovernet.io.slides import read_rgb

    tiles = sorted((DATA / "monuseg" / "images").glob("*.png"))
    shapes = {"s0": BIG, "s1": SMALL, "s2": BIG, "s3": SMALL, "s4": SMALL, "s5": SMALL}
    slide_dir.mkdir()
    for i, (name, shape) in enumerate(shapes.items()):
        image = read_rgb(tiles[i])[: shape[0], : shape[1]]
        np.save(slide_dir / f"{name}.npy", np.ascontiguousarray(image))
    return shapes


def rank_main(slide_dir: str, out: str) -> None:
    """One rank: the fixed split, then the counter, then claim files, each timed."""
    import torch
    import torch.distributed as dist
    from support.fixed_split import my_slides
    from support.slide_helpers import ArraySlide, dark_tissue

    from hovernet.infer.ranks import (
        gather,
        init_distributed,
        leave_distributed,
        share_slides,
    )
    from hovernet.infer.slide import run_slides
    from hovernet.infer.slide_setup import SlideConfig
    from hovernet.model.standin import BlobNet

    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    assert init_distributed()
    slides = sorted(Path(slide_dir).glob("*.npy"))

    def opener(path, cfg):
        return ArraySlide(path, np.load(path), 0.25)

    report = {}
    for mode in ("fixed", "counter", "files"):
        folder = Path(out) / mode
        config = SlideConfig(
            folder, proc_mpp=0.25, quiet=True, post_proc_workers=0, batch_size=4, precision="fp32"
        )
        if mode == "fixed":
            mine = my_slides(slides, rank, world)
        elif mode == "counter":
            mine = share_slides(slides, folder, (0, 1), distributed=True)
        else:  # as two job-array tasks: no process group needed
            mine = share_slides(slides, folder, (rank, world), distributed=False)
        dist.barrier()
        start = time.perf_counter()
        results = run_slides(BlobNet(), mine, config, lambda line: None, opener, dark_tissue)
        busy = time.perf_counter() - start
        done = [(r.name, r.status, r.n_nuclei) for r in results]
        report[mode] = gather([{"rank": rank, "busy": busy, "slides": done}])
    leave_distributed()
    if rank == 0:
        print("REPORT " + json.dumps(report), flush=True)


# two processes importing torch, three passes over the slides: ~20 s on 2 cores
def test_ranks_take_slides_as_they_free_up(tmp_path):
    import socket

    shapes = make_cohort_slides(tmp_path / "slides")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "HOVERNET_RUN_ID": "cohort-test",
    }
    args = [sys.executable, str(HERE), str(tmp_path / "slides"), str(tmp_path / "out")]
    procs = [
        subprocess.Popen(
            args,
            env={**env, "RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for r in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    report = json.loads(outs[0].split("REPORT ", 1)[1])
    busy = {}
    for mode, ranks in report.items():
        done = [s for r in ranks for s in r["slides"]]
        names = sorted(name for name, _, _ in done)
        assert names == sorted(shapes), (mode, done)  # every slide exactly once
        assert all(status == "done" and n > 0 for _, status, n in done), (mode, done)
        busy[mode] = sorted(r["busy"] for r in ranks)
        print(mode, "busy s per rank:", [round(b, 2) for b in busy[mode]])
    big = {name for name, shape in shapes.items() if shape == BIG}
    fixed_gap = busy["fixed"][1] - busy["fixed"][0]
    for mode in ("counter", "files"):
        # the fixed split gives rank 0 both big slides (its gap: about one big slide less the
        # small ones); taken as ranks free up, biggest first, each rank gets one of them
        per_rank = [{name for name, _, _ in r["slides"]} & big for r in report[mode]]
        assert sorted(len(b) for b in per_rank) == [1, 1], (mode, report[mode])
        assert busy[mode][1] - busy[mode][0] < 0.75 * fixed_gap, busy
    per_rank = [{name for name, _, _ in r["slides"]} & big for r in report["fixed"]]
    assert per_rank == [big, set()]


if __name__ == "__main__":
    rank_main(*sys.argv[1:3])
