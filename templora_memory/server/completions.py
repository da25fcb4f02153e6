"""From an OpenAI chat-completions request to one `MemoryEngine.respond` call, and from its `Reply` back to JSON.

Pure mapping, no I/O. Messages keep only what the engine remembers (role, content, tool calls with their
arguments parsed, tool_call_id), so a client sending back the reply it got sends the very turn the agent
remembered, and the engine recognises it as seen.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from templora_memory.constrained import ANY_OBJECT, closed
from templora_memory.engine import MemoryEngine
from templora_memory.errors import InvalidInputError
from templora_memory.generation import CHAT_REPETITION_PENALTY, Sampling
from templora_memory.message import Message
from templora_memory.offer import ToolOffer
from templora_memory.replies import Reply, ReplyStream
from templora_memory.server.http_errors import ApiError
from templora_memory.server.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    NamedToolChoice,
    ResponseFormat,
    ToolCall,
)

MAX_STOP_STRINGS = 4
"""OpenAI's limit on `stop`."""


@dataclass(frozen=True)
class ReplyCall:
    """The arguments of `MemoryEngine.respond` for one request."""

    messages: list[Message]
    sampling: Sampling
    stop: tuple[str, ...]
    offer: ToolOffer

    def start(self, engine: MemoryEngine, agent_id: str | None) -> ReplyStream:
        """Write the new turns and start the reply (on the worker that will stream it)."""
        return engine.respond(agent_id, self.messages, self.sampling, self.stop, self.offer)


@dataclass(frozen=True)
class TextCall:
    """The arguments of `MemoryEngine.stream_completion` for one `/v1/completions` request (nothing is written)."""

    prompt: list[int]
    sampling: Sampling
    stop: tuple[str, ...]

    def start(self, engine: MemoryEngine, agent_id: str | None) -> ReplyStream:
        """Start completing the prompt with the agent's adapter (None: the base model)."""
        return engine.stream_completion(agent_id, self.prompt, self.sampling, self.stop)


def prepare(request: ChatCompletionRequest, engine: MemoryEngine) -> ReplyCall:
    """Map a validated request onto the engine; a value the engine cannot honour is an `ApiError` (400)."""
    return ReplyCall(
        messages=[_engine_message(message, index) for index, message in enumerate(request.messages)],
        sampling=sampling_of(request, engine),
        stop=stop_strings(request.stop),
        offer=_offer(request, engine),
    )


def _engine_message(message: ChatMessage, index: int) -> Message:
    """A chat-template message ("developer" is OpenAI's newer name for "system")."""
    converted: Message = {"role": "system" if message.role == "developer" else message.role, "content": message.text()}
    if message.role == "assistant" and message.tool_calls:
        converted["tool_calls"] = [
            _engine_call(call, f"messages.[{index}].tool_calls.[{j}].function.arguments")
            for j, call in enumerate(message.tool_calls)
        ]
    if message.role == "tool":
        converted["tool_call_id"] = message.tool_call_id
    return converted


def _engine_call(call: ToolCall, param: str) -> dict[str, Any]:
    """A tool call with its JSON-string arguments parsed, as the engine remembers calls."""
    try:
        arguments = json.loads(call.function.arguments)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"'{param}' is not valid JSON ({exc.msg})", param=param) from None
    if not isinstance(arguments, dict):
        raise ApiError(400, f"'{param}' must be a JSON object", param=param)
    return {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}}


def sampling_of(request: ChatCompletionRequest | CompletionRequest, engine: MemoryEngine) -> Sampling:
    """Reply length and sampling; greedy unless a temperature is given."""
    param = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
    wanted = request.max_completion_tokens or request.max_tokens or engine.config.max_new_tokens
    limit = engine.context_tokens - engine.config.window_tokens
    if wanted > limit:
        raise ApiError(
            400,
            f"{param}={wanted} does not fit after a full prompt window: at most {limit} "
            f"(the model's {engine.context_tokens}-token context minus window_tokens={engine.config.window_tokens})",
            param=param,
        )
    return Sampling(
        max_new_tokens=wanted,
        temperature=request.temperature if request.temperature is not None else 0.0,
        top_p=request.top_p if request.top_p is not None else 1.0,
        repetition_penalty=request.repetition_penalty or CHAT_REPETITION_PENALTY,
        seed=request.seed,
    )


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    """`stop` as a tuple of non-empty strings (at most four, as OpenAI allows)."""
    strings = [stop] if isinstance(stop, str) else list(stop or [])
    if len(strings) > MAX_STOP_STRINGS:
        raise ApiError(400, f"'stop' takes at most {MAX_STOP_STRINGS} strings, got {len(strings)}", param="stop")
    return tuple(s for s in strings if s)


