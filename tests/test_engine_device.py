"""The engine's maps stay where the network runs and reach the workers through shared memory:
the maps are exactly those of stitching window by window on the host (as before), jobs arrive
in the workers unchanged while only a few bytes go through the pipe, the files are removed
afterwards, and the stage profile, the fixed-shape batches and the batch size from free memory
do what they say. On a CUDA machine (`-m gpu`) the device path is checked against the CPU."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import DATA
from support.network_batch import run_batch
from support.stitcher import Stitcher

from hovernet.config import ModelGeometry
from hovernet.device import autocast_dtype
from hovernet.errors import HoverNetError
from hovernet.infer.engine import EngineConfig, FrontEnd, run_engine
from hovernet.infer.gpu import batch_size_for
from hovernet.infer.maps import maps_to_nuclei, to_pred_maps
from hovernet.infer.predict import (
    StageClock,
    predict_maps,
    predict_stream,
)
from hovernet.infer.sharedmem import SHM_DIR, SharedArrays, run_shipped, sweep_stale
from hovernet.infer.tiling import TileGrid
from hovernet.infer.workers import make_pool
from hovernet.model.standin import BlobNet

MONUSEG = DATA / "monuseg" / "images"


def he_image(shape: tuple[int, int], index: int = 0) -> np.ndarray:
    from hovernet.io.slides import read_rgb

    image = read_rgb(sorted(MONUSEG.glob("*.png"))[index])
    return np.ascontiguousarray(image[: shape[0], : shape[1]])


def host_stitched(model, images: list[np.ndarray], batch_size: int, precision: str = "fp32"):
    """The maps as the engine made them before: windows of consecutive images stacked into
    batches on the host, one network call and one copy back per batch, each window placed by
    `tiling.Stitcher`, the type ids by numpy (`maps.to_pred_maps`)."""
    g = model.geometry
    typed = model.nr_types is not None
    windows, stitchers = [], []
    for image in images:
        grid = TileGrid(image.shape[:2], g.input_size, g.output_size)
        padded = grid.pad(image)
        stitchers.append(Stitcher(grid, 3 + (model.nr_types if typed else 0)))
        windows += [(stitchers[-1], i, grid.crop(padded, i)) for i in range(len(grid))]
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            part = windows[start : start + batch_size]
            dtype = autocast_dtype(torch.device("cpu"), precision)
            out = run_batch(model, np.stack([w for _, _, w in part]), dtype)
            for (stitcher, i, _), window in zip(part, out, strict=True):
                stitcher.add(i, window)
    return [to_pred_maps(s.result(), typed) for s in stitchers]


@pytest.mark.parametrize(
    "shape, nr_types, batch_size, precision",
    [
        ((600, 500), 3, 4, "fp32"),
        ((164, 328), 3, 3, "fp32"),
        ((170, 150), None, 2, "fp32"),
        ((700, 420), 5, 7, "fp32"),
        ((400, 380), 3, 4, "bf16"),
    ],
)
def test_maps_equal_host_stitching_exactly(shape, nr_types, batch_size, precision):
    model = BlobNet(nr_types=nr_types)
    image = he_image(shape)
    (expected,) = host_stitched(model, [image], batch_size, precision)
    got = predict_maps(model, image, batch_size=batch_size, precision=precision)
    assert got.pred_map.flags.c_contiguous and got.pred_map.dtype == np.float32
    np.testing.assert_array_equal(got.pred_map, expected.pred_map)
    if nr_types is None:
        assert got.type_softmax is None and got.pred_map.shape == (*shape, 3)
    else:
        np.testing.assert_array_equal(got.type_softmax, expected.type_softmax)
        assert len(np.unique(got.pred_map[..., 0])) > 1  # the type map is not trivial
    # the same nuclei come out of them
    a, nuclei_a = maps_to_nuclei(got, nr_types, None, shape)
    b, nuclei_b = maps_to_nuclei(expected, nr_types, None, shape)
    np.testing.assert_array_equal(a, b)
    assert len(nuclei_a) == len(nuclei_b) > 0


def test_stream_in_shared_memory_spans_images_and_keeps_order():
    model = BlobNet()
    images = [he_image((300, 200), 0), he_image((100, 90), 1), he_image((400, 380), 2)]
    shared = SharedArrays(min_bytes=1 << 18)
    clock = StageClock()
    out = list(predict_stream(model, enumerate(images), 5, "fp32", alloc=shared.empty, clock=clock))
    assert [k for k, _, _ in out] == [0, 1, 2]
    before = host_stitched(model, images, 5)
    for (_, image, maps), original, expected in zip(out, images, before, strict=True):
        assert image is original
        np.testing.assert_array_equal(maps.pred_map, expected.pred_map)
        np.testing.assert_array_equal(maps.type_softmax, expected.type_softmax)
    # the larger maps live in shared memory files; the 100 x 90 image's are plain arrays
    assert shared.block_of(out[0][2].pred_map) is not None
    assert shared.block_of(out[2][2].type_softmax) is not None
    assert shared.block_of(out[1][2].pred_map) is None
    windows = sum(len(TileGrid(i.shape[:2], 256, 164)) for i in images)
    assert clock.counts["windows"] == windows
    assert {"pad", "cut", "network", "stitch", "finish"} <= set(clock.seconds)


def _sum_and_shape(job):
    maps, tag = job
    result = tag, float(maps.pred_map.sum()), maps.pred_map.shape, maps.type_softmax[5, 7].tolist()
    maps.pred_map[:] = -7  # the worker's own copy on write: the sender's array is unchanged
    return result


def mine_in_shm() -> set[str]:
    """This process's files in /dev/shm (SharedArrays objects free theirs when they go)."""
    import gc

    gc.collect()
    return {p.name for p in SHM_DIR.glob(f"hovernet-{os.getpid()}-*")}


