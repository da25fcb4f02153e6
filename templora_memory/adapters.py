"""`AdapterBank`: one named LoRA adapter per agent over a single shared, frozen base model (peft)."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel

from templora_memory.config import TempLoraConfig
from templora_memory.errors import TemploraError

STORED_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
"""`adapter_dtype` settings: the dtype an agent's LoRA is stored in."""
_PLACEHOLDER = "templora_placeholder"  # peft needs one adapter to exist; this rank-1 one is never trained or used


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
        self._names: dict[str, str] = {}  # agent id -> adapter slot holding its weights
        self._free: list[str] = []  # slots of agents that left RAM, reused before creating new ones
        self._slot_params: dict[str, list[tuple[str, torch.nn.Parameter]]] = {}
        self._created = 0
        prefix = "base_model.model."
        self._lora_layers = [
            (name.removeprefix(prefix), m) for name, m in self.model.named_modules() if isinstance(m, LoraLayer)
        ]

    def __contains__(self, agent_id: str) -> bool:
        return agent_id in self._names

    def add(self, agent_id: str, seed: int) -> None:
        """Give the agent an adapter slot: LoRA A drawn from `seed`, B zero, so it starts as the base model.

        Creating a peft adapter walks the whole model and slows as adapters accumulate, so slots of
        agents that left RAM are reused: bringing an agent back then costs a weight copy.
        """
        if agent_id in self._names:
            raise TemploraError(f"agent '{agent_id}' already has an adapter")
        self._names[agent_id] = self._free.pop() if self._free else self._create_slot()
        self.reset(agent_id, seed)

    def reset(self, agent_id: str, seed: int) -> None:
        """Put the agent's adapter back where a new one starts: LoRA A drawn from `seed`, B zero (the base model)."""
        generator = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same start on every device
        with torch.no_grad():
            for key, parameter in self._slot_parameters(self._names[agent_id]):
                if ".lora_A." in key:
                    drawn = torch.empty(parameter.shape, dtype=parameter.dtype, device="cpu")
                    torch.nn.init.kaiming_uniform_(drawn, a=math.sqrt(5), generator=generator)  # peft's init
                    parameter.copy_(drawn)
                else:
                    parameter.zero_()

    def delete(self, agent_id: str, release: bool = True) -> None:
        """Take the agent's adapter away; `release=False` keeps its slot for the next agent instead of freeing it."""
        name = self._names.pop(agent_id)
        if not release:
            self._free.append(name)
            return
        self.model.set_adapter(_PLACEHOLDER)
        self.model.delete_adapter(name)
        del self._slot_params[name]

    def slot(self, agent_id: str) -> str:
        """Name of the peft adapter that holds the agent's weights right now."""
        return self._names[agent_id]

    def _create_slot(self) -> str:
        name = f"slot_{self._created}"
        self._created += 1
        self.model.add_adapter(name, lora_config(self.config))
        self.model.eval()  # new modules start in training mode: their LoRA dropout would make replies random
        marker = f".{name}."
        self._slot_params[name] = [(key, p) for key, p in self.model.named_parameters() if marker in key]
        return name

    def _slot_parameters(self, name: str) -> list[tuple[str, torch.nn.Parameter]]:
        return self._slot_params[name]

    def weights(self, agent_id: str) -> tuple[dict[str, torch.Tensor], dict]:
        """The agent's LoRA tensors (CPU, in `adapter_dtype`) and peft config, as `PeftModel.from_pretrained` reads
        them."""
        name = self._names[agent_id]
        dtype = STORED_DTYPES[self.config.adapter_dtype]
        tensors = {
            key: t.detach().to("cpu", dtype, copy=True)
            for key, t in get_peft_model_state_dict(self.model, adapter_name=name).items()
        }
        peft_config = self.model.peft_config[name].to_dict()
        if isinstance(peft_config["target_modules"], (set, list)):  # resolved module names, not "all-linear"
            peft_config["target_modules"] = sorted(peft_config["target_modules"])
        return tensors, json.loads(json.dumps(peft_config, default=str))

    def load_weights(self, agent_id: str, tensors: dict[str, torch.Tensor]) -> None:
        """Copy stored LoRA tensors into the agent's adapter; shapes and names must match exactly."""
        expected = get_peft_model_state_dict(self.model, adapter_name=self._names[agent_id])
        if set(tensors) != set(expected) or any(tensors[k].shape != expected[k].shape for k in expected):
            raise ValueError(
                f"stored LoRA tensors do not match this model's adapter ({len(tensors)} vs {len(expected)})"
            )
        set_peft_model_state_dict(self.model, tensors, adapter_name=self._names[agent_id])

    def lora_tensors(self, agent_id: str) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
        """The agent's LoRA per base-model layer name: (A (r, in), B (out, r), scale), its live tensors (no copy)."""
        name = self._names[agent_id]
        return {
            layer: (m.lora_A[name].weight, m.lora_B[name].weight, m.scaling[name]) for layer, m in self._lora_layers
        }

    def parameters(self, agent_id: str) -> list[torch.nn.Parameter]:
        """The agent's trainable LoRA parameters (and nothing else)."""
        return [p for _, p in self._slot_parameters(self._names[agent_id])]

    @contextlib.contextmanager
    def active(self, agent_id: str | None) -> Iterator[PeftModel]:
        """Run the model with the agent's adapter, or with no adapter at all when `agent_id` is None."""
        if agent_id is None:
            with self.model.disable_adapter():
                yield self.model
            return
        self.model.set_adapter(self._names[agent_id])
        yield self.model
