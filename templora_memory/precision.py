"""Which number formats this CPU computes fast: the bf16 detection shared by decoding and training.

bf16 halves the bytes of every weight and activation read, but only CPUs with native bf16 dot products
(AVX512-BF16, AMX, Arm BF16) run it fast; elsewhere it is emulated and slower than fp32, so "auto" settings
fall back to fp32 there.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]
_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}
"""CPU flags (as /proc/cpuinfo names them; "bf16" on Arm) of native bf16 dot products; without them bf16 is emulated."""


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 instructions (AVX512-BF16, AMX or Arm BF16), so bf16 weights run fast on it."""
    flags = _cpu_flags()
    if flags is not None:
        return bool(flags & _BF16_FLAGS)
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # no /proc (macOS, Windows): ask torch
    return bool(check and check())


def _cpu_flags() -> set[str] | None:
    """The first CPU's feature flags from /proc/cpuinfo, or None where the file is missing."""
    text = _cpuinfo()
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


@functools.cache
def _cpuinfo() -> str | None:
    """/proc/cpuinfo, read once per process (every training step asks which precision to run in)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def resolve(precision: Precision, device: torch.device | str = "cpu") -> torch.dtype:
    """The dtype a training precision setting means on `device` ("auto": on the CPU bf16 with native support, else
    fp32; on a CUDA GPU the dtype its base weights are held in, bf16 or fp16; on MPS fp32)."""
    device = torch.device(device)
    if precision == "auto" and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "auto":
        return torch.bfloat16 if device.type == "cpu" and cpu_supports_bf16() else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


@contextlib.contextmanager
def autocast(dtype: torch.dtype, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the block's matrix products on `device` in `dtype` (the LoRA and its gradients stay fp32); a no-op for
    fp32."""
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
        yield


def training(setting: Precision, device: torch.device) -> contextlib.AbstractContextManager[None]:
    """The autocast that training and teaching passes on `device` run under for a `train_precision` setting."""
    return autocast(resolve(setting, device), device)
