"""The engine's message type: chat-template dicts, their tokens in a conversation, and their identity."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

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
