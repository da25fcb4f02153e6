"""Memory routes under /v1/agents: list, stats, forget, absorb a text, export and import an agent.

Everything that changes an agent goes through the scheduler, so it runs in order with the agent's replies.
`absorb` answers 202 at once and trains in the background; its progress shows in the agent's stats
(`absorbing`, `tokens_pending` falling, `tokens_written` rising). Export is a .tar.gz of the agent's
plain peft adapter files and state; import takes such an archive.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from templora_memory.agent import AgentStats
from templora_memory.engine import MemoryEngine
from templora_memory.errors import InvalidInputError, StoreError, TemploraError, UnknownAgentError
from templora_memory.server.bridge import Deadline, submit, wait_job
from templora_memory.server.chat import checked_agent_id
from templora_memory.server.http_errors import ApiError, from_library
from templora_memory.server.scheduler import ShuttingDown
from templora_memory.server.schemas import AbsorbRequest

log = logging.getLogger("templora_memory.server")
router = APIRouter(prefix="/v1/agents")


@router.get("")
async def list_agents(request: Request) -> dict:
    """Every agent with a memory, in RAM or in the store; agents whose files are damaged are left out and listed
    under "damaged" by their store folder (their ids are in the damaged files)."""
    engine = request.app.state.service.engine
    ids = await asyncio.to_thread(engine.agent_ids)
    resident = set(engine.resident_ids())
    damaged = [
        {"key": key, "error": "its files in the store are damaged; the log names them"}
        for key in engine.damaged_agents()
    ]
    return {
        "object": "list",
        "data": [{"id": i, "object": "agent", "resident": i in resident} for i in ids],
        "damaged": damaged,
    }


@router.get("/{agent_id}")
async def agent_stats(agent_id: str, request: Request) -> dict:
    """The agent's memory counters and whether an absorb is under way; 404 for an agent with no memory."""
    service = request.app.state.service
    checked_agent_id(agent_id, "agent_id")
    try:
        stats = await asyncio.to_thread(service.engine.stats, agent_id)
    except UnknownAgentError as exc:
        raise not_found(exc) from None
    return agent_body(service, stats)


@router.delete("/{agent_id}")
async def forget_agent(agent_id: str, request: Request) -> dict:
    """Destroy the agent's adapter and state, in RAM and in the store; 404 for an agent with no memory."""
    service = request.app.state.service
    checked_agent_id(agent_id, "agent_id")
    deleted = await run_for_agent(request, agent_id, "forget", lambda stop: service.engine.forget(agent_id))
    service.absorb_errors.pop(agent_id, None)
    if not deleted:
        raise not_found(UnknownAgentError(f"agent {agent_id[:80]!r} has no memory to delete"))
    return {"id": agent_id, "object": "agent.deleted", "deleted": True}


def not_found(exc: UnknownAgentError) -> ApiError:
    """404 for an agent with no memory (GET /v1/agents lists the agents that have one)."""
    return ApiError(404, f"{exc}; GET /v1/agents lists the agents", param="agent_id", code="agent_not_found")


@router.post("/{agent_id}/absorb", status_code=202)
async def absorb_text(agent_id: str, body: AbsorbRequest, request: Request) -> dict:
    """Queue a long text to train into the agent's adapter; answers at once (progress: GET the agent)."""
    service = request.app.state.service
    checked_agent_id(agent_id, "agent_id")
    if not body.text.strip():
        raise ApiError(400, "'text' is blank; send the text to write into the agent's memory", param="text")
    job = submit(service.scheduler, agent_id, "absorb", lambda stop: service.engine.absorb(agent_id, body.text, False))
    job.future.add_done_callback(lambda done: _absorbed(service, agent_id, done))
    service.absorb_errors.pop(agent_id, None)
    return {"id": agent_id, "object": "agent.absorb", "status": "queued", "characters": len(body.text)}


@router.get("/{agent_id}/export", response_model=None)
async def export_agent(agent_id: str, request: Request) -> FileResponse:
    """The agent's committed memory as a .tar.gz (plain peft adapter files + state); needs a store."""
    engine = request.app.state.service.engine
    checked_agent_id(agent_id, "agent_id")
    archive = await run_for_agent(
        request, agent_id, "export", lambda stop: _export(engine, agent_id), discard=_remove_folder
    )
    cleanup = BackgroundTask(_remove_folder, archive)
    return FileResponse(archive, media_type="application/gzip", filename="agent.tar.gz", background=cleanup)