@pytest.mark.skipif(not SHM_DIR.is_dir(), reason="no /dev/shm here")
def test_jobs_reach_a_worker_through_shared_memory_and_the_files_go():
    model = BlobNet()
    image = he_image((800, 700))
    shared = SharedArrays()
    assert not any(shared.prefix in name for name in mine_in_shm())
    ((_, _, maps),) = predict_stream(model, [(0, image)], 8, "fp32", alloc=shared.empty)
    copy = np.array(maps.type_softmax)  # a plain array: copied into shared memory once
    job = (type(maps)(maps.pred_map, copy), "region 3")
    payload, holders, nbytes = shared.dumps(job)
    assert len(payload) < 4096  # references, not 800 x 700 x 7 floats
    assert nbytes == maps.pred_map.nbytes + copy.nbytes
    assert len(pickle.dumps(job)) > 100 * len(payload)
    assert len(mine_in_shm()) == 3 and shared.created == 3  # the two maps and the copy
    with make_pool(1) as pool:
        tag, total, shape, pixel = pool.submit(run_shipped, _sum_and_shape, payload).result()
    assert (tag, shape) == ("region 3", maps.pred_map.shape)
    assert total == pytest.approx(float(maps.pred_map.sum()), rel=1e-6)
    assert pixel == maps.type_softmax[5, 7].tolist()
    assert float(maps.pred_map.sum()) == total  # untouched by the worker's writes
    expected = maps.pred_map.copy()
    del maps, job, copy
    # the worker is done, but the job's holders keep the files in use: nothing is reused
    again = shared.empty(expected.shape, np.float32)
    assert shared.created == 4
    del again, holders
    # now free: the next arrays of at most their size reuse them, no file is made
    for _ in range(3):
        reused = shared.empty(expected.shape, np.float32)
        assert shared.block_of(reused) is not None
        del reused
    assert shared.created == 4 and len(mine_in_shm()) == 4
    shared.close()
    assert mine_in_shm() == set()  # removed once closed and nothing here maps them


def test_files_of_killed_processes_are_swept(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=-1)
    dead = int(gone.stdout)
    for name in (f"hovernet-{dead}-ab12-0", f"hovernet-{os.getppid()}-cd34-1", "other-1"):
        (tmp_path / name).write_bytes(b"x")
    assert sweep_stale(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"hovernet-{os.getppid()}-cd34-1",  # its process runs
        "other-1",
    ]


def test_without_room_in_shared_memory_jobs_are_pickled_whole(tmp_path):
    shared = SharedArrays(root=tmp_path / "missing")  # statvfs fails: no room
    array = shared.empty((600, 600), np.float32)
    assert shared.block_of(array) is None
    array[:] = 1.5
    payload, holders, nbytes = shared.dumps({"maps": array})
    assert (holders, nbytes) == ([], 0) and len(payload) > array.nbytes
    assert float(run_shipped(lambda job: job["maps"].sum(), payload)) == 1.5 * array.size


