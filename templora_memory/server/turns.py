"""Routes to inspect and correct an agent's memory, under /v1/agents/{agent_id}: its ledger, turns forgotten, and
what its adapter recalls.

`GET .../turns` pages through the ledger (`after` a turn id, `limit` turns); `DELETE .../turns/{turn_id}` forgets one
turn and `DELETE .../turns?matching=text` every turn containing the text; `PATCH .../turns/{turn_id}` with
`{"content": ...}` corrects a turn (the new text told as a new turn, the old one forgotten); `GET .../recalls` scores
the facts the user stated against the adapter. Each runs through the scheduler, in order with the agent's
replies. A deletion answers once the turns are gone from the window, the archive, the ledger and the store; the
adapter's rebuild goes on in the background (the agent's stats show `rebuilding`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request

from templora_memory.errors import UnknownAgentError, UnknownTurnError
from templora_memory.server.agents import not_found, run_for_agent
from templora_memory.server.chat import checked_agent_id
from templora_memory.server.http_errors import ApiError
from templora_memory.server.schemas import Correction

router = APIRouter(prefix="/v1/agents")
PAGE = 100
"""Turns a page holds unless `limit` says otherwise."""
MAX_PAGE = 1000
"""Most turns one page holds."""


@router.get("/{agent_id}/turns")
async def list_turns(agent_id: str, request: Request, after: str | None = None, limit: str | None = None) -> dict:
    """One page of the agent's ledger, oldest first: the turns after the id `after`, `limit` of them."""
    engine = request.app.state.service.engine
    checked_agent_id(agent_id, "agent_id")
    start = _integer(after, "after", 0) if after is not None else None
    size = _integer(limit, "limit", 1, MAX_PAGE) if limit is not None else PAGE
    turns = await run_for_agent(
        request, agent_id, "turns", lambda stop: _found(lambda: engine.turns(agent_id, start, size + 1))
    )
    data = [{"object": "agent.turn", **turn.model_dump()} for turn in turns[:size]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(turns) > size,
    }


@router.delete("/{agent_id}/turns/{turn_id}")
async def forget_turn(agent_id: str, turn_id: str, request: Request) -> dict:
    """Forget one turn for good; the adapter is rebuilt without it in the background."""
    engine = request.app.state.service.engine
    checked_agent_id(agent_id, "agent_id")
    number = _integer(turn_id, "turn_id", 0)
    done = await run_for_agent(
        request, agent_id, "forget_turns", lambda stop: _found(lambda: engine.forget_turns(agent_id, [number]))
    )
    return {"id": number, "object": "agent.turn.deleted", **done.model_dump(exclude={"deleted"}), "deleted": True}


@router.patch("/{agent_id}/turns/{turn_id}")
async def correct_turn(agent_id: str, turn_id: str, body: Correction, request: Request) -> dict:
    """Correct one turn: its new text is told as a new turn by the same speaker and the old one forgotten for good."""
    engine = request.app.state.service.engine
    checked_agent_id(agent_id, "agent_id")
    number = _integer(turn_id, "turn_id", 0)
    done = await run_for_agent(
        request,
        agent_id,
        "correct_turn",
        lambda stop: _found(lambda: engine.correct_turn(agent_id, number, body.content)),
    )
    return {"id": number, "object": "agent.turn.corrected", **done.model_dump()}


@router.delete("/{agent_id}/turns")
async def forget_matching(agent_id: str, request: Request, matching: str | None = None) -> dict:
    """Forget every turn whose text contains `matching` (case-insensitive); none matching forgets nothing."""
    engine = request.app.state.service.engine
    checked_agent_id(agent_id, "agent_id")
    if matching is None or not matching.strip():
        message = "name what to forget: DELETE .../turns?matching=<text> (or DELETE .../turns/{turn_id})"
        raise ApiError(400, message, param="matching")
    done = await run_for_agent(
        request, agent_id, "forget_turns", lambda stop: _found(lambda: engine.forget_turns(agent_id, (), matching))
    )
    return {"object": "agent.turns.deleted", **done.model_dump()}


@router.get("/{agent_id}/recalls")
async def recalls(agent_id: str, request: Request, limit: str | None = None) -> dict:
    """The user's newest statements asked of the agent's adapter alone, each answered, likely or lost."""
    engine = request.app.state.service.engine
    checked_agent_id(agent_id, "agent_id")
    count = _integer(limit, "limit", 1, 256) if limit is not None else 16

    def work(stop: object) -> tuple[list, bool]:
        """On a worker: score, and say whether a rebuild was under way (then no adapter answered)."""
        found = _found(lambda: engine.recalls(agent_id, count))
        return found, engine.stats(agent_id).rebuilding

    found, rebuilding = await run_for_agent(request, agent_id, "recalls", work)
    data = [{"object": "agent.recall", **recall.model_dump()} for recall in found]
    return {"object": "list", "data": data, "rebuilding": rebuilding}


def _found(call: Callable[[], Any]) -> Any:
    """`call()`, answering 404 for an agent with no memory or a turn its ledger does not hold."""
    try:
        return call()
    except UnknownAgentError as exc:
        raise not_found(exc) from None
    except UnknownTurnError as exc:
        raise ApiError(404, str(exc), param="turn_id", code="turn_not_found") from None


def _integer(value: str, name: str, low: int, high: int | None = None) -> int:
    """A whole number from a path or query parameter, in [low, high]; else a 400 naming the parameter."""
    bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
    if not value.isdigit() or int(value) < low or (high is not None and int(value) > high):
        raise ApiError(400, f"'{name}' must be a whole number {bound}, got {value[:40]!r}", param=name)
    return int(value)