@router.post("/{agent_id}/import", status_code=201)
async def import_agent(agent_id: str, request: Request) -> dict:
    """Install an archive from GET .../export as this agent, which must have no memory yet; needs a store."""
    service = request.app.state.service
    checked_agent_id(agent_id, "agent_id")
    folder = Path(tempfile.mkdtemp(prefix="templora-import-"))
    archive, limit = folder / "upload.tar.gz", service.settings.max_import_bytes
    try:
        with archive.open("wb") as file:
            async for chunk in request.stream():
                file.write(chunk)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise

    def work(stop: object) -> AgentStats:
        """On a worker: unpack and install (the folder is removed whatever happens)."""
        return _import(service.engine, agent_id, archive, limit)

    stats = await run_for_agent(request, agent_id, "import", work, cleanup=folder)
    return agent_body(service, stats)


def agent_body(service: Any, stats: AgentStats) -> dict[str, Any]:
    """The agent as the routes show it: its stats, whether it is in RAM, and its absorb's progress."""
    counters = stats.model_dump(exclude={"agent_id"})
    return {
        "id": stats.agent_id,
        "object": "agent",
        **counters,
        "resident": stats.agent_id in service.engine.resident_ids(),
        "absorbing": service.scheduler.busy(stats.agent_id, "absorb"),
        "absorb_error": service.absorb_errors.get(stats.agent_id),
    }


async def run_for_agent(
    request: Request, agent_id: str, kind: str, work, discard=None, cleanup: Path | None = None
) -> Any:
    """Run `work` for the agent through the scheduler, within the request timeout; library errors as 4xx/5xx.

    `cleanup` is a folder the work removes when it runs, removed here if it never does.
    """
    service = request.app.state.service
    job = None
    try:
        job = submit(service.scheduler, agent_id, kind, work)
        return await wait_job(service.scheduler, job, Deadline(service.timeout, request), discard)
    except TemploraError as exc:
        raise from_library(exc) from None
    finally:
        if cleanup is not None and (job is None or not job.started):
            shutil.rmtree(cleanup, ignore_errors=True)


def _absorbed(service: Any, agent_id: str, done: asyncio.Future) -> None:
    """After a background absorb: keep its error (shown by the agent's stats) and log it."""
    if done.cancelled():
        return
    error = done.exception()
    if error is None:
        return
    if isinstance(error, ShuttingDown):
        log.warning("agent=%r absorb dropped: the server shut down before it started", agent_id)
    elif isinstance(error, TemploraError):
        service.absorb_errors[agent_id] = str(error)
        log.warning("agent=%r absorb failed: %s", agent_id, type(error).__name__)
    else:
        service.absorb_errors[agent_id] = "the server failed to absorb the text; its log has the details"
        log.error("agent=%r absorb failed", agent_id, exc_info=error)


def _export(engine: MemoryEngine, agent_id: str) -> Path:
    """On a worker: export the agent into a temporary folder and pack it; returns the archive."""
    if agent_id not in engine.agent_ids():
        raise ApiError(404, f"agent {agent_id[:40]!r} has no memory to export", param="agent_id")
    folder = Path(tempfile.mkdtemp(prefix="templora-export-"))
    try:
        exported = engine.export(agent_id, folder / "agent")
        with tarfile.open(folder / "agent.tar.gz", "w:gz") as tar:
            tar.add(exported, arcname="agent")
        shutil.rmtree(exported)
        return folder / "agent.tar.gz"
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _import(engine: MemoryEngine, agent_id: str, archive: Path, limit: int) -> AgentStats:
    """On a worker: unpack the archive safely (no links, no paths outside it, bounded size) and install it."""
    target = archive.parent / "unpacked"
    try:
        if agent_id in engine.agent_ids():
            raise ApiError(409, f"agent {agent_id[:40]!r} already has a memory; DELETE it first", param="agent_id")
        _unpack(archive, target, limit)
        source = target / "agent" if (target / "agent").is_dir() else target
        try:
            return engine.import_(source, agent_id)
        except StoreError as exc:
            raise InvalidInputError(f"the archive is not an agent exported by this server: {exc}") from None
    finally:
        shutil.rmtree(archive.parent, ignore_errors=True)


def _unpack(archive: Path, target: Path, limit: int) -> None:
    """Extract with tarfile's "data" filter; refuse archives that unpack to more than 4x the upload limit."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if sum(member.size for member in tar.getmembers()) > 4 * limit:
                raise InvalidInputError("the archive unpacks to more than 4x --max-import-bytes")
            tar.extractall(target, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise InvalidInputError(f"the upload is not a .tar.gz from GET /v1/agents/{{id}}/export ({exc})") from None


def _remove_folder(archive: Path) -> None:
    """Delete the temporary folder an archive was written in."""
    shutil.rmtree(archive.parent, ignore_errors=True)
