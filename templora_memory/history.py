"""An agent's memory seen as a langchain-core `BaseChatMessageHistory`."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import BaseMessage

from templora_memory.engine import MemoryEngine
from templora_memory.langchain_messages import from_template, to_template


class AgentChatHistory(BaseChatMessageHistory):
    """`add_messages` writes turns into the agent's memory, `messages` is its current window, `clear` forgets it.

    Example:
        >>> history = memory.history("npc-7")  # doctest: +SKIP
        >>> history.add_messages([HumanMessage("The key is under the mat.")])  # doctest: +SKIP
    """

    def __init__(self, engine: MemoryEngine, agent_id: str) -> None:
        self.engine = engine
        self.agent_id = agent_id

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The turns the agent's next prompt would hold; older ones live only in its adapter."""
        if not self.engine.exists(self.agent_id):
            return []  # a new session starts empty
        return [from_template(m) for m in self.engine.window(self.agent_id)]

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Write the turns not seen before into the agent's memory (training every full chunk)."""
        self.engine.add_turns(self.agent_id, to_template(messages))

    def clear(self) -> None:
        """Forget the agent: its adapter and its window are destroyed."""
        self.engine.forget(self.agent_id)
