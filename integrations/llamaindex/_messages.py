"""LlamaIndex `ChatMessage` ↔ chat-template dicts (the engine's message form)."""

from __future__ import annotations

from collections.abc import Sequence

from llama_index.core.base.llms.types import ChatMessage, MessageRole

from templora_memory.message import Message


def to_template(messages: Sequence[ChatMessage]) -> list[Message]:
    """LlamaIndex messages → chat-template dicts (role and text; tool results keep their call id)."""
    converted = []
    for message in messages:
        role = message.role.value if isinstance(message.role, MessageRole) else str(message.role)
        item: Message = {"role": role, "content": message.content or ""}
        if role == "tool" and "tool_call_id" in message.additional_kwargs:
            item["tool_call_id"] = message.additional_kwargs["tool_call_id"]
        converted.append(item)
    return converted


def from_template(message: Message) -> ChatMessage:
    """A chat-template dict → LlamaIndex `ChatMessage`."""
    return ChatMessage(role=message["role"], content=message.get("content") or "")
