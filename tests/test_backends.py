"""Inference backends: ONNX Runtime against the golden outputs and against PyTorch, export-onnx
metadata, the fallback when onnxruntime is unusable, export errors, `--backend` on the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REFERENCE, run_cli
from test_infer import CONSEP, TYPE_INFO, DarkBlobNet
from test_network import golden, recipe_model

from hovernet.device import cpu_has_native_bf16
from hovernet.errors import HoverNetError
from hovernet.infer import backends
from hovernet.infer.backends import OnnxRuntimeBackend, backend_of, resolve_backend, use_backend
from hovernet.infer.predict import segment_image
from hovernet.infer.tile import TileConfig, run_tile
from hovernet.io.slides import read_rgb
from hovernet.model.inference import logits_to_maps, prepare_for_inference
from hovernet.model.onnx_export import export_onnx, read_onnx_metadata
from hovernet.model.registry import build_model
from hovernet.resources import _cgroup_quota, available_cpus

pytest.importorskip("onnxruntime")  # a hard dependency; this names it if the install lacks it


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


@pytest.mark.parametrize(
    "case",
    ["original_types5", "fast_types6", pytest.param("original_notype", marks=pytest.mark.slow)],
)
def test_onnxruntime_matches_golden_outputs(case):
    # the model as the CLI runs it: BatchNorm folded, then exported in memory
    model = prepare_for_inference(recipe_model(case), channels_last=True)
    backend = OnnxRuntimeBackend(model, threads=2)
    x, ref = golden(case)
    logits = backend.session.run(backend.outputs, {"image": x.numpy()})
    assert sorted(backend.outputs) == sorted(ref)
    for name, got in zip(backend.outputs, logits, strict=True):
        assert got.shape == ref[name].shape, name
        err = relative_error(got, ref[name])
        assert err < 1e-4, f"{case} {name}: relative error {err:.2e}"
    # and the engine's entry point: uint8 NHWC windows -> [np prob, h, v, type softmax]
    with np.load(REFERENCE / f"net_{case}.npz") as z:
        window = z["input_rgb"][None]
    maps = backend.run(window)
    expected = logits_to_maps({k: torch.from_numpy(v) for k, v in ref.items()}).numpy()
    assert relative_error(maps, expected) < 1e-4


def standardised(t: torch.Tensor) -> torch.Tensor:
    return (t - t.mean((1, 2, 3), keepdim=True)) / t.std(dim=(1, 2, 3), keepdim=True)


class NetworkOnBlobs(torch.nn.Module):
    """A seeded network (fast or lite) whose maps are steered towards nucleus-like blobs.

    Random weights alone give a flat nucleus probability and HV maps without the gradients the
    watershed needs, hence no nuclei. Here the real network decides the types and moves the
    nucleus boundaries and the HV maps (its outputs, standardised, are added to DarkBlobNet's),
    so its rounding differences between backends reach the instance maps.
    """

    def __init__(self, arch: str):
        super().__init__()
        torch.manual_seed(0)
        self.net = prepare_for_inference(build_model(arch, 3).eval())
        self.blobs = DarkBlobNet()
        self.blobs.geometry = self.net.geometry  # it crops its maps to the margin
        self.mode, self.nr_types, self.geometry = arch, 3, self.net.geometry

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        a, b = self.blobs(x), self.net(x)
        return {
            "np": a["np"] + 1.5 * standardised(b["np"]),
            "hv": a["hv"] * (1 + 0.3 * torch.tanh(standardised(b["hv"]))),
            "tp": b["tp"],
        }


@pytest.mark.parametrize("arch", ["lite", pytest.param("fast", marks=pytest.mark.slow)])
def test_segment_image_same_instances_through_both_backends(arch):
    image = read_rgb(CONSEP / "test_10_000.png")  # 256 x 256: 2 x 2 windows
    model = NetworkOnBlobs(arch)
    kw = {"batch_size": 4, "precision": "fp32"}  # ONNX Runtime runs in fp32 only
    inst_t, nuclei_t, pred_t = segment_image(model, image, backend="torch", **kw)
    assert backend_of(model) is None
    inst_o, nuclei_o, pred_o = segment_image(model, image, backend="onnxruntime", **kw)
    assert isinstance(backend_of(model), OnnxRuntimeBackend)
    assert len(nuclei_t) > 5
    np.testing.assert_array_equal(inst_o, inst_t)
    np.testing.assert_array_equal(pred_o[..., 0], pred_t[..., 0])  # type arg-max
    np.testing.assert_allclose(pred_o[..., 1:], pred_t[..., 1:], atol=1e-4)
    assert [n["type"] for n in nuclei_o.values()] == [n["type"] for n in nuclei_t.values()]


def test_run_tile_same_outputs_through_both_backends(tmp_path):
    """The folder runner on real images through the stand-in network (cheap to export)."""
    import scipy.io

    files = (CONSEP / "test_10_000.png", CONSEP / "test_10_001.png")
    results = {}
    for name in ("torch", "onnxruntime"):
        model = DarkBlobNet()
        assert use_backend(model, name, log=pytest.fail) == name
        out = tmp_path / name
        config = TileConfig(files, out, batch_size=3, precision="fp32")  # ONNX Runtime: fp32
        summary = run_tile(model, config, log=lambda line: None)
        assert not summary.failed
        results[name] = [scipy.io.loadmat(out / "mat" / f"{f.stem}.mat") for f in files]
    for mat_t, mat_o in zip(results["torch"], results["onnxruntime"], strict=True):
        assert mat_t["inst_map"].max() > 5
        np.testing.assert_array_equal(mat_o["inst_map"], mat_t["inst_map"])
        np.testing.assert_array_equal(mat_o["inst_type"], mat_t["inst_type"])


def test_export_onnx_command_writes_metadata_and_a_dynamic_batch_model(tmp_path):
    import onnxruntime as ort

    from hovernet.io.type_info import load_type_info
    from hovernet.model.checkpoints import save_checkpoint

    torch.manual_seed(1)
    model = build_model("lite", 3).eval()  # cheap to export; original and fast: golden tests
    ckpt, out = tmp_path / "net.pth", tmp_path / "out" / "net.onnx"
    info = load_type_info(TYPE_INFO)
    save_checkpoint(ckpt, model, type_info=info, mpp=0.25)
    code, stdout, stderr = run_cli(["export-onnx", str(ckpt), str(out)])
    assert code == 0, stderr
    assert "lite mode, nr_types=3" in stdout and str(out) in stdout
    assert [p.name for p in out.parent.iterdir()] == ["net.onnx"]  # no temporary files left

    meta = read_onnx_metadata(out)
    assert (meta["mode"], meta["nr_types"], meta["mpp"]) == ("lite", 3, 0.25)
    assert meta["type_info"] == info
    assert (meta["input_size"], meta["output_size"]) == (256, 224)

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["mode"] == '"lite"'
    x = torch.rand(3, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 255
    np_logits, hv, tp = session.run(["np", "hv", "tp"], {"image": x.numpy()})  # batch 3
    with torch.inference_mode():
        ref = model(x)
    for name, got in (("np", np_logits), ("hv", hv), ("tp", tp)):
        assert relative_error(got, ref[name].numpy()) < 1e-4, name

    # --mpp overrides the checkpoint's value; a checkpoint path that is missing is named
    code, _, stderr = run_cli(["export-onnx", str(ckpt), str(out), "--mpp", "0.5"])
    assert code == 0, stderr
    assert read_onnx_metadata(out)["mpp"] == 0.5
    code, _, stderr = run_cli(["export-onnx", str(tmp_path / "nope.pth"), str(out)])
    assert code == 2 and "nope.pth does not exist" in stderr


@pytest.mark.parametrize("nr_types", [None, 4])
def test_lite_through_onnxruntime_matches_torch(nr_types):
    torch.manual_seed(2)
    model = prepare_for_inference(build_model("lite", nr_types).eval())
    assert use_backend(model, "onnxruntime", "fp32", log=pytest.fail) == "onnxruntime"
    windows = np.random.default_rng(0).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    got = backend_of(model).run(windows)  # batch 3 through a graph traced at batch 1
    with torch.inference_mode():
        logits = model(torch.from_numpy(windows).permute(0, 3, 1, 2).float())
    expected = logits_to_maps(logits).numpy()
    assert got.shape == (3, 224, 224, 3 + (nr_types or 0))
    assert relative_error(got, expected) < 1e-5


def test_read_onnx_metadata_names_a_foreign_file(tmp_path):
    path = tmp_path / "plain.onnx"
    path.write_bytes(export_onnx(DarkBlobNet()))
    with pytest.raises(HoverNetError, match="no hovernet metadata.*export-onnx"):
        read_onnx_metadata(path)


def test_broken_onnxruntime_falls_back_to_torch_with_one_line(monkeypatch):
    def broken():
        raise ImportError("libonnxruntime.so: cannot open shared object file")

    monkeypatch.setattr(backends, "_import_onnxruntime", broken)
    lines: list[str] = []
    model = DarkBlobNet()
    assert use_backend(model, "onnxruntime", "fp32", log=lines.append) == "torch"
    assert backend_of(model) is None
    assert len(lines) == 1
    assert "onnxruntime is not usable" in lines[0] and "PyTorch" in lines[0]
    assert "libonnxruntime.so" in lines[0]


def test_runtime_that_cannot_load_the_model_falls_back(monkeypatch):
    import onnxruntime

    class Broken:
        __version__ = "0"
        SessionOptions = onnxruntime.SessionOptions
        ExecutionMode = onnxruntime.ExecutionMode
        GraphOptimizationLevel = onnxruntime.GraphOptimizationLevel

        def InferenceSession(self, *args, **kwargs):  # noqa: N802 (the runtime's name)
            raise RuntimeError("Illegal instruction in CPU provider")

    monkeypatch.setattr(backends, "_import_onnxruntime", Broken)
    lines: list[str] = []
    assert use_backend(DarkBlobNet(), "onnxruntime", log=lines.append) == "torch"
    assert len(lines) == 1 and "Illegal instruction" in lines[0]


class _Unsupported(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svd(x)[0]  # no ONNX conversion for SVD


def test_export_failure_names_the_layer_and_does_not_fall_back():
    model = DarkBlobNet()
    model.odd = torch.nn.Sequential(torch.nn.Identity(), _Unsupported())
    forward = model.forward

    def patched(x):
        out = forward(x)
        out["hv"] = out["hv"] + model.odd(out["hv"]).mean()
        return out

    model.forward = patched
    lines: list[str] = []
    with pytest.raises(HoverNetError, match=r"in layer 'odd\.1'.*linalg_svd.*--backend torch"):
        use_backend(model, "onnxruntime", "fp32", log=lines.append)
    assert lines == []  # an error, not a fallback


def test_changed_weights_are_refused_until_the_backend_is_rebuilt():
    model = DarkBlobNet()
    model.scale = torch.nn.Parameter(torch.ones(()))
    forward = model.forward

    def patched(x):
        out = forward(x)
        out["hv"] = out["hv"] * model.scale
        return out

    model.forward = patched
    use_backend(model, "onnxruntime")
    first = backend_of(model)
    window = np.zeros((1, 256, 256, 3), np.uint8)
    first.run(window)
    use_backend(model, "onnxruntime")
    assert backend_of(model) is first  # unchanged weights: reused, not re-exported
    with torch.no_grad():
        model.scale.mul_(2)
    with pytest.raises(HoverNetError, match="weights changed.*use_backend"):
        first.run(window)
    use_backend(model, "onnxruntime")
    assert backend_of(model) is not first
    backend_of(model).run(window)


def test_resolve_backend():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # auto is PyTorch everywhere: on the CPU in fp32 too (benchmarks/bench_backends.py)
    assert resolve_backend("auto", cpu, None) == "torch"
    assert resolve_backend("auto", cpu, torch.bfloat16) == "torch"
    assert resolve_backend("auto", cuda, None) == "torch"
    assert resolve_backend("onnxruntime", cpu, None) == "onnxruntime"
    assert resolve_backend("torch", cpu, None) == "torch"
    with pytest.raises(HoverNetError, match="runs on the CPU.*--device cpu"):
        resolve_backend("onnxruntime", cuda, None)
    with pytest.raises(HoverNetError, match="float32.*--precision fp32"):
        resolve_backend("onnxruntime", cpu, torch.float16)
    with pytest.raises(HoverNetError, match="unknown backend 'tvm'"):
        resolve_backend("tvm", cpu, None)


def test_auto_runs_pytorch_in_fp32_without_exporting(monkeypatch):
    def no_export(model):
        raise AssertionError("auto exported the model")

    model = DarkBlobNet()
    use_backend(model, "onnxruntime", "fp32")  # attached, then replaced by auto's choice
    monkeypatch.setattr(backends, "cached_export", no_export)
    assert use_backend(model, "auto", "fp32", log=pytest.fail) == "torch"
    assert backend_of(model) is None
    assert backends.effective_precision(model, "fp32") == "fp32"


def test_threads_come_from_the_usable_cores(tmp_path):
    import os

    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_quota(v2) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota(v2) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_quota(v1.parent) == 2.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cgroup_quota(v1.parent) is None


@pytest.fixture(scope="module")
def lite_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "lite.tar"
    torch.save({"desc": build_model("lite", 3).state_dict()}, path)
    return path


def test_cli_backend_option(tmp_path, lite_checkpoint):
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    image.write_bytes((CONSEP / "test_10_000.png").read_bytes())
    base = ["infer", f"--model_path={lite_checkpoint}", "--batch_size=4"]

    def tile(name: str) -> list[str]:
        return ["tile", f"--input_dir={image.parent}", f"--output_dir={tmp_path / name}"]

    code, stdout, stderr = run_cli([*base, "--backend=onnxruntime", "--threads=1", *tile("o")])
    assert code == 0, stderr
    assert "ONNX Runtime" in stdout + stderr and "1 threads" in stdout + stderr
    code, stdout, stderr = run_cli([*base, "--backend", "torch", *tile("t")])
    assert code == 0, stderr
    assert "PyTorch" in stdout + stderr and "ONNX Runtime" not in stdout + stderr
    # auto: PyTorch, in bf16 where the CPU computes bf16 natively, else in fp32; no export
    code, stdout, stderr = run_cli([*base, *tile("a")])
    precision = "bfloat16" if cpu_has_native_bf16() else "fp32"
    assert code == 0 and f"cpu, {precision}, batch 4, PyTorch" in stdout + stderr
    code, stdout, stderr = run_cli([*base, "--precision=fp32", *tile("f")])
    assert code == 0 and "cpu, fp32, batch 4, PyTorch" in stdout + stderr
    code, _, stderr = run_cli([*base, "--backend", "tvm", *tile("x")])
    assert code == 2 and "unknown --backend 'tvm'" in stderr