def _nuclei_count(job):
    maps, nr_types = job
    return len(maps_to_nuclei(maps, nr_types, None, maps.pred_map.shape)[1])


@pytest.mark.parametrize("profile", [False, True])
def test_engine_with_a_worker_gives_the_inline_results(profile):
    model = BlobNet()
    images = [(i, he_image((420, 380), i)) for i in range(3)]

    def make_job(key, image, maps):
        return (maps, model.nr_types), maps.pred_map.nbytes

    def run(workers: int):
        got = {}
        config = EngineConfig(6, "fp32", workers=workers, profile=profile)
        front = FrontEnd(make_job, _nuclei_count, lambda k, r, e: got.update({k: r}))
        stats = run_engine(model, images, front, config)
        return got, stats

    inline, _ = run(0)
    pooled, stats = run(1)
    assert pooled == inline and all(n > 0 for n in inline.values())
    assert mine_in_shm() == set()
    if SHM_DIR.is_dir():
        assert stats.bytes_shared > 3 * 420 * 380 * 4 * 4  # the maps were shared, not sent
    if profile:
        assert stats.stages.counts["windows"] == stats.n_windows
        assert {"network", "stitch", "job", "ship", "report"} <= set(stats.stages.seconds)
        assert stats.bytes_pickled > 0
    else:
        assert stats.stages is None


class Doubler(torch.nn.Module):
    """Each window's outputs depend on it alone, and it records the batch sizes it sees."""

    def __init__(self, fixed: bool):
        super().__init__()
        self.geometry, self.nr_types, self.mode = ModelGeometry("fast", 40, 16), 2, "fast"
        self.fixed_batch, self.seen = fixed, []

    def forward(self, x):
        self.seen.append(len(x))
        core = x[:, :, 12:-12, 12:-12] / 255
        return {
            "np": torch.cat([core[:, :1], core[:, 1:2]], 1),
            "hv": core[:, 1:],
            "tp": core[:, :2],
        }


def test_fixed_batch_fills_the_last_batch_and_keeps_the_maps():
    image = he_image((33, 70))
    plain, fixed = Doubler(False), Doubler(True)
    a = predict_maps(plain, image, batch_size=4, precision="fp32")
    b = predict_maps(fixed, image, batch_size=4, precision="fp32")
    assert plain.seen == [4, 4, 4, 3] and fixed.seen == [4, 4, 4, 4]  # 3 x 5 windows
    np.testing.assert_array_equal(a.pred_map, b.pred_map)
    np.testing.assert_array_equal(a.type_softmax, b.type_softmax)


def test_batch_size_from_free_memory():
    gib = 1 << 30
    # 80 GiB free, half of it for the network, 150 MiB per window, 2 GiB fixed: 259 -> 256
    assert batch_size_for(80 * gib, 150 * 2**20, 2 * gib) == 256
    assert batch_size_for(80 * gib, 1 << 20, cap=512) == 512  # capped
    assert batch_size_for(2 * gib, 300 * 2**20) == 3  # under 8: as it is
    assert batch_size_for(gib, 2 * gib) == 1  # never 0
    with pytest.raises(HoverNetError, match="positive"):
        batch_size_for(gib, 0)


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@gpu
def test_cuda_maps_match_the_cpu_and_come_in_order():
    from hovernet.infer.gpu import probe_batch_size

    cpu_model = BlobNet()
    cuda_model = BlobNet().cuda()
    rng = np.random.default_rng(0)  # no shared data needed: the GPU machine may lack it
    images = [rng.integers(0, 256, (500 + 40 * i, 450, 3), np.uint8) for i in range(4)]
    expected = [predict_maps(cpu_model, im, batch_size=8, precision="fp32") for im in images]
    shared = SharedArrays()
    got = list(
        predict_stream(cuda_model, enumerate(images), 8, "fp32", alloc=shared.empty, max_lag=1)
    )
    assert [k for k, _, _ in got] == [0, 1, 2, 3]
    for (_, _, maps), ref in zip(got, expected, strict=True):
        np.testing.assert_allclose(maps.pred_map[..., 1:], ref.pred_map[..., 1:], atol=1e-4)
        assert (maps.pred_map[..., 0] != ref.pred_map[..., 0]).mean() < 1e-3
    assert probe_batch_size(cuda_model, "fp32") >= 8
