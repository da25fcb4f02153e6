"""Conversion between langchain-core messages and chat-template message dicts."""

from __future__ import annotations

import json
from collections.abc import Sequence

from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage

from templora_memory.errors import InvalidInputError
from templora_memory.message import Message

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


def to_template(messages: Sequence[BaseMessage]) -> list[Message]:
    """LangChain messages → chat-template dicts (role, content, and tool fields when present)."""
    return [_to_template(message) for message in messages]


def _to_template(message: BaseMessage) -> Message:
    if not isinstance(message, BaseMessage):
        raise InvalidInputError(
            f"expected LangChain messages (HumanMessage, AIMessage, ...), got {type(message).__name__}: {message!r:.60}"
        )
    role = message.role if isinstance(message, ChatMessage) else _ROLES.get(message.type)
    if role is None:
        raise InvalidInputError(
            f"unsupported message type '{message.type}'; use system, human, ai, tool or chat messages"
        )
    converted: Message = {"role": role, "content": _text(message.content)}
    if isinstance(message, AIMessage) and message.tool_calls:
        converted["tool_calls"] = [
            {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["args"]}}
            for call in message.tool_calls
        ]
    if isinstance(message, ToolMessage):
        converted["tool_call_id"] = message.tool_call_id
    return converted


def _text(content: str | list) -> str:
    """Flatten LangChain content (a string or a list of blocks) to the text the template renders."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(block.get("text", ""))
        elif isinstance(block, dict) and block.get("type") in ("tool_use", "tool_call"):
            continue  # an AI message's call block; the call itself travels in `tool_calls`
        else:
            raise InvalidInputError(
                f"only text content is supported, got a {block.get('type', type(block).__name__)!r} block"
            )
    return "".join(parts)


def from_template(message: Message) -> BaseMessage:
    """A chat-template dict → the LangChain message of the same role."""
    role, content = message["role"], message.get("content") or ""
    if role == "user":
        return HumanMessage(content)
    if role == "assistant":
        calls = [
            {"id": c.get("id"), "name": c["function"]["name"], "args": _args(c["function"]["arguments"])}
            for c in message.get("tool_calls", [])
        ]
        return AIMessage(content, tool_calls=calls)
    if role == "tool":
        return ToolMessage(content, tool_call_id=message.get("tool_call_id", ""))
    if role == "system":
        return SystemMessage(content)
    return ChatMessage(content=content, role=role)


def _args(arguments: str | dict) -> dict:
    return json.loads(arguments) if isinstance(arguments, str) else dict(arguments)
