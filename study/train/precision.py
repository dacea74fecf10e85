"""Mixed precision: bf16 autocast where the device computes bf16 natively, fp32 elsewhere.

On a CPU without native bf16 (no AVX512-BF16, no AMX) oneDNN emulates it, which is slower than
fp32, so `auto` only turns it on where it pays: a CUDA GPU with bf16 support, or such a CPU.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from models.choices import PRECISIONS


def cpu_has_native_bf16() -> bool:
    """True on a CPU with AVX512-BF16 or AMX tiles (what oneDNN's bf16 kernels run on)."""
    cpu = getattr(torch, "cpu", None)
    probes = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(callable(p) for p in probes):
        return any(callable(p) and p() for p in probes)
    info = Path("/proc/cpuinfo")  # older torch: read the flags
    flags = info.read_text() if info.is_file() else ""
    return " avx512_bf16" in flags or " amx_bf16" in flags


def cpu_model() -> str:
    """The CPU's model name as the OS reports it ('' where it does not)."""
    info = Path("/proc/cpuinfo")
    for line in (info.read_text() if info.is_file() else "").splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return ""


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether `precision` ('auto' | 'fp32' | 'bf16') means bf16 autocast on `device`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected 'auto', 'fp32' or 'bf16'")
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` (no loss scaling is needed with bf16), or nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
