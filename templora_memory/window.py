"""L_X, the prompt window: which of an agent's newest whole turns fit its prompt, and which turns no window can
hold any more (written ones are let go of; hybrid recall keeps their text in the archive)."""

from __future__ import annotations

from collections.abc import Sequence

from templora_memory.conversation import Conversation
from templora_memory.errors import InvalidInputError
from templora_memory.message import Message, Turn
from templora_memory.rendering import ChatRenderer
from templora_memory.tools import ToolSchema


class PromptWindow:
    """L_X: which of the newest whole turns fit the prompt next to the system message (and tools)."""

    def __init__(self, renderer: ChatRenderer, window_tokens: int, archive: bool = False) -> None:
        """`archive`: turns let go of keep their text in the conversation's archive (for hybrid recall)."""
        self.renderer = renderer
        self.window_tokens = window_tokens
        self.archive = archive

    def turns(self, talk: Conversation, tools: list[ToolSchema] | None = None) -> list[Turn]:
        """The conversation's turns that its next prompt holds, next to its system message (and `tools`)."""
        return talk.turns[self.start(talk.system, talk.turns, tools) :]

    def let_go(self, talk: Conversation) -> None:
        """Drop the written turns that no window can hold any more, even one with no system message or tools."""
        talk.drop_before(window_start(talk.sizes, self.window_tokens), archive=self.archive)

    def render(self, messages: Sequence[Message], previous: Message | None) -> list[Turn]:
        """Messages as turns following `previous`; a turn longer than the window is refused (nothing is rendered)."""
        turns = self.renderer.turns(messages, previous)
        for turn in turns:
            if len(turn.tokens) > self.window_tokens:
                raise InvalidInputError(
                    f"a {turn.message['role']} message of {len(turn.tokens)} tokens is longer than window_tokens="
                    f"{self.window_tokens}; shorten it, raise window_tokens, or write long text with absorb()"
                )
        return turns

    def start(self, system: Sequence[Message], turns: Sequence[Turn], tools: list[ToolSchema] | None = None) -> int:
        """Index of the oldest turn in the window: the prompt, headers and tools included, fits in L_X."""
        # a first guess from the fixed overhead; the loop below is exact
        overhead = len(self.renderer.prompt(system, [], tools)) if system else 0
        start = window_start([len(turn.tokens) for turn in turns], self.window_tokens - overhead)
        while start < len(turns) and len(self.renderer.prompt(system, turns[start:], tools)) > self.window_tokens:
            start += 1
        if turns and start >= len(turns):
            raise InvalidInputError(
                f"the newest turn does not fit in window_tokens={self.window_tokens} next to the system "
                f"message and tools ({overhead} tokens); raise window_tokens or shorten the system message"
            )
        return start


def window_start(sizes: Sequence[int], budget: int) -> int:
    """Index of the oldest turn (of these token sizes) such that the turns from it on fit in `budget` tokens
    (whole turns only); `len(sizes)` when not even the newest turn fits."""
    used = 0
    for index in range(len(sizes) - 1, -1, -1):
        used += sizes[index]
        if used > budget:
            return index + 1
    return 0
