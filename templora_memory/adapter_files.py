"""The files of one committed version's weights, as bytes: what `PeftModel.from_pretrained` reads, plus the optimizer.

`adapter_model.safetensors` and `adapter_config.json` are written exactly as peft writes them, so a downloaded
version folder loads with plain peft; `optimizer.pt` and `replay.pt` hold tensors only (`weights_only` loads).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
OPTIMIZER = "optimizer.pt"
REPLAY = "replay.pt"
WEIGHT_FILES = (ADAPTER_WEIGHTS, ADAPTER_CONFIG, OPTIMIZER, REPLAY)


@dataclass
class Weights:
    """An adapter's trained state: peft-format LoRA tensors, its peft config, and the optimizer state."""

    adapter: dict[str, torch.Tensor]
    adapter_config: dict[str, Any]
    optimizer: dict[str, Any] | None
    replay: list[dict[str, torch.Tensor]] = field(default_factory=list)
    """Taught probes kept for replay (tensors only), when context distillation keeps any."""


def encode_weights(weights: Weights) -> dict[str, bytes]:
    """The files of a version's weights: safetensors and JSON as peft writes them, torch pickles of tensors."""
    files = {
        ADAPTER_WEIGHTS: save_safetensors({name: t.detach().contiguous() for name, t in weights.adapter.items()}),
        ADAPTER_CONFIG: json.dumps(weights.adapter_config, indent=2).encode(),
    }
    for name, value in ((OPTIMIZER, weights.optimizer), (REPLAY, weights.replay)):
        if value:
            buffer = io.BytesIO()
            torch.save(value, buffer)
            files[name] = buffer.getvalue()
    return files


def decode_weights(files: dict[str, bytes | None]) -> Weights:
    """The weights back from their files (`files[name]` is None for a file the version lacks)."""

    def tensors(name: str) -> Any:
        data = files[name]
        return None if data is None else torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    return Weights(
        adapter=load_safetensors(files[ADAPTER_WEIGHTS]),
        adapter_config=json.loads(files[ADAPTER_CONFIG]),
        optimizer=tensors(OPTIMIZER),
        replay=tensors(REPLAY) or [],
    )
