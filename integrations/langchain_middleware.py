"""`ParametricMemoryMiddleware`: a LangChain 1.x agent middleware that moves old turns into a Temp-Lora adapter.

The counterpart of LangChain's `SummarizationMiddleware`: when the agent's messages exceed the
window, the oldest ones leave the agent's state, and instead of a summary they are written into
the agent's LoRA adapter, where the model still knows them. Needs the `langchain` extra.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AnyMessage, RemoveMessage, SystemMessage, ToolMessage

try:
    from langchain.agents.middleware import AgentMiddleware, AgentState
    from langgraph.graph.message import REMOVE_ALL_MESSAGES
    from langgraph.runtime import Runtime
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(
        f"ParametricMemoryMiddleware needs the langchain extra ({exc.name} is missing): "
        'pip install "templora-memory[langchain]"',
        name=exc.name,
    ) from None

from templora_memory import InvalidInputError, MemoryEngine, ParametricMemory
from templora_memory.langchain_messages import to_template

__all__ = ["ParametricMemoryMiddleware"]


class ParametricMemoryMiddleware(AgentMiddleware):
    """Keep an agent's messages within the window by writing the oldest turns into its adapter.

    Before each model call, if the conversation renders to more than `trigger_tokens` tokens, the
    oldest messages are handed to the agent's memory (trained into its adapter chunk by chunk) and
    removed from the state until `keep_tokens` remain. An AI message with tool calls is never separated
    from its tool results, and system messages stay. Turns the memory has already seen (when the agent's
    model is the same `ParametricMemory` agent) are not written twice.

    Example:
        >>> from langchain.agents import create_agent  # doctest: +SKIP
        >>> memory = ParametricMemory(agent_id="npc-7")  # doctest: +SKIP
        >>> agent = create_agent(memory, middleware=[ParametricMemoryMiddleware(memory, "npc-7")])  # doctest: +SKIP
    """

    def __init__(
        self,
        memory: ParametricMemory | MemoryEngine,
        agent_id: str,
        *,
        trigger_tokens: int | None = None,
        keep_tokens: int | None = None,
    ) -> None:
        """Watch the messages of `agent_id`; defaults: trigger at the window (L_X), keep half of it."""
        super().__init__()
        self.engine = memory.engine if isinstance(memory, ParametricMemory) else memory
        self.agent_id = agent_id
        self.trigger_tokens = trigger_tokens or self.engine.config.window_tokens
        self.keep_tokens = keep_tokens if keep_tokens is not None else self.trigger_tokens // 2
        if not 0 <= self.keep_tokens <= self.trigger_tokens:
            raise InvalidInputError(
                f"keep_tokens={self.keep_tokens} must be between 0 and trigger_tokens={self.trigger_tokens}; "
                "lower keep_tokens or raise trigger_tokens"
            )

    def before_model(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        """Evict and write the oldest turns when the conversation is over `trigger_tokens`."""
        messages = list(state["messages"])
        sizes = self._sizes(messages)
        if sum(sizes) <= self.trigger_tokens:
            return None
        cutoff = safe_cutoff(messages, sizes, self.keep_tokens)
        evicted = [m for m in messages[:cutoff] if not isinstance(m, SystemMessage)]
        if not evicted:
            return None
        self._write(evicted)
        kept = [m for m in messages[:cutoff] if isinstance(m, SystemMessage)] + messages[cutoff:]
        return {"messages": [RemoveMessage(id=REMOVE_ALL_MESSAGES), *kept]}

    async def abefore_model(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        """Async agents run the same eviction on a worker thread, so training never blocks the event loop."""
        return await asyncio.to_thread(self.before_model, state, runtime)

    def _sizes(self, messages: Sequence[AnyMessage]) -> list[int]:
        """Tokens each message takes in the prompt, rendered by the model's chat template."""
        return self.engine.turn_tokens(to_template(messages))

    def _write(self, evicted: Sequence[AnyMessage]) -> None:
        """Hand the evicted turns the memory has not seen yet to the agent's adapter."""
        unseen = self.engine.unseen(self.agent_id, to_template(evicted))
        if unseen:
            self.engine.add_turns(self.agent_id, unseen)


def safe_cutoff(messages: Sequence[AnyMessage], sizes: Sequence[int], keep_tokens: int) -> int:
    """Index before which messages leave the state: the rest fits in `keep_tokens`, no tool call is split.

    The newest message always stays. A cut landing on tool results moves past them (their AI call
    leaves too); when that would leave nothing, it moves back before the AI call instead.
    """
    cutoff, kept = len(messages), 0
    while cutoff > 1 and kept + sizes[cutoff - 1] <= keep_tokens:
        cutoff -= 1
        kept += sizes[cutoff]
    cutoff = min(cutoff, len(messages) - 1)
    forward = cutoff
    while forward < len(messages) and isinstance(messages[forward], ToolMessage):
        forward += 1
    if forward < len(messages):
        return forward
    while cutoff > 0 and isinstance(messages[cutoff], ToolMessage):
        cutoff -= 1  # lands on the AI message that made the calls: it stays with its results
    return cutoff
