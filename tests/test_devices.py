"""Devices: the `device` setting, and every tensor the engine makes placed on the model's device.

The check runs the engine with device="cpu" under a `TorchFunctionMode` that sees every torch factory call (the
hook `torch.device(...)` as a context manager uses too) and records those made by templora_memory's own code without
naming a device. Such a call lands on torch's default device, which is the CPU here but not the model's device on a
GPU; one that names the model's device (or "cpu" on purpose, as where tokens are picked) is placed. Setting the
default device to "meta" instead would also catch them, but would break the libraries the engine calls (torch's
AdamW makes its step counter on the default device), so it could not tell our mistakes from theirs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import templora_memory
from templora_memory import ConfigError, TempLoraConfig
from templora_memory.devices import resolve_device
from templora_memory.generation import Sampling

PACKAGE = str(Path(templora_memory.__file__).parent)
FACTORIES = {
    torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.rand,
    torch.randn, torch.randint, torch.randperm, torch.eye, torch.linspace,
}  # fmt: skip


class UnplacedTensors(TorchFunctionMode):
    """Records (file:line, function) of factory calls from templora_memory that name no device."""

    def __init__(self) -> None:
        super().__init__()
        self.unplaced: set[str] = set()
        self.devices: set[torch.device] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if func in FACTORIES:
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(PACKAGE):
                self.devices.add(result.device)
                if "device" not in kwargs:
                    self.unplaced.add(f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno} {func.__name__}")
        return result


def test_every_tensor_the_engine_makes_names_its_device(make_engine, store_url, one_thread):
    engine = make_engine(store=store_url, device="cpu", synthetic_questions=1, kl_weight=0.1, cache_reuse=True)
    turns = [{"role": "system", "content": "You are Tom."}]
    turns += [{"role": ["user", "assistant"][i % 2], "content": f"turn {i}: my cat is Whiskers"} for i in range(10)]
    with UnplacedTensors() as mode:
        engine.add_turns("a", turns)
        engine.respond("a", [{"role": "user", "content": "Cat?"}], Sampling(4, temperature=0.8, seed=1)).result()
        engine.log_likelihood("a", engine.prompt_ids("a"), engine.encode("Whiskers"))
        engine.release("a")  # saved and evicted, then loaded back (optimizer and replayed probes from the store)
        engine.add_turns("a", [{"role": "user", "content": "more about the cat"}] * 1 + turns[1:3])
    assert engine.stats("a").chunks_trained >= 3
    assert mode.unplaced == set(), "tensors made without a device (they would land off the model's device)"
    assert mode.devices == {torch.device("cpu")}


def test_the_device_setting_resolves_or_says_what_this_machine_has(make_engine, monkeypatch):
    assert TempLoraConfig().device == "auto" and TempLoraConfig(device="cuda:1").device == "cuda:1"
    with pytest.raises(ConfigError, match="device="):
        TempLoraConfig(device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and make_engine(device="auto").device.type == "cpu"
    with pytest.raises(ConfigError, match="no CUDA GPU here; use device='cpu'"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="no Apple MPS device"):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
