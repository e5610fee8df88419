"""The ONNX export cache: a second backend build reads the file instead of exporting, with the
same outputs; damaged files, changed weights, changed code and an unwritable folder are
handled (re-export, another key, no caching, one warning), and the folder is pruned."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from test_infer import DarkBlobNet

from hovernet.errors import HoverNetWarning
from hovernet.infer.backends import _CHOSEN, backend_of, use_backend
from hovernet.io.cache import cache_dir, read_blob, write_blob
from hovernet.model import onnx_cache
from hovernet.model.inference import logits_to_maps, prepare_for_inference
from hovernet.model.registry import build_model

pytest.importorskip("onnxruntime")

WINDOWS = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache folder, and a count of the real exports made."""
    monkeypatch.setenv("HOVERNET_CACHE", str(tmp_path / "cache"))
    exports = []
    real = onnx_cache.export_onnx

    def counting(model):
        exports.append(model)
        return real(model)

    monkeypatch.setattr(onnx_cache, "export_onnx", counting)
    return exports


def lite() -> torch.nn.Module:
    torch.manual_seed(3)
    return prepare_for_inference(build_model("lite", 3).eval(), channels_last=True)


def files() -> list[str]:
    return sorted(p.name for p in cache_dir("onnx").iterdir())


def built(model: torch.nn.Module):
    """The ONNX Runtime backend of `model`, built as in a fresh process (nothing in memory)."""
    _CHOSEN.pop(model, None)
    assert use_backend(model, "onnxruntime", "fp32", log=pytest.fail) == "onnxruntime"
    return backend_of(model)


def test_second_build_reads_the_cache_and_gives_the_same_outputs(cache, monkeypatch):
    model = lite()
    first = built(model)
    assert not first.from_cache and len(cache) == 1
    assert len(files()) == 1 and files()[0].endswith(".onnx")
    expected = first.run(WINDOWS)

    def no_export(model):
        raise AssertionError("exported although the cache holds this model")

    monkeypatch.setattr(onnx_cache, "export_onnx", no_export)
    # the same weights in another model object (as loaded by the next run)
    again = built(copy.deepcopy(model))
    assert again.from_cache
    assert "read from the cache" in again.describe()
    np.testing.assert_array_equal(again.run(WINDOWS), expected)


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "empty", "not ours"])
def test_damaged_cache_file_is_exported_again(cache, damage):
    model = lite()
    expected = built(model).run(WINDOWS)
    (path,) = cache_dir("onnx").iterdir()
    data = path.read_bytes()
    broken = {
        "truncated": data[: len(data) // 2],
        "flipped byte": data[:-100] + bytes([data[-100] ^ 1]) + data[-99:],
        "empty": b"",
        "not ours": data.split(b"\n", 1)[1],  # a bare ONNX file without the checksum line
    }[damage]
    path.write_bytes(broken)
    again = built(model)
    assert not again.from_cache and len(cache) == 2  # detected, exported, no crash
    np.testing.assert_array_equal(again.run(WINDOWS), expected)
    assert read_blob(path) is not None  # stored again, intact
    assert built(model).from_cache and len(cache) == 2


def test_weights_changed_in_place_miss_the_cache(cache):
    model = lite()
    before = built(model).run(WINDOWS)
    with torch.no_grad():
        next(model.parameters()).mul_(1.5)  # in place: same tensors, other values
    after = built(model)
    assert not after.from_cache and len(cache) == 2
    assert len(files()) == 2
    with torch.inference_mode():
        x = torch.from_numpy(WINDOWS).permute(0, 3, 1, 2).float()
        logits = model(x)
    got = after.run(WINDOWS)
    assert not np.allclose(got, before)
    np.testing.assert_allclose(got, logits_to_maps(logits).numpy(), atol=1e-4)


def test_code_that_cannot_be_keyed_is_not_cached(cache):
    model = DarkBlobNet()
    forward = model.forward
    model.forward = lambda x: {k: v * 2 for k, v in forward(x).items()}  # instance forward
    assert onnx_cache.model_key(model) is None
    built(model)
    built(model)
    assert len(cache) == 2 and not cache_dir("onnx").exists()
    hooked = DarkBlobNet()
    hooked.register_forward_hook(lambda module, args, out: out)
    assert onnx_cache.model_key(hooked) is None
    assert onnx_cache.model_key(DarkBlobNet()) is not None


def test_unwritable_cache_folder_warns_and_still_runs(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("HOVERNET_CACHE", str(blocker))  # the folder would be under a file
    model = DarkBlobNet()
    with pytest.warns(HoverNetWarning, match=r"cannot store the ONNX export.*HOVERNET_CACHE"):
        backend = built(model)
    assert backend.run(WINDOWS[:1]).shape[0] == 1


def test_cache_folder_location(monkeypatch, tmp_path):
    monkeypatch.setenv("HOVERNET_CACHE", str(tmp_path / "h"))
    assert cache_dir("onnx") == tmp_path / "h" / "onnx"
    monkeypatch.delenv("HOVERNET_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir("onnx") == tmp_path / "x" / "hovernet" / "onnx"


def test_write_blob_keeps_the_most_recently_used(tmp_path):
    paths = [tmp_path / f"{i}.onnx" for i in range(4)]
    for age, path in enumerate(paths[:3]):
        write_blob(path, b"x" * age, keep=3)
        os.utime(path, (1000 + age, 1000 + age))
    other_writer = tmp_path / ".3.abc.tmp.onnx"  # atomic_path's temporary name
    other_writer.write_bytes(b"partial")
    assert read_blob(paths[0]) == b""  # a hit makes 0 the most recent
    write_blob(paths[3], b"new", keep=3)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [".3.abc.tmp.onnx", "0.onnx", "2.onnx", "3.onnx"]
    assert read_blob(tmp_path / "missing.onnx") is None
