"""From a worker thread back to the request: a job's outcome, a reply's text pieces, the deadline, the client.

A reply streams on a worker (the engine's per-agent lock belongs to the thread that takes it, so one thread
runs a reply from start to end) and its pieces cross to the event loop through a queue. While a request
waits, its deadline is checked and so is its client; if either gives out, the job leaves the queue, or, when
already running, is asked to stop at the next text piece: a reply stopped that way is not remembered (the
request's new turns were written before generation began, and stay).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from templora_memory.engine import MemoryEngine
from templora_memory.replies import Reply, pump
from templora_memory.server.completions import ReplyCall, TextCall
from templora_memory.server.http_errors import ApiError
from templora_memory.server.scheduler import Job, QueueFull, Scheduler, ShuttingDown

POLL_SECONDS = 0.25
"""How often a waiting request looks whether its client is still connected."""
_END = object()


class ClientGone(Exception):
    """The client closed its connection before the answer was ready."""


class Deadline:
    """When a request must be answered by, and (for a request not yet answering) whether its client is there."""

    def __init__(self, timeout: float, request: Request | None = None) -> None:
        """`timeout` seconds from now; `request` is the client to watch (None: nobody to watch)."""
        self._loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.at = self._loop.time() + timeout
        self.request = request
        self._checked = self._loop.time()

    def remaining(self) -> float:
        """Seconds left (0 once passed)."""
        return max(0.0, self.at - self._loop.time())

    def check(self) -> None:
        """Raise the 504 once the deadline has passed."""
        if self.remaining() <= 0:
            raise ApiError(
                504,
                f"no answer within the server's {self.timeout:g} s request timeout; the request was stopped "
                "(a reply stopped before its end is not remembered)",
                code="timeout",
            )

    async def client_gone(self) -> bool:
        """True once the client has disconnected (looked at no more often than every POLL_SECONDS)."""
        now = self._loop.time()
        if self.request is None or now - self._checked < POLL_SECONDS:
            return False
        self._checked = now
        return await self.request.is_disconnected()


def submit(scheduler: Scheduler, agent_id: str, kind: str, work: Callable[[threading.Event], Any]) -> Job:
    """Queue a job, answering 429 (with Retry-After) when the queue is full and 503 while shutting down."""
    try:
        return scheduler.submit(agent_id, kind, work)
    except QueueFull as full:
        headers = {"Retry-After": str(full.retry_after)}
        raise ApiError(429, f"the server is busy: {full}", code="queue_full", headers=headers) from None
    except ShuttingDown as stopping:
        raise ApiError(503, str(stopping), code="shutting_down") from None


async def wait_job(
    scheduler: Scheduler, job: Job, deadline: Deadline, discard: Callable[[Any], None] | None = None
) -> Any:
    """The job's result (or its exception); if the deadline passes or the client leaves first, the job is
    withdrawn and its result, whenever it comes, goes to `discard`."""
    try:
        while True:
            done, _ = await asyncio.wait({job.future}, timeout=min(POLL_SECONDS, deadline.remaining()))
            if done:
                return _outcome(job)
            deadline.check()
            if await deadline.client_gone():
                raise ClientGone
    except BaseException:
        scheduler.withdraw(job)
        if discard is not None:
            job.future.add_done_callback(lambda f: f.cancelled() or f.exception() or discard(f.result()))
        raise


def _outcome(job: Job) -> Any:
    """The result of a finished job; a job cancelled by shutdown is a 503."""
    if job.future.cancelled():
        raise ApiError(503, "the server shut down before this request ran", code="shutting_down")
    exception = job.future.exception()
    if isinstance(exception, ShuttingDown):
        raise ApiError(503, str(exception), code="shutting_down")
    return job.future.result()


class LiveReply:
    """One reply generated on a worker and read on the event loop: text pieces, then the parsed `Reply`."""

    def __init__(
        self,
        scheduler: Scheduler,
        engine: MemoryEngine,
        agent_id: str | None,
        call: ReplyCall | TextCall,
        deadline: Deadline,
    ) -> None:
        """Queue the reply at once (429 / 503 if it cannot be queued)."""
        self._loop = asyncio.get_running_loop()
        self._pieces: asyncio.Queue = asyncio.Queue()
        self._scheduler, self._engine, self._call = scheduler, engine, call
        self.agent_id, self.deadline = agent_id, deadline
        self.job = submit(scheduler, agent_id or "", "chat", self._work)

    async def next_piece(self, watch_client: bool = True) -> str | None:
        """The next text piece, or None once the reply is complete; 504 past the deadline, `ClientGone` if the
        client left (watched only before the response starts: then the server itself notices)."""
        try:
            while True:
                if not self._pieces.empty():
                    item = self._pieces.get_nowait()
                    return None if item is _END else item
                self.deadline.check()
                if watch_client and await self.deadline.client_gone():
                    raise ClientGone
                if _outcome_ready(self.job):  # ended without reaching the worker (shutdown)
                    _outcome(self.job)
                with contextlib.suppress(TimeoutError):
                    item = await asyncio.wait_for(self._pieces.get(), min(POLL_SECONDS, self.deadline.remaining()))
                    return None if item is _END else item
        except BaseException:
            self.abandon()
            raise

    async def reply(self) -> Reply:
        """The parsed reply, once `next_piece` returned None (the engine's error, if it failed)."""
        await asyncio.wait({self.job.future})
        return _outcome(self.job)

    def abandon(self) -> None:
        """Stop waiting: the reply leaves the queue, or stops at its next piece and is not remembered."""
        if not self.job.future.done():
            self._scheduler.withdraw(self.job)

    def _work(self, stop: threading.Event) -> Reply:
        """On the worker: stream the reply into the queue."""
        try:
            return stream_reply(self._engine, self.agent_id, self._call, stop, self._put)
        finally:
            self._put(_END)

    def _put(self, item: object) -> None:
        """From the worker: hand a piece (or the end) to the event loop."""
        self._loop.call_soon_threadsafe(self._pieces.put_nowait, item)


def _outcome_ready(job: Job) -> bool:
    """True when the job ended without running (cancelled, or dropped by shutdown)."""
    return job.future.done() and not job.started


def stream_reply(
    engine: MemoryEngine,
    agent_id: str | None,
    call: ReplyCall | TextCall,
    stop: threading.Event,
    put: Callable[[str], None],
) -> Reply:
    """Generate the reply, handing each piece to `put`; once `stop` is set, it stops and is not remembered."""
    stream = call.start(engine, agent_id)
    pump(stream, stop, put)
    return stream.reply
