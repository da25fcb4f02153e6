"""Which floating-point precision the CPU runs fast: bf16 where it has native bf16 instructions, fp32 elsewhere.

bf16 halves the bytes of every weight and activation read, but only CPUs with AVX512-BF16 or AMX run its
matrix products natively; elsewhere it is emulated and slower than fp32, so "auto" falls back to fp32.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), read from /proc/cpuinfo."""
    try:
        return has_bf16_flags(Path("/proc/cpuinfo").read_text())
    except OSError:  # not Linux: torch's own capability string names AMX where present
        return "AMX" in torch.backends.cpu.get_cpu_capability()


def has_bf16_flags(cpuinfo: str) -> bool:
    """Whether a /proc/cpuinfo text lists a native bf16 flag."""
    return any(flag in cpuinfo.split() for flag in _BF16_FLAGS)


def resolve(precision: Precision) -> torch.dtype:
    """The dtype a precision setting means on this machine ("auto": bf16 with native support, else fp32)."""
    if precision == "auto":
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


@contextlib.contextmanager
def autocast(dtype: torch.dtype) -> Iterator[None]:
    """Run the block's matrix products in `dtype` (weights and gradients stay fp32); a no-op for fp32."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        yield
