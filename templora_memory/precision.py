"""Which number formats this CPU computes fast: the bf16 detection shared by decoding and training."""

from __future__ import annotations

from pathlib import Path

import torch

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
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()
