"""Which precision a run uses: bf16 autocast where the device has it natively, or as forced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from study.train import precision
from study.train.precision import autocast, use_bf16

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_cpu_and_the_forced_choices_do_not(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert use_bf16("auto", CPU) is native
    assert use_bf16("bf16", CPU) is True and use_bf16("fp32", CPU) is False
    with pytest.raises(ValueError, match="expected 'auto', 'fp32' or 'bf16'"):
        use_bf16("fp16", CPU)


def test_autocast_runs_convs_in_bf16_only_when_enabled() -> None:
    conv, x = torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8)
    with autocast(CPU, True):
        assert conv(x).dtype == torch.bfloat16
    with autocast(CPU, False):
        assert conv(x).dtype == torch.float32


def test_the_cpu_probe_agrees_with_the_kernels_flags() -> None:
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        pytest.skip("no /proc/cpuinfo here")
    flags = info.read_text()
    listed = " avx512_bf16" in flags or " amx_bf16" in flags
    assert precision.cpu_has_native_bf16() is listed
