"""LlamaIndex integration: an LLM whose agents remember in Temp-Lora adapters, and memories that write into them.

Install with the `llamaindex` extra: `pip install "templora-memory[llamaindex]"`.
"""

try:
    from templora_memory.integrations.llamaindex.llms import TemploraLLM
    from templora_memory.integrations.llamaindex.memory import TemploraMemory, TemploraMemoryBlock
except ModuleNotFoundError as exc:
    if not (exc.name or "").startswith("llama_index"):
        raise
    raise ModuleNotFoundError(
        f"the LlamaIndex integration needs the llamaindex extra ({exc.name} is missing): "
        'pip install "templora-memory[llamaindex]"',
        name=exc.name,
    ) from None

__all__ = ["TemploraLLM", "TemploraMemory", "TemploraMemoryBlock"]
