"""The prompt window: conversation turns rendered with the chat template, and the most recent ones that fit L_X."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from templora_memory.tools import as_text_turns, supports_tools

Message = dict[str, Any]
"""A chat-template message: {"role": ..., "content": ...} plus optional tool fields."""


@dataclass(frozen=True)
class Turn:
    """One conversation message and its tokens exactly as the chat template renders it in a conversation."""

    message: Message
    tokens: tuple[int, ...]
    fingerprint: str = field(compare=False)


def fingerprint(message: Message) -> str:
    """A stable identity for a message, used to recognise turns a caller sends again."""
    payload = json.dumps(message, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class ChatRenderer:
    """Turns messages into token ids with the tokenizer's own chat template.

    A template that renders no tools gets tools, tool calls and tool results written into the message
    text in the Hermes format (`templora_memory.tools.as_text_turns`).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.native_tools = supports_tools(tokenizer.chat_template)

    def turn(self, message: Message, previous: Message | None) -> Turn:
        """Render `message` as it appears after `previous` in a conversation (the template's per-turn tokens)."""
        anchor = [previous] if previous is not None else [{"role": "system", "content": ""}]
        before = self._text(anchor)
        after = self._text([*anchor, message])
        text = after[len(before) :] if after.startswith(before) else self._text([message])
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return Turn(message=message, tokens=tuple(ids), fingerprint=fingerprint(message))

    def prompt(self, system: Sequence[Message], turns: Sequence[Turn], tools: list[dict] | None = None) -> list[int]:
        """Token ids of system + turns, ending with the template's assistant header (ready to generate)."""
        messages = [*system, *(turn.message for turn in turns)]
        text = self._text(messages, add_generation_prompt=True, tools=tools)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def reply(
        self, system: Sequence[Message], messages: Sequence[Message], reply: Message
    ) -> tuple[list[int], list[int]]:
        """Token ids of the prompt before `reply` (generation header included) and of `reply` as the template ends it.

        A template that does not render the conversation as prompt + reply gets the reply's text and eos.
        """
        before = self._text([*system, *messages], add_generation_prompt=True)
        after = self._text([*system, *messages, reply])
        text = after[len(before) :] if after.startswith(before) else f"{reply['content']}{self.tokenizer.eos_token}"
        prompt_ids = self.tokenizer(before, add_special_tokens=False)["input_ids"]
        return prompt_ids, self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _text(
        self, messages: Sequence[Message], add_generation_prompt: bool = False, tools: list[dict] | None = None
    ) -> str:
        if not self.native_tools:
            messages, tools = as_text_turns(list(messages), tools), None
        return self.tokenizer.apply_chat_template(
            list(messages), tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
        )


def window_start(turns: Sequence[Turn], budget: int) -> int:
    """Index of the oldest turn such that turns[index:] fit in `budget` tokens (whole turns only).

    Returns `len(turns)` when not even the newest turn fits.
    """
    used = 0
    for index in range(len(turns) - 1, -1, -1):
        used += len(turns[index].tokens)
        if used > budget:
            return index + 1
    return 0
