"""LlamaIndex memories backed by a Temp-Lora adapter: a `BaseMemory` and a `Memory` block."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.memory.memory import BaseMemoryBlock
from llama_index.core.memory.types import BaseMemory

from templora_memory import InvalidInputError, MemoryEngine
from templora_memory.integrations.llamaindex._messages import from_template, to_template


def _engine_of(source: Any) -> MemoryEngine:
    """Accept a `MemoryEngine` or anything holding one (`TemploraLLM`, `ParametricMemory`)."""
    return source if isinstance(source, MemoryEngine) else source.engine


class TemploraMemory(BaseMemory):
    """Chat memory whose old turns live in the agent's adapter: `put` writes, `get` is the prompt window.

    Turns that left the window are no longer text anywhere: they were trained into the adapter, so
    `get_all` returns the window too. Pair it with a `TemploraLLM` on the same engine and agent id.

    Example:
        >>> memory = TemploraMemory.from_defaults(llm, agent_id="npc-7")  # doctest: +SKIP
        >>> SimpleChatEngine.from_defaults(llm=llm, memory=memory).chat("Hi")  # doctest: +SKIP
    """

    agent_id: str = Field(default="default", description="The agent whose memory this is.")
    _engine: MemoryEngine = PrivateAttr()

    def __init__(self, engine: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._engine = _engine_of(engine)

    @classmethod
    def class_name(cls) -> str:
        return "TemploraMemory"

    @classmethod
    def from_defaults(  # type: ignore[override]
        cls, engine: Any = None, agent_id: str = "default", **kwargs: Any
    ) -> TemploraMemory:
        """Build over a `MemoryEngine`, `TemploraLLM` or `ParametricMemory` (sharing its engine)."""
        if engine is None:
            raise InvalidInputError("TemploraMemory needs the engine to write into: from_defaults(llm, agent_id=...)")
        return cls(engine, agent_id=agent_id, **kwargs)

    def get(self, input: str | None = None, **kwargs: Any) -> list[ChatMessage]:
        """The turns the agent's next prompt holds (system message included)."""
        if not self._engine.exists(self.agent_id):
            return []  # a new agent's memory starts empty
        return [from_template(m) for m in self._engine.window(self.agent_id)]

    def get_all(self) -> list[ChatMessage]:
        """Same as `get`: older turns exist only as adapter weights."""
        return self.get()

    def put(self, message: ChatMessage) -> None:
        """Write a turn (a turn already seen last, like the reply the LLM just gave, is not written twice)."""
        self._engine.add_turns(self.agent_id, to_template([message]))

    def put_messages(self, messages: list[ChatMessage]) -> None:
        self._engine.add_turns(self.agent_id, to_template(messages))

    def set(self, messages: list[ChatMessage]) -> None:
        """Forget the agent, then write `messages` as its new history."""
        self.reset()
        self.put_messages(messages)

    def reset(self) -> None:
        """Destroy the agent's adapter and window."""
        self._engine.forget(self.agent_id)


class TemploraMemoryBlock(BaseMemoryBlock[str]):
    """A `llama_index.core.memory.Memory` block: turns flushed from short-term memory go into the adapter.

    The block inserts no text into the prompt: what it holds is in the weights the agent answers with.

    Example:
        >>> block = TemploraMemoryBlock(engine=llm, agent_id="npc-7")  # doctest: +SKIP
        >>> memory = Memory.from_defaults(token_limit=512, memory_blocks=[block])  # doctest: +SKIP
    """

    name: str = Field(default="temp_lora", description="The name of the memory block.")
    agent_id: str = Field(default="default", description="The agent whose adapter receives flushed turns.")
    _engine: MemoryEngine = PrivateAttr()

    def __init__(self, engine: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._engine = _engine_of(engine)

    async def _aget(self, messages: list[ChatMessage] | None = None, **block_kwargs: Any) -> str:
        return ""

    async def _aput(self, messages: list[ChatMessage]) -> None:
        """Write the flushed turns the agent's memory has not seen yet (trained chunk by chunk, on a worker thread
        so the event loop keeps running)."""
        await asyncio.to_thread(self._put, messages)

    def _put(self, messages: list[ChatMessage]) -> None:
        unseen = self._engine.unseen(self.agent_id, to_template(messages))
        if unseen:
            self._engine.add_turns(self.agent_id, unseen)
