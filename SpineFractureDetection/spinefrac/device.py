"""Compute device choice: CUDA with mixed precision when present, otherwise the CPU.

torch is optional for the core (the existing-segmentation path and the measurements need
none), so it is imported only when a device is actually resolved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from spinefrac.errors import EngineUnavailableError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DeviceChoice:
    name: str  # "cpu" or "cuda"
    mixed_precision: bool
    reason: str
    cpu_threads: int


def _cuda_available() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "PyTorch is not installed"
    if not torch.cuda.is_available():
        return False, f"PyTorch {torch.__version__} sees no CUDA device"
    return True, f"CUDA device {torch.cuda.get_device_name(0)}"


def resolve_device(requested: str = "auto") -> DeviceChoice:
    """Turn --device auto|cpu|cuda into a device; 'cuda' without a GPU is an error, not a fallback."""
    if requested not in DEVICE_CHOICES:
        raise EngineUnavailableError(f"unknown device '{requested}' (choose from {', '.join(DEVICE_CHOICES)})")
    threads = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if requested == "cpu":
        return DeviceChoice("cpu", False, "CPU requested", threads)
    available, detail = _cuda_available()
    if available:
        return DeviceChoice("cuda", True, detail, threads)
    if requested == "cuda":
        raise EngineUnavailableError(f"--device cuda was requested but {detail}; use --device cpu or auto")
    return DeviceChoice("cpu", False, f"no GPU: {detail}", threads)
