"""Scale out on Ray Serve: agents multiplexed across model replicas, their memories in one shared store.

`templora-memory serve --ray` (or `serve run templora_memory.server.ray_app:build store=s3://... replicas=4`)
runs two deployments (the `ray` extra):

- `Router`, the HTTP ingress. It reads which agent a request is for (the `X-Agent-Id` header, the path of
  /v1/agents/{id}/..., or the chat body's `user`, as the server does) and hands the raw request to a model
  replica with that agent id as Ray's multiplexed model id, so Ray sends it to the replica that has the agent.
- `AgentReplica` x N. Each loads the base model once and runs the very app of `templora-memory serve` (routes,
  scheduler, errors) in-process over its own engine. `@serve.multiplexed(max_num_models_per_replica=max_resident)`
  keeps the replica's LRU of agents: an agent loads from the store on first use (taking its lease) and, when Ray
  unloads it, is committed and its lease given back. Background (parallel) training stays on the replica.

One writer per agent is the store's lease. If Ray sends an agent to a replica while another holds it (a routing
race, or the holder is saturated), that replica answers 409 with Retry-After after a short wait, and the router
retries: by then Ray routes the agent to its holder. A replica that dies leaves its leases to expire (on its own
host they are taken over at once); its agents load on another replica from their last commit.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import StreamingResponse

from templora_memory.config import TempLoraConfig
from templora_memory.engine import MemoryEngine
from templora_memory.errors import AgentBusyError
from templora_memory.server.app import ServerSettings, create_app
from templora_memory.server.chat import named_agent
from templora_memory.server.http_errors import ApiError, from_library
from templora_memory.store import AgentStore, store_key

try:
    import ray
    from ray import serve
except ImportError as exc:
    raise ImportError(
        f'`serve --ray` needs the ray extra ({exc.name} is missing): pip install "templora-memory[ray]"', name=exc.name
    ) from None

RETRIES = 8
"""Times the router retries a request refused because another replica holds its agent (409 with Retry-After)."""
REPLICA_HEADER = "x-templora-replica"
"""Response header naming the replica that answered (where the agent lives)."""


@dataclass(frozen=True)
class EngineSpec:
    """What each replica loads, as plain data Ray can ship: the model, its config, the shared store."""

    store: str
    """A directory every replica can reach, or s3://bucket/prefix (the `store` extra)."""
    max_resident: int
    """Adapters per replica (Ray's LRU of agents and the engine's)."""
    model: str | None = None
    config: TempLoraConfig | None = None
    lease_wait: float = 2.0
    """Seconds a replica waits for an agent held by another replica before answering 409 (the router retries)."""

    def __call__(self) -> MemoryEngine:
        """Load the engine (on the replica)."""
        store = AgentStore(self.store, lease_wait=self.lease_wait)
        return MemoryEngine(self.model, self.config, store=store, max_resident=self.max_resident)


class Resident:
    """What Ray's multiplexer keeps per agent: unloading it commits the agent and gives its lease back."""

    def __init__(self, engine: MemoryEngine, agent_id: str) -> None:
        self.engine, self.agent_id, self._released = engine, agent_id, False

    def __del__(self) -> None:
        """Called by Ray when it evicts the agent from this replica (and by the GC, which then does nothing)."""
        if not self._released:
            self._released = True
            self.engine.release(self.agent_id)


