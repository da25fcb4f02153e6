"""Blocking engine work off the event loop: a bounded queue, one job at a time per agent, agents taken in turn.

Generation and training are blocking CPU work, so every engine call runs on one of `workers` threads. Jobs
wait in one queue per agent; a free worker takes the next job of the agent first in line that is not already
running one, and an agent goes to the back of the line each time one of its jobs ends. So calls for one agent
run one after another in the order they came, and a busy agent cannot hold back the others. At most
`max_queue` jobs wait or run; past that, `submit` refuses with the seconds to wait before retrying (HTTP 429).

All bookkeeping happens on the event loop's thread; only `Job.work` runs on a worker.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from templora_memory.writing import stop_on

BOUNDED_KINDS = ("chat", "write")
"""Jobs whose synchronous writing the write budget bounds (an explicit absorb is not bounded)."""


class QueueFull(Exception):
    """Every place in the queue is taken; retry after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        """`retry_after`: whole seconds, for the Retry-After header."""
        super().__init__(f"the queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The server is stopping and takes no new work."""


@dataclass(eq=False)
class Job:
    """One engine call for one agent. `work(stop)` runs on a worker; `stop` asks it to end early."""

    agent_id: str
    kind: str
    work: Callable[[threading.Event], Any]
    future: asyncio.Future
    stop: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    times: list[float] = field(default_factory=lambda: [time.monotonic()])
    """When it was queued, started and ended (monotonic seconds), as far as it got."""

    def timing(self) -> str:
        """A `Server-Timing` header value: milliseconds waiting in the queue and running on a worker."""
        queued, began, ended = self.times
        return f"queue;dur={1000 * (began - queued):.1f}, engine;dur={1000 * (ended - began):.1f}"


class Scheduler:
    """Runs jobs on worker threads: bounded, serial per agent, round-robin across agents."""

    def __init__(
        self,
        workers: int,
        max_queue: int,
        write_budget: int | None = None,
        after: Callable[[str], None] | None = None,
    ) -> None:
        """`workers` threads; at most `max_queue` jobs waiting or running. Chat and write jobs train at most
        `write_budget` tokens each (None: no bound); `after(agent_id)` runs on the loop when one of them ends."""
        self.workers = workers
        self.max_queue = max_queue
        self.write_budget, self.after = write_budget, after
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="templora-worker")
        self._waiting: dict[str, deque[Job]] = {}  # agents in the order they are served next
        self._running: dict[str, Job] = {}
        self._seconds = 1.0  # moving average of a job's duration, for Retry-After
        self._closed = False

    @property
    def size(self) -> int:
        """Jobs waiting or running."""
        return len(self._running) + sum(len(jobs) for jobs in self._waiting.values())

    def counts(self) -> dict[str, int]:
        """Waiting and running jobs, and the bound on both."""
        return {"running": len(self._running), "waiting": self.size - len(self._running), "max": self.max_queue}

    def submit(self, agent_id: str, kind: str, work: Callable[[threading.Event], Any]) -> Job:
        """Queue `work` for `agent_id`; raises `QueueFull` or `ShuttingDown` instead of queueing."""
        if self._closed:
            raise ShuttingDown("the server is shutting down")
        if self.size >= self.max_queue:
            raise QueueFull(self.retry_after())
        job = Job(agent_id, kind, work, asyncio.get_running_loop().create_future())
        self._waiting.setdefault(agent_id, deque()).append(job)
        self._dispatch()
        return job

    def withdraw(self, job: Job) -> None:
        """Give up on a job: a waiting one leaves the queue; a running one is asked to stop."""
        if job.started:
            job.stop.set()
            return
        jobs = self._waiting.get(job.agent_id)
        if jobs is not None and job in jobs:
            jobs.remove(job)
            if not jobs:
                del self._waiting[job.agent_id]
        job.future.cancel()

    def busy(self, agent_id: str, kind: str) -> bool:
        """True while a job of `kind` for the agent waits or runs."""
        running = self._running.get(agent_id)
        return (running is not None and running.kind == kind) or any(
            job.kind == kind for job in self._waiting.get(agent_id, ())
        )

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the jobs ahead times their average duration, over the workers."""
        return max(1, min(120, math.ceil(self._seconds * max(1, self.size - self.workers + 1) / self.workers)))

    async def close(self, timeout: float) -> list[str]:
        """Take no more jobs, drop the waiting ones (their clients get `ShuttingDown`), stop the running ones before
        their next training step or text piece and wait `timeout` seconds at most for them to end; returns the
        agents whose jobs were still running then."""
        self._closed = True
        for job in self._running.values():
            job.stop.set()
        for jobs in self._waiting.values():
            for job in jobs:
                job.future.set_exception(ShuttingDown("the server shut down before this job started"))
                job.future.exception()  # retrieved: nobody may be waiting for it any more
        self._waiting.clear()
        running = [job.future for job in self._running.values()]
        if running:
            await asyncio.wait(running, timeout=timeout)
        self._pool.shutdown(wait=False)
        return sorted(agent_id for agent_id, job in self._running.items() if not job.future.done())

    def _dispatch(self) -> None:
        """Start the next jobs while workers are free: first in line among the agents not running one."""
        while len(self._running) < self.workers:
            agent_id = next((a for a in self._waiting if a not in self._running), None)
            if agent_id is None:
                return
            jobs = self._waiting.pop(agent_id)
            job = jobs.popleft()
            if jobs:
                self._waiting[agent_id] = jobs  # back of the line
            self._start(job)

    def _start(self, job: Job) -> None:
        """Run the job on a worker; `_finish` follows on the loop."""
        job.started = True
        job.times.append(time.monotonic())
        self._running[job.agent_id] = job
        budget = self.write_budget if job.kind in BOUNDED_KINDS else None
        running = asyncio.get_running_loop().run_in_executor(self._pool, _run, job, budget)
        running.add_done_callback(lambda done: self._finish(job, done))

    def _finish(self, job: Job, done: asyncio.Future) -> None:
        """On the loop: free the agent (its next jobs go to the back of the line), hand the outcome to whoever
        waits for it, start what can start."""
        del self._running[job.agent_id]
        if job.agent_id in self._waiting:
            self._waiting[job.agent_id] = self._waiting.pop(job.agent_id)
        job.times.append(time.monotonic())
        self._seconds = 0.8 * self._seconds + 0.2 * (job.times[2] - job.times[1])
        if not job.future.done():
            if done.exception() is not None:
                job.future.set_exception(done.exception())
            else:
                job.future.set_result(done.result())
        if job.stop.is_set() and not job.future.cancelled():
            job.future.exception()  # its client left; the outcome is retrieved here so it is never reported
        self._dispatch()
        if self.after is not None and job.kind in BOUNDED_KINDS and not self._closed:
            self.after(job.agent_id)


def _run(job: Job, budget: int | None) -> Any:
    """On a worker: the job's work, writing at most `budget` tokens and stopped before its next training step once
    `job.stop` is set."""
    with stop_on(job.stop, budget):
        return job.work(job.stop)
