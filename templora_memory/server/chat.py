"""`POST /v1/chat/completions` and `GET /v1/models`, as OpenAI defines them.

The agent is named by the `X-Agent-Id` header (percent-encoded UTF-8, like a URL path), or by the body's
`user` field when there is no header. A request may send the whole history or only its new turns: turns the
agent has seen are recognised and not written twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from templora_memory.agent import check_agent_id
from templora_memory.errors import InvalidInputError, TemploraError
from templora_memory.replies import Reply
from templora_memory.server.bridge import ClientGone, Deadline, LiveReply
from templora_memory.server.completions import DONE, Completion, prepare, sse
from templora_memory.server.http_errors import ApiError, from_library
from templora_memory.server.schemas import ChatCompletionRequest

log = logging.getLogger("templora_memory.server")
router = APIRouter()
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """Write the request's new turns into the agent's memory and reply (streamed as server-sent events if asked)."""
    service = request.app.state.service
    agent_id = agent_of(request, body.user)
    call = prepare(body, service.engine)
    service.check_backlog(agent_id)
    live = LiveReply(service.scheduler, service.engine, agent_id, call, Deadline(service.timeout, request))
    completion = Completion(service.engine.model_name)
    started = time.perf_counter()
    try:
        first = await live.next_piece()  # queued, then the first text: bad input still gets its 4xx
        reply = await live.reply() if first is None else None
        if body.stream:
            with_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _events(live, completion, first, reply, with_usage, started)
            return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
        while reply is None and await live.next_piece() is not None:
            pass
        reply = reply or await live.reply()
    except ClientGone:
        log.info("agent=%r client left before the reply was complete; the reply is not remembered", agent_id)
        return Response(status_code=499)
    except TemploraError as exc:
        raise from_library(exc, param=getattr(exc, "param", None)) from None
    _log_reply(agent_id, reply, started, stream=False)
    return JSONResponse(completion.body(reply), headers={"Server-Timing": live.job.timing()})


async def _events(
    live: LiveReply, completion: Completion, first: str | None, reply: Reply | None, with_usage: bool, started: float
) -> AsyncIterator[str]:
    """The stream: the role with the first piece, one chunk per piece, then calls, finish reason, usage, [DONE].

    A client that disconnects cancels this generator: `abandon` then stops the reply at its next piece.
    """
    try:
        yield completion.chunk({"role": "assistant", "content": first or ""}, with_usage=with_usage)
        while reply is None and (piece := await live.next_piece(watch_client=False)) is not None:
            yield completion.chunk({"content": piece}, with_usage=with_usage)
        reply = reply or await live.reply()
        for event in completion.closing_chunks(reply, with_usage):
            yield event
        _log_reply(live.agent_id, reply, started, stream=True)
    except ApiError as exc:  # headers are sent: the error travels as an event, as OpenAI streams errors
        yield sse(exc.body())
    except TemploraError as exc:
        yield sse(from_library(exc, param=getattr(exc, "param", None)).body())
    finally:
        live.abandon()
    yield DONE


def agent_of(request: Request, user: str | None) -> str:
    """The agent a request names: the `X-Agent-Id` header (percent-decoded), else the `user` field."""
    return named_agent(request.headers.get("x-agent-id"), user)


def named_agent(header: str | None, user: str | None) -> str:
    """The agent named by an `X-Agent-Id` header value (percent-encoded UTF-8), else by the `user` field; a 400
    saying why when neither names a valid one (the one reading of agent ids, also for Ray's router)."""
    param = "X-Agent-Id" if header is not None else "user"
    try:
        agent_id = unquote(header, errors="strict") if header is not None else user
    except UnicodeDecodeError:
        raise ApiError(400, "X-Agent-Id is not percent-encoded UTF-8", param=param, code="invalid_agent_id") from None
    if agent_id is None:
        message = "name the agent: send the header 'X-Agent-Id: <id>' (or the 'user' field); each agent has its memory"
        raise ApiError(400, message, param="X-Agent-Id", code="missing_agent_id")
    return checked_agent_id(agent_id, param)


def checked_agent_id(agent_id: str, param: str) -> str:
    """The id, if the engine accepts it (it names memories on disk); else a 400 saying why."""
    try:
        check_agent_id(agent_id)
    except InvalidInputError as exc:
        raise ApiError(400, str(exc), param=param, code="invalid_agent_id") from None
    return agent_id


def _log_reply(agent_id: str, reply: Reply, started: float, stream: bool) -> None:
    """One info line per reply: sizes and timing, never contents."""
    log.info(
        "agent=%r stream=%s prompt_tokens=%d completion_tokens=%d finish=%s calls=%d seconds=%.2f",
        agent_id,
        stream,
        reply.prompt_tokens,
        reply.completion_tokens,
        reply.finish_reason,
        len(reply.tool_calls),
        time.perf_counter() - started,
    )


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    """The one model this server runs."""
    return {"object": "list", "data": [_model(request)]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict:
    """The served model, by any name: as chat and completions accept any `model` and answer with the one model
    this server runs (each response names it), so does this route."""
    return _model(request)


def _model(request: Request) -> dict:
    """OpenAI's model object for the engine's model."""
    service = request.app.state.service
    return {"id": service.engine.model_name, "object": "model", "created": service.started, "owned_by": "templora"}
