"""templora-memory: parametric memory for LLM agents, after Temp-Lora (Wang et al., 2024)."""

from templora_memory.agent import AgentStats
from templora_memory.chat_model import ParametricMemory
from templora_memory.config import TempLoraConfig
from templora_memory.engine import MemoryEngine
from templora_memory.errors import (
    AgentBusyError,
    ConfigError,
    InvalidInputError,
    LeaseLostError,
    ModelNotFoundError,
    StoreError,
    TemploraError,
    UnknownAgentError,
)
from templora_memory.history import AgentChatHistory
from templora_memory.store import AgentStore

__all__ = [
    "AgentBusyError",
    "AgentChatHistory",
    "AgentStats",
    "AgentStore",
    "ConfigError",
    "InvalidInputError",
    "LeaseLostError",
    "MemoryEngine",
    "ModelNotFoundError",
    "ParametricMemory",
    "StoreError",
    "TempLoraConfig",
    "TemploraError",
    "UnknownAgentError",
]
