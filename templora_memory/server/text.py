"""`POST /v1/completions`: raw text completed with an agent's adapter, as llama.cpp, Ollama and vLLM serve it.

The prompt is continued as plain text (no chat template), with the memory of the agent the `X-Agent-Id` header
(or `user`) names, or with the base model when none is named. Nothing is written: a completion reads memory.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from templora_memory.errors import TemploraError
from templora_memory.replies import Reply
from templora_memory.server.bridge import ClientGone, Deadline, LiveReply
from templora_memory.server.chat import SSE_HEADERS, agent_of
from templora_memory.server.completions import DONE, TextCall, sampling_of, sse, stop_strings, usage
from templora_memory.server.http_errors import ApiError, from_library
from templora_memory.server.schemas import CompletionRequest

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Response:
    """Complete `prompt` with the agent's adapter (streamed as server-sent events if asked)."""
    service = request.app.state.service
    engine = service.engine
    agent_id = await _reader(request, body.user, engine)
    prompt = _prompt(body)
    call = TextCall(engine.encode(prompt), sampling_of(body, engine), stop_strings(body.stop))
    if len(call.prompt) + call.sampling.max_new_tokens > engine.context_tokens:
        raise ApiError(
            400,
            f"the prompt ({len(call.prompt)} tokens) and max_tokens={call.sampling.max_new_tokens} exceed the "
            f"model's {engine.context_tokens}-token context; shorten the prompt or lower max_tokens",
            param="prompt",
        )
    live = LiveReply(service.scheduler, engine, agent_id, call, Deadline(service.timeout, request))
    text = TextCompletion(engine.model_name)
    try:
        if body.stream:
            with_usage = bool(body.stream_options and body.stream_options.include_usage)
            first = await live.next_piece()
            events = _events(live, text, first, with_usage)
            return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
        while await live.next_piece() is not None:
            pass
        reply = await live.reply()
    except ClientGone:
        return Response(status_code=499)
    except TemploraError as exc:
        raise from_library(exc, param=getattr(exc, "param", None)) from None
    return JSONResponse(text.body(reply))


async def _reader(request: Request, user: str | None, engine: Any) -> str | None:
    """The agent named (None: the base model); a name with no memory is a 404, never a new empty agent."""
    if request.headers.get("x-agent-id") is None and user is None:
        return None
    agent_id = agent_of(request, user)
    if not await asyncio.to_thread(engine.exists, agent_id):
        message = f"agent {agent_id[:80]!r} has no memory; GET /v1/agents lists the agents (or name none)"
        raise ApiError(404, message, param="agent_id", code="agent_not_found")
    return agent_id


def _prompt(body: CompletionRequest) -> str:
    """The one prompt of the request."""
    if isinstance(body.prompt, str):
        return body.prompt
    if len(body.prompt) != 1:
        raise ApiError(400, f"send one prompt per request, got {len(body.prompt)}", param="prompt")
    return body.prompt[0]


async def _events(live: LiveReply, text: TextCompletion, first: str | None, with_usage: bool) -> AsyncIterator[str]:
    """The stream: one `text_completion` chunk per piece, then the finish reason, the usage if asked, [DONE]."""
    try:
        piece = first
        while piece is not None:
            yield sse(text.chunk(piece, None, with_usage))
            piece = await live.next_piece(watch_client=False)
        reply: Reply = await live.reply()
        yield sse(text.chunk("", reply.finish_reason, with_usage))
        if with_usage:
            yield sse({**text.head(), "choices": [], "usage": usage(reply)})
    except ApiError as exc:
        yield sse(exc.body())
    except TemploraError as exc:
        yield sse(from_library(exc).body())
    finally:
        live.abandon()
    yield DONE


@dataclass(frozen=True)
class TextCompletion:
    """Identity of one completion: its id, creation time and the model that wrote it."""

    model: str
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))

    def head(self) -> dict[str, Any]:
        """The fields every object of this completion starts with."""
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model}

    def body(self, reply: Reply) -> dict[str, Any]:
        """OpenAI's `text_completion` object of a finished completion."""
        choice = {"index": 0, "text": reply.text, "logprobs": None, "finish_reason": reply.finish_reason}
        return {**self.head(), "system_fingerprint": None, "choices": [choice], "usage": usage(reply)}

    def chunk(self, piece: str, finish_reason: str | None, with_usage: bool) -> dict[str, Any]:
        """One streamed chunk (`usage: null` on each when usage is asked for)."""
        choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish_reason}
        chunk = {**self.head(), "choices": [choice]}
        return {**chunk, "usage": None} if with_usage else chunk
