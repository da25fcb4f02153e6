"""LlamaIndex `ChatMessage` ↔ chat-template dicts (the engine's message form), tool calls and results included.

LlamaIndex carries an assistant's calls OpenAI-style, in `additional_kwargs["tool_calls"]` as
{"id", "type": "function", "function": {"name", "arguments": JSON text}}, and a tool result's call id in
`additional_kwargs["tool_call_id"]`. The chat template takes the arguments as a dict.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole

from templora_memory.message import Message


def to_template(messages: Sequence[ChatMessage]) -> list[Message]:
    """LlamaIndex messages → chat-template dicts (role, text, and tool calls or a tool result's call id)."""
    return [_to_template(message) for message in messages]


def _to_template(message: ChatMessage) -> Message:
    """One message; an assistant message the LLM gave converts back to exactly the turn the engine remembered."""
    role = message.role.value if isinstance(message.role, MessageRole) else str(message.role)
    extra = message.additional_kwargs
    item: Message = {"role": role, "content": message.content or ""}
    if role == "assistant" and extra.get("tool_calls"):
        item["tool_calls"] = [_template_call(call) for call in extra["tool_calls"]]
    if role == "tool" and "tool_call_id" in extra:
        item["tool_call_id"] = extra["tool_call_id"]
    return item


def from_template(message: Message) -> ChatMessage:
    """A chat-template dict → LlamaIndex `ChatMessage` (calls and call ids in `additional_kwargs`)."""
    extra: dict[str, Any] = {}
    if message.get("tool_calls"):
        extra["tool_calls"] = [_openai_call(call) for call in message["tool_calls"]]
    if "tool_call_id" in message:
        extra["tool_call_id"] = message["tool_call_id"]
    return ChatMessage(role=message["role"], content=message.get("content") or "", additional_kwargs=extra)


def call_arguments(call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-style call's arguments as a dict (they travel as JSON text; a dict is copied)."""
    arguments = call["function"]["arguments"]
    return json.loads(arguments) if isinstance(arguments, str) else dict(arguments)


def _template_call(call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-style call → the chat template's form (arguments as a dict)."""
    function = {"name": call["function"]["name"], "arguments": call_arguments(call)}
    return {"id": call["id"], "type": "function", "function": function}


def _openai_call(call: dict[str, Any]) -> dict[str, Any]:
    """A chat template's call → the OpenAI-style form (arguments as JSON text)."""
    function = {"name": call["function"]["name"], "arguments": json.dumps(call["function"]["arguments"])}
    return {"id": call["id"], "type": "function", "function": function}