class AgentReplica:
    """One base model and engine; the server's app in-process; agents multiplexed by id."""

    def __init__(self, factory: Callable[[], MemoryEngine], settings: ServerSettings, max_resident: int) -> None:
        """Load the engine; Ray's agent LRU holds `max_resident` agents."""
        self.engine = factory()
        self.app = create_app(self.engine, settings)
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self._lifespan = None
        self._starting = asyncio.Lock()

        async def load(agent_id: str) -> Resident:  # a plain function: Ray keeps its LRU on it
            """Ray's loader: a stored agent is loaded now, under its lease, so a replica that cannot get the lease
            fails here and Ray does not count it as holding the agent; a new agent is created by its first call."""
            if self.engine.store.has(store_key(agent_id)):
                await asyncio.to_thread(self.engine.agent, agent_id)
            return Resident(self.engine, agent_id)

        self.agent = serve.multiplexed(max_num_models_per_replica=max_resident)(load)

    async def handle(self, call: dict[str, Any]) -> AsyncIterator[dict | bytes]:
        """Answer one HTTP request: first the head ({"status", "headers"}), then the body's chunks."""
        agent_id = serve.get_multiplexed_model_id()
        if agent_id:
            try:
                await self.agent(agent_id)
            except AgentBusyError as exc:  # another replica holds the agent: the router retries
                error = from_library(exc)
                headers = [(name.lower(), value) for name, value in (error.headers or {}).items()]
                headers += [("content-type", "application/json"), (REPLICA_HEADER, self.replica_id)]
                yield {"status": error.status_code, "headers": headers}
                yield json.dumps(error.body()).encode()
                return
        await self._start()
        async for item in asgi_call(self.app, call):
            if isinstance(item, dict):
                item["headers"].append((REPLICA_HEADER, self.replica_id))
            yield item

    async def inspect(self, continuation: list[int]) -> dict[str, Any]:
        """Where the (multiplexed) agent lives, its stats, and its log-probabilities of `continuation` after its next
        prompt: what shows an agent moved between replicas intact."""
        agent_id = serve.get_multiplexed_model_id()
        await self.agent(agent_id)

        def score() -> list[float]:
            return self.engine.log_likelihood(agent_id, self.engine.prompt_ids(agent_id), continuation)

        logprobs = await asyncio.to_thread(score)
        stats = self.engine.stats(agent_id).model_dump()
        return {"replica": self.replica_id, "pid": os.getpid(), "stats": stats, "logprobs": logprobs}

    async def _start(self) -> None:
        """Enter the app's lifespan (its scheduler) once, on the replica's event loop."""
        async with self._starting:
            if self._lifespan is None:
                lifespan = self.app.router.lifespan_context(self.app)
                await lifespan.__aenter__()
                self._lifespan = lifespan

    async def __del__(self) -> None:
        """On shutdown: drain the app (which commits every resident agent) and give every lease back."""
        if self._lifespan is not None:
            await self._lifespan.__aexit__(None, None, None)
        await asyncio.to_thread(self.engine.close)


class Router:
    """The HTTP ingress: each request goes, whole, to the replica holding its agent; its answer streams back."""

    def __init__(self, replicas: Any) -> None:
        """`replicas`: the handle of the `AgentReplica` deployment."""
        self.replicas = replicas

    async def __call__(self, request: Request) -> StreamingResponse:
        """Forward the request (retrying while another replica holds its agent) and stream the answer."""
        scope = request.scope
        call = {
            "method": request.method,
            "path": scope["path"],
            "raw_path": scope.get("raw_path") or scope["path"].encode(),
            "query_string": scope.get("query_string", b""),
            "headers": list(scope["headers"]),
            "body": await request.body(),
        }
        handle = self.replicas.options(stream=True, multiplexed_model_id=agent_of(call) or "")
        for attempt in range(RETRIES):
            stream = handle.handle.remote(call)
            head = await stream.__anext__()
            busy = head["status"] == 409 and any(name == "retry-after" for name, _ in head["headers"])
            if not busy or attempt == RETRIES - 1:
                break
            stream.cancel()
            await asyncio.sleep(0.25 * (attempt + 1))
        return StreamingResponse(_body(stream), status_code=head["status"], headers=dict(head["headers"]))


async def _body(stream: Any) -> AsyncIterator[bytes]:
    """The rest of a replica's answer; if the client leaves, the replica's request is cancelled too."""
    try:
        async for chunk in stream:
            yield chunk
    finally:
        stream.cancel()


