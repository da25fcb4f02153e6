"""`create_app`: the FastAPI application over one `MemoryEngine`, its settings, and its lifetime.

One engine per process, shared by every request; the engine never imports the server. On shutdown the queue
stops taking work, running jobs end, and every resident agent is committed to the store (when there is one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from starlette.middleware.cors import CORSMiddleware

from templora_memory.engine import MemoryEngine
from templora_memory.errors import ConfigError
from templora_memory.server import agents, chat, text
from templora_memory.server.guard import Guard
from templora_memory.server.http_errors import install_handlers
from templora_memory.server.scheduler import Scheduler

log = logging.getLogger("templora_memory.server")


@dataclass(frozen=True)
class ServerSettings:
    """How the server admits and bounds work; every field is a `templora-memory serve` option."""

    api_key: str | None = None
    """Bearer key every request but /health must carry; None: no key (fine on 127.0.0.1 only)."""
    workers: int = 2
    """Threads running engine calls (replies, training); one base model, so more rarely helps."""
    max_queue: int = 64
    """Requests waiting or running at once; past that, 429 with Retry-After."""
    request_timeout: float = 300.0
    """Seconds a request may take, queueing included; then 504 (a reply stopped early is not remembered)."""
    max_body_bytes: int = 4 * 2**20
    """Largest request body (413 past it), except imports."""
    max_import_bytes: int = 2**30
    """Largest agent archive POSTed to /v1/agents/{id}/import."""
    shutdown_timeout: float = 30.0
    """Seconds replies in flight get to finish on shutdown before they are stopped."""
    cors_origins: tuple[str, ...] = ()
    """Browser origins allowed to call the server (web games); none by default."""

    def __post_init__(self) -> None:
        """Refuse bounds that could never admit work, naming the field."""
        for name in ("workers", "max_queue", "request_timeout", "max_body_bytes", "max_import_bytes"):
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
        app.state.service = Service(engine, settings, Scheduler(settings.workers, settings.max_queue))
        yield
        await app.state.service.scheduler.close()
        committed = await asyncio.to_thread(commit_residents, engine)
        log.info("shut down: %d resident agents committed", committed)

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


def commit_residents(engine: MemoryEngine) -> int:
    """Commit every agent in RAM to the store (after background training ends) and give its lease back, so
    another process may take it at once; returns how many."""
    if engine.store is None:
        return 0
    if engine.config.deployment == "parallel":
        engine.wait()
    residents = engine.resident_ids()
    engine.close()
    return len(residents)
