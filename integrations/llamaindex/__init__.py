"""LlamaIndex integration: an LLM whose agents remember in Temp-Lora adapters, and memories that write into them.

Install with the `llamaindex` extra: `pip install "templora-memory[llamaindex]"`.
"""

from templora_memory.integrations.llamaindex.llms import TemploraLLM
from templora_memory.integrations.llamaindex.memory import TemploraMemory, TemploraMemoryBlock

__all__ = ["TemploraLLM", "TemploraMemory", "TemploraMemoryBlock"]
