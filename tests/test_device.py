"""Precision "auto": bf16 only where the CPU computes it natively (detected, never assumed); the
backend "auto" is PyTorch either way (ONNX Runtime fp32 was no faster end to end)."""

from __future__ import annotations

import torch

from hovernet import device
from hovernet.infer.backends import resolve_backend

CPU = torch.device("cpu")


def test_auto_is_bf16_on_a_cpu_with_native_bf16(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert device.autocast_dtype(CPU, "auto") == torch.bfloat16
    assert resolve_backend("auto", CPU, device.autocast_dtype(CPU, "auto")) == "torch"
    assert device.autocast_dtype(CPU, "fp32") is None  # forcing fp32 still works


def test_auto_is_fp32_and_pytorch_on_other_cpus(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert device.autocast_dtype(CPU, "auto") is None
    assert resolve_backend("auto", CPU, None) == "torch"
    assert resolve_backend("onnxruntime", CPU, None) == "onnxruntime"  # still there by name
    assert device.autocast_dtype(CPU, "bf16") == torch.bfloat16  # forcing bf16 still works


def test_detection_reads_this_machine():
    flags = open("/proc/cpuinfo").read().split()
    native = {"amx_bf16", "avx512_bf16"} & set(flags)
    assert device.cpu_has_native_bf16() == bool(native or torch.cpu._is_amx_tile_supported())


def test_precision_help_names_what_is_detected():
    """The --precision help names both features `cpu_has_native_bf16` checks, not AMX alone."""
    from conftest import run_cli

    code, stdout, _ = run_cli(["infer", "--help"])
    text = " ".join(stdout.split())
    assert code == 0
    assert "AMX or AVX-512 BF16" in text and "detected at run time" in text
    assert "with AMX, else" not in text
