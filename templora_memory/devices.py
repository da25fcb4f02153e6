"""Where the model runs: the `device` setting resolved to a torch device, and the weight dtype each device runs.

"auto" is the first of CUDA, Apple MPS and the CPU that this machine has. On a CUDA GPU the frozen base weights are
held in bf16 (fp16 where the GPU has no bf16) and attention runs through PyTorch's SDPA; the LoRA weights and the
optimizer stay fp32 (peft keeps adapters in fp32). On the CPU and MPS the weights stay fp32, as loaded, so CPU
behaviour and figures do not change.
"""

from __future__ import annotations

import re

import torch
from transformers import PreTrainedModel

from templora_memory.config import DEVICE_PATTERN
from templora_memory.errors import ConfigError


def resolve_device(choice: str) -> torch.device:
    """The torch device a `device` setting names on this machine; `ConfigError` naming the fix if it has none."""
    if not re.fullmatch(DEVICE_PATTERN, choice):
        raise ConfigError(f"device={choice!r} is not a device; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    device = torch.device(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={choice!r} but torch sees no CUDA GPU here; use device='cpu' or 'auto'")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device={choice!r} but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not _mps_available():
        raise ConfigError(f"device={choice!r} but torch sees no Apple MPS device here; use device='cpu' or 'auto'")
    return device


def weights_dtype(device: torch.device) -> torch.dtype:
    """The dtype the frozen base weights are held in on `device`: bf16 (else fp16) on CUDA, fp32 elsewhere."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def place(model: PreTrainedModel, choice: str) -> tuple[PreTrainedModel, torch.device]:
    """`model` moved to the device `choice` resolves to, in its dtype there (on the CPU as loaded), with SDPA
    attention on a GPU; and that device."""
    device = resolve_device(choice)
    if device.type == "cpu":
        return model.to(device), device
    model = model.to(device=device, dtype=weights_dtype(device))
    if device.type == "cuda" and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("sdpa")
    return model, device


def model_device(model: torch.nn.Module) -> torch.device:
    """The device `model`'s weights are on."""
    return next(model.parameters()).device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