def agent_of(call: dict[str, Any]) -> str | None:
    """The agent a request names, as the server reads it; None for requests about no agent or a bad id (the
    replica's app answers those)."""
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in call["headers"]}
    header, parts = headers.get("x-agent-id"), call["path"].split("/")
    if header is None and parts[1:3] == ["v1", "agents"] and len(parts) > 3:
        header = call["raw_path"].decode().split("/")[3]  # the path's id, percent-encoded like the header
    elif header is None and call["path"] not in ("/v1/chat/completions", "/v1/completions"):
        return None
    try:
        return named_agent(header, _body_user(call["body"]) if header is None else None)
    except ApiError:
        return None


def _body_user(body: bytes) -> str | None:
    try:
        content = json.loads(body)
    except ValueError:
        return None
    return content.get("user") if isinstance(content, dict) else None


async def asgi_call(app: FastAPI, call: dict[str, Any]) -> AsyncIterator[dict | bytes]:
    """Run one HTTP request through the ASGI `app` in this process: the head, then each body chunk as it is sent
    (server-sent events stream through). Closing the iterator tells the app its client left."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http",
        "method": call["method"],
        "path": call["path"],
        "raw_path": call["raw_path"],
        "query_string": call["query_string"],
        "root_path": "",
        "headers": call["headers"],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 80),
    }
    sent: asyncio.Queue = asyncio.Queue()
    gone, request = asyncio.Event(), [{"type": "http.request", "body": call["body"], "more_body": False}]

    async def receive() -> dict:
        if request:
            return request.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    running = asyncio.ensure_future(app(scope, receive, sent.put))
    try:
        while True:
            message = await _next_message(sent, running)
            if message is None:
                return
            if message["type"] == "http.response.start":
                headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in message["headers"]]
                yield {"status": message["status"], "headers": headers}
            elif message["type"] == "http.response.body":
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return
    finally:
        gone.set()
        await asyncio.wait({running}, timeout=30)


async def _next_message(sent: asyncio.Queue, running: asyncio.Future) -> dict | None:
    """The app's next message, or None once it ended with nothing more to send (its error, if it failed)."""
    getter = asyncio.ensure_future(sent.get())
    await asyncio.wait({getter, running}, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    if not sent.empty():
        return sent.get_nowait()
    running.result()
    return None


def application(
    factory: Callable[[], MemoryEngine],
    max_resident: int,
    settings: ServerSettings | None = None,
    replicas: int = 2,
    replica_cpus: float = 1.0,
    replica_gpus: float = 0.0,
) -> Any:
    """The Serve application: the router over `replicas` model replicas, each building its engine with `factory`
    on `replica_cpus` CPUs and `replica_gpus` GPUs (Ray then shows each replica its GPU; device "auto" takes it)."""
    settings = settings or ServerSettings()
    replica = serve.deployment(
        AgentReplica,
        name="AgentReplica",
        num_replicas=replicas,
        max_ongoing_requests=settings.max_queue,  # a replica queues its agents' calls itself (429 past max_queue)
        ray_actor_options={"num_cpus": replica_cpus, "num_gpus": replica_gpus},
    )
    router = serve.deployment(Router, name="Router", ray_actor_options={"num_cpus": 0})
    return router.bind(replica.bind(factory, settings, max_resident))


def build(args: dict[str, str]) -> Any:
    """The application builder for `serve run templora_memory.server.ray_app:build store=URL [replicas=2]
    [max_resident=100] [model=PATH] [replica_cpus=1] [replica_gpus=0]` (one Serve config file can name it too)."""
    spec = EngineSpec(store=args["store"], max_resident=int(args.get("max_resident", 100)), model=args.get("model"))
    return application(
        spec,
        spec.max_resident,
        replicas=int(args.get("replicas", 2)),
        replica_cpus=float(args.get("replica_cpus", 1)),
        replica_gpus=float(args.get("replica_gpus", 0)),
    )


def run(spec: EngineSpec, settings: ServerSettings, replicas: int, host: str, port: int, gpus: float = 0.0) -> None:
    """Start (or join, with RAY_ADDRESS) a Ray cluster and serve until interrupted (`gpus` per replica)."""
    ray.init()
    serve.start(http_options={"host": host, "port": port})
    serve.run(application(spec, spec.max_resident, settings, replicas, replica_gpus=gpus), blocking=True)