def _offer(request: ChatCompletionRequest, engine: MemoryEngine) -> ToolOffer:
    """Tools, tool choice and response format as the engine's `ToolOffer` (the same one every front end uses)."""
    tools = [tool.model_dump(exclude_none=True, exclude={"function": {"strict"}}) for tool in request.tools or []]
    choice = request.tool_choice
    if choice is not None and not tools:
        raise ApiError(400, "'tool_choice' is only allowed when 'tools' are given", param="tool_choice")
    choice = choice.model_dump() if isinstance(choice, NamedToolChoice) else choice
    response_format = _response_format(request.response_format)
    try:
        return ToolOffer.of(tools or None, choice, response_format, engine.tokenizer.chat_template)
    except InvalidInputError as exc:
        fallback = "tool_choice" if response_format is None else "response_format"
        raise ApiError(400, str(exc), param=exc.param or fallback) from None


def _response_format(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    """None (free text), {"type": "json_object"}, or the JSON schema the reply must satisfy (closed to extra keys)."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {"type": "json_object"}
    return closed(response_format.json_schema.schema_ or ANY_OBJECT)


# ----- responses ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    """Identity of one response: its id, creation time and the model that wrote it."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))

    def body(self, reply: Reply) -> dict[str, Any]:
        """The `chat.completion` object of a finished reply."""
        choice = {"index": 0, "message": assistant_message(reply), "logprobs": None, "finish_reason": finish(reply)}
        return {**self._head("chat.completion"), "choices": [choice], "usage": usage(reply)}

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None, with_usage: bool = False) -> str:
        """One `chat.completion.chunk` server-sent event (`usage: null` on each when usage is asked for)."""
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk = {**self._head("chat.completion.chunk"), "choices": [choice]}
        return sse({**chunk, "usage": None} if with_usage else chunk)

    def closing_chunks(self, reply: Reply, with_usage: bool) -> list[str]:
        """After the text: the tool calls (one delta each), the finish reason, and the usage if asked for."""
        events = [
            self.chunk({"tool_calls": [{"index": i, **call}]}, with_usage=with_usage)
            for i, call in enumerate(openai_calls(reply.tool_calls))
        ]
        events.append(self.chunk({}, finish(reply), with_usage))
        if with_usage:
            events.append(sse({**self._head("chat.completion.chunk"), "choices": [], "usage": usage(reply)}))
        return events

    def _head(self, kind: str) -> dict[str, Any]:
        """The fields every response object of this completion starts with."""
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "system_fingerprint": None}


def assistant_message(reply: Reply) -> dict[str, Any]:
    """The reply as OpenAI's assistant message (content null when the reply is only tool calls)."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
    if reply.tool_calls:
        message["content"] = reply.content or None
        message["tool_calls"] = openai_calls(reply.tool_calls)
    return message


def openai_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The engine's calls with their arguments as JSON strings, as OpenAI sends them."""
    return [
        {
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": json.dumps(call["function"]["arguments"])},
        }
        for call in calls
    ]


def finish(reply: Reply) -> str:
    """OpenAI's finish_reason: "tool_calls" when calls came back, else "stop" or "length"."""
    return "tool_calls" if reply.tool_calls else reply.finish_reason


def usage(reply: Reply) -> dict[str, int]:
    """OpenAI's usage object: prompt, completion and total tokens."""
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def sse(payload: dict[str, Any]) -> str:
    """One server-sent event carrying `payload` as JSON."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"
"""The event that ends every stream."""
