"""templora-memory: parametric memory for LLM agents, after Temp-Lora (Wang et al., 2024).

The public names load on first use (PEP 562), so the `templora-memory` command answers `--help` without importing
torch, transformers or LangChain.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from templora_memory.agent import AgentStats
    from templora_memory.chat_model import ParametricMemory
    from templora_memory.config import TempLoraConfig
    from templora_memory.engine import MemoryEngine
    from templora_memory.errors import (
        AgentBusyError,
        ConfigError,
        DamagedAgentError,
        InvalidInputError,
        LeaseLostError,
        ModelNotFoundError,
        StoreError,
        StoreUnavailableError,
        TemploraError,
        UnknownAgentError,
        UnknownTurnError,
    )
    from templora_memory.history import AgentChatHistory
    from templora_memory.store import AgentStore

__all__ = [
    "AgentBusyError",
    "AgentChatHistory",
    "AgentStats",
    "AgentStore",
    "ConfigError",
    "DamagedAgentError",
    "InvalidInputError",
    "LeaseLostError",
    "MemoryEngine",
    "ModelNotFoundError",
    "ParametricMemory",
    "StoreError",
    "StoreUnavailableError",
    "TempLoraConfig",
    "TemploraError",
    "UnknownAgentError",
    "UnknownTurnError",
]
_HOMES = {"AgentChatHistory": "history", "AgentStats": "agent", "AgentStore": "store", "MemoryEngine": "engine"}
_HOMES |= {"ParametricMemory": "chat_model", "TempLoraConfig": "config"}
_HOMES |= {name: "errors" for name in __all__ if name.endswith("Error")}


def __getattr__(name: str) -> object:
    """Import a public name's module on first use."""
    if name not in _HOMES:
        raise AttributeError(f"module 'templora_memory' has no attribute {name!r}")
    return getattr(importlib.import_module(f"templora_memory.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
