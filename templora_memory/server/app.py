"""`create_app`: the FastAPI application over one `MemoryEngine`, its settings, and its lifetime.

One engine per process, shared by every request; the engine never imports the server. On shutdown the queue
stops taking work, running jobs end, and every resident agent is committed to the store (when there is one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from starlette.middleware.cors import CORSMiddleware

from templora_memory.engine import MemoryEngine
from templora_memory.errors import ConfigError, StoreError
from templora_memory.server import agents, chat, text, turns
from templora_memory.server.guard import Guard
from templora_memory.server.http_errors import ApiError, install_handlers
from templora_memory.server.scheduler import QueueFull, Scheduler, ShuttingDown

log = logging.getLogger("templora_memory.server")


@dataclass(frozen=True)
class ServerSettings:
    """How the server admits and bounds work; every field is a `templora-memory serve` option."""

    api_key: str | None = None
    """Bearer key every request but /health must carry; None: no key (fine on 127.0.0.1 only)."""
    workers: int = 8
    """Threads running engine calls (replies, training); replies running on different workers at once are decoded
    in one batch (up to `batch_rows`), and training runs beside them."""
    batch_rows: int = 8
    """Replies decoded in one batch at most; the others wait for a place at a token boundary, in arrival order."""
    max_queue: int = 64
    """Requests waiting or running at once; past that, 429 with Retry-After."""
    request_timeout: float = 300.0
    """Seconds a request may take, queueing included; then 504 (a reply stopped early is not remembered)."""
    max_body_bytes: int = 4 * 2**20
    """Largest request body (413 past it), except imports."""
    max_import_bytes: int = 2**30
    """Largest agent archive POSTed to /v1/agents/{id}/import."""
    shutdown_timeout: float = 30.0
    """Seconds from SIGTERM to exit at most (plus one training step under way): replies in flight get the first
    half to finish, stopping the jobs still running and committing every agent the second."""
    sync_write_tokens: int = 2048
    """Tokens a request trains before its reply at most; the rest stays pending and is written by background jobs
    that take turns with other agents' requests."""
    max_pending_tokens: int = 65536
    """An agent's tokens waiting to be written at most; past it, its requests get 429 with Retry-After."""
    cors_origins: tuple[str, ...] = ()
    """Browser origins allowed to call the server (web games); none by default."""

    def __post_init__(self) -> None:
        """Refuse bounds that could never admit work, naming the field."""
        for name in (
            "workers",
            "batch_rows",
            "max_queue",
            "request_timeout",
            "max_body_bytes",
            "max_import_bytes",
            "sync_write_tokens",
            "max_pending_tokens",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.workers > self.max_queue:
            raise ConfigError(f"max_queue={self.max_queue} must be at least workers={self.workers}")


@dataclass
class Service:
    """What the routes share: the engine, the settings, the scheduler and the errors of background absorbs."""

    engine: MemoryEngine
    settings: ServerSettings
    scheduler: Scheduler
    started: int = field(default_factory=lambda: int(time.time()))
    absorb_errors: dict[str, str] = field(default_factory=dict)

    @property
    def timeout(self) -> float:
        """Seconds each request may take."""
        return self.settings.request_timeout

    def keep_writing(self, agent_id: str) -> None:
        """While the agent has a full chunk pending (a request's write budget ran out), queue a background write
        of one more budget; it takes its turn with other agents' requests, and queues the next when it ends."""
        if self.backlog(agent_id) < self.engine.config.chunk_tokens or self.scheduler.busy(agent_id, "write"):
            return
        with contextlib.suppress(QueueFull, ShuttingDown):  # the agent's next request writes it instead
            job = self.scheduler.submit(agent_id, "write", lambda stop: self.engine.wait(agent_id))
            job.future.add_done_callback(_written)

    def backlog(self, agent_id: str) -> int:
        """Tokens the agent has waiting to be written (0 when it is not in RAM)."""
        return self.engine.stats(agent_id).tokens_pending if agent_id in self.engine.resident_ids() else 0

    def check_backlog(self, agent_id: str) -> None:
        """429 while the agent's backlog is over `max_pending_tokens` (Retry-After: when it should be under)."""
        pending, limit = self.backlog(agent_id), self.settings.max_pending_tokens
        if pending > limit:
            rounds = math.ceil((pending - limit) / self.settings.sync_write_tokens)
            retry = str(max(1, min(600, rounds * self.scheduler.retry_after())))
            raise ApiError(
                429,
                f"this agent has {pending} tokens waiting to be written, over the server's limit of {limit} "
                "(--max-pending-tokens); retry after its backlog is written",
                code="backlog_full",
                headers={"Retry-After": retry},
            )


def _written(done: asyncio.Future) -> None:
    """After a background write: its error is logged (the agent's next request writes what is left)."""
    if not done.cancelled() and (error := done.exception()) is not None:
        log.warning("background write failed: %r", error)


def create_app(engine: MemoryEngine, settings: ServerSettings | None = None) -> FastAPI:
    """The OpenAI-compatible app over `engine` (already loaded: tests and benchmarks pass their own).

    Example:
        >>> app = create_app(MemoryEngine(store="npc-memories"), ServerSettings(api_key="s3cret"))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    settings = settings or ServerSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Start the scheduler; on shutdown drain it and commit every resident agent."""
        scheduler = Scheduler(settings.workers, settings.max_queue, settings.sync_write_tokens)
        app.state.service = service = Service(engine, settings, scheduler)
        engine.replies.max_rows = settings.batch_rows
        scheduler.after = service.keep_writing
        yield
        deadline = time.monotonic() + settings.shutdown_timeout / 2
        left = await scheduler.close(settings.shutdown_timeout / 2)  # they stop at their next step or text piece
        if left:
            log.error("shutdown: jobs of %d agent(s) still running: %s", len(left), left)
        await commit_residents(engine, max(0.0, deadline - time.monotonic()))

    app = FastAPI(title="templora-memory", summary="OpenAI-compatible chat with per-agent memory", lifespan=lifespan)
    install_handlers(app)
    limits = {"max_body_bytes": settings.max_body_bytes, "max_import_bytes": settings.max_import_bytes}
    app.add_middleware(Guard, api_key=settings.api_key, **limits)
    if settings.cors_origins:  # outermost: browsers' preflight requests carry no key
        origins = list(settings.cors_origins)
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"])
    app.include_router(chat.router)
    app.include_router(text.router)
    app.include_router(agents.router)
    app.include_router(turns.router)
    app.add_api_route("/health", health, methods=["GET"])
    return app


async def health(request: Request) -> dict:
    """Liveness and load: the model, agents in RAM, and the queue (no key needed)."""
    service = request.app.state.service
    return {
        "status": "ok",
        "model": service.engine.model_name,
        "resident_agents": len(service.engine.resident_ids()),
        "queue": service.scheduler.counts(),
    }


async def commit_residents(engine: MemoryEngine, timeout: float) -> None:
    """Commit every agent in RAM to the store (its background chunk taken in first; pending tokens stay pending)
    and give its lease back, so another process may take it at once: each one that can be, within `timeout`
    seconds; the log names the agents that could not be (their journals keep their turns)."""
    if engine.store is None:
        return
    residents, failure = engine.resident_ids(), []
    done = threading.Event()

    def close() -> None:
        """On a daemon thread, so a store that hangs cannot hold the process past its timeout."""
        try:
            engine.close()
        except StoreError as exc:
            failure.append(str(exc))
        finally:
            done.set()

    threading.Thread(target=close, name="templora-shutdown", daemon=True).start()
    if not await asyncio.to_thread(done.wait, timeout):
        left = engine.resident_ids()
        log.error("shutdown: %d agent(s) not committed within %g s: %s", len(left), timeout, left)
    elif failure:
        log.error("shutdown: %s", failure[0])
    else:
        log.info("shut down: %d resident agents committed", len(residents))
