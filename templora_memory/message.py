"""The engine's message type: chat-template dicts, their checks, their tokens in a conversation, and identity."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from templora_memory.errors import InvalidInputError

Message = dict[str, Any]
"""A chat-template message: {"role": ..., "content": ...} plus optional tool fields."""
ROLES = ("system", "user", "assistant", "tool")


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


def said_by_assistant(turns: Sequence[Turn]) -> tuple[int, ...]:
    """The tokens of the assistant's turns: what a chat reply's repetition penalty counts besides the reply itself."""
    return tuple(token for turn in turns if turn.message.get("role") == "assistant" for token in turn.tokens)


def split_system(messages: Sequence[Message]) -> tuple[list[Message], list[Message]]:
    """System messages (kept out of memory, always in the prompt) and conversation turns."""
    system = [m for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    if len(system) > 1:
        system = [{"role": "system", "content": "\n\n".join(str(m["content"]) for m in system)}]
    return system, turns


def check_messages(messages: object) -> None:
    """Messages must be chat-template dicts with a known role; empty content is allowed (tool-call turns)."""
    if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, Sequence):
        raise InvalidInputError(
            f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InvalidInputError(
                f"message {index} must be a dict with a role among {ROLES}, got {str(message)[:60]!r}"
            )
        if not isinstance(message.get("content", ""), (str, list)):
            raise InvalidInputError(
                f"message {index} has content of type {type(message['content']).__name__}; pass text"
            )


def check_text(text: object) -> str:
    """A text to absorb must be a non-empty string."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError("absorb() needs a non-empty string of text to write into the agent's memory")
    return text
