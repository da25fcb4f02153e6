"""`AdapterBank`: one named LoRA adapter per agent over a single shared, frozen base model (peft)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from templora_memory.config import TempLoraConfig

_PLACEHOLDER = "templora_placeholder"  # peft needs one adapter to exist; this rank-1 one is never trained or used


def adapter_name(agent_id: str) -> str:
    """A valid, collision-resistant module name for an agent's adapter."""
    return "agent_" + hashlib.sha256(agent_id.encode()).hexdigest()[:24]


def lora_config(config: TempLoraConfig) -> LoraConfig:
    """The peft `LoraConfig` equivalent of a `TempLoraConfig`."""
    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


class AdapterBank:
    """Adds, activates and deletes per-agent adapters, using peft's verbs keyed by agent id."""

    def __init__(self, base: PreTrainedModel, config: TempLoraConfig) -> None:
        base.requires_grad_(False)
        placeholder = lora_config(config)
        placeholder.r, placeholder.lora_alpha, placeholder.lora_dropout = 1, 1, 0.0
        self.model: PeftModel = get_peft_model(base, placeholder, adapter_name=_PLACEHOLDER)
        self.config = config
        self._names: dict[str, str] = {}

    def __contains__(self, agent_id: str) -> bool:
        return agent_id in self._names

    def add(self, agent_id: str, seed: int) -> None:
        """Create the agent's adapter; LoRA B starts at zero, so it begins identical to the base model."""
        if agent_id in self._names:
            raise ValueError(f"agent '{agent_id}' already has an adapter")
        name = adapter_name(agent_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model.add_adapter(name, lora_config(self.config))
        self._names[agent_id] = name

    def delete(self, agent_id: str) -> None:
        """Remove the agent's adapter and free its weights."""
        name = self._names.pop(agent_id)
        self.model.set_adapter(_PLACEHOLDER)
        self.model.delete_adapter(name)

    def parameters(self, agent_id: str) -> list[torch.nn.Parameter]:
        """The agent's trainable LoRA parameters (and nothing else)."""
        marker = f".{self._names[agent_id]}."
        return [p for n, p in self.model.named_parameters() if marker in n]

    @contextlib.contextmanager
    def active(self, agent_id: str | None) -> Iterator[PeftModel]:
        """Run the model with the agent's adapter, or with no adapter at all when `agent_id` is None."""
        if agent_id is None:
            with self.model.disable_adapter():
                yield self.model
            return
        self.model.set_adapter(self._names[agent_id])
        yield self.model
