"""Precision "auto": bf16 only where the CPU computes it natively (detected, never assumed), and
the backend follows: ONNX Runtime for fp32 on the CPU, PyTorch for bf16."""

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


def test_auto_is_fp32_and_onnxruntime_on_other_cpus(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert device.autocast_dtype(CPU, "auto") is None
    assert resolve_backend("auto", CPU, None) == "onnxruntime"
    assert device.autocast_dtype(CPU, "bf16") == torch.bfloat16  # forcing bf16 still works


def test_detection_reads_this_machine():
    flags = open("/proc/cpuinfo").read().split()
    native = {"amx_bf16", "avx512_bf16"} & set(flags)
    assert device.cpu_has_native_bf16() == bool(native or torch.cpu._is_amx_tile_supported())
