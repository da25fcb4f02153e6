"""bf16 detection: native bf16 instructions are found in the CPU flags, and their absence means fp32."""

from __future__ import annotations

from templora_memory import precision


def test_bf16_is_reported_only_for_cpus_with_native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert precision.cpu_supports_bf16()
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})
    assert not precision.cpu_supports_bf16()


def test_without_cpu_flags_torch_is_asked(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: None)
    monkeypatch.setattr(precision.torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert not precision.cpu_supports_bf16()
