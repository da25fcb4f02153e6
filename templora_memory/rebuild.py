"""Rebuilding an agent's adapter without the turns it was made to forget (`MemoryEngine.forget_turns`).

From the nearest snapshot before the first turn forgotten, the stream that follows it is trained again, rendered
anew from the ledger without those turns, chunk by chunk as it was first written (the same seeds, training context
and probes), by one background thread for all agents. Each chunk is committed with the rebuild's progress, so a
process killed in the middle resumes on the agent's next load. Until the last chunk, replies read the window and
hybrid recall only, never the adapter (`AgentState.adapter`), and new turns wait pending; the last chunk puts the
adapter back in service at once, under the agent's lock. A rebuild trains at most the tokens the ledger holds after
its snapshot; stopping the engine waits for the chunk under way (at most `REBUILD_STOP_SECONDS`).
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections import deque
from dataclasses import dataclass, replace

from templora_memory.agent import AgentState
from templora_memory.config import TempLoraConfig
from templora_memory.ledger import Anchor, Ledger, Rebuild
from templora_memory.message import Message
from templora_memory.rendering import ChatRenderer
from templora_memory.residency import Residency
from templora_memory.snapshots import Copy, Snapshots
from templora_memory.writing import ChunkWriter, claim

log = logging.getLogger("templora_memory")
REBUILD_STOP_SECONDS = 60.0
"""How long stopping the engine waits for the rebuild chunk under way (what is left resumes on the next load)."""
_REBUILDERS: weakref.WeakSet[Rebuilder] = weakref.WeakSet()
"""Every rebuilder of this process, stopped at its exit (a thread killed inside torch aborts the process)."""


@dataclass(frozen=True)
class Stream:
    """The tokens a rebuild trains, and where each turn's tokens lie in them (what a chunk's probes are built from)."""

    tokens: list[int]
    spans: list[tuple[int, int, Message]]

    def messages(self, start: int, end: int) -> list[Message]:
        """The turns whose tokens overlap tokens `start` to `end`."""
        return [message for first, last, message in self.spans if first < end and last > start]


def render_stream(ledger: Ledger, renderer: ChatRenderer, start: Anchor, end: Anchor | None) -> Stream:
    """The stream from `start` to `end` (None: nothing), each turn rendered after the turn kept before it; the entries
    wholly inside take the size they render to (a turn after a forgotten one may render differently)."""
    tokens: list[int] = []
    spans: list[tuple[int, int, Message]] = []
    previous: Message | None = None
    for index, entry in enumerate(ledger.entries):
        if end is None or end.before(entry.id):
            break
        if entry.id < start.entry:
            previous = entry.message or previous
            continue
        rendered = entry.tokens if entry.message is None else renderer.turn(entry.message, previous).tokens
        first = start.offset if entry.id == start.entry else 0
        last = end.offset if entry.id == end.entry else len(rendered)
        if entry.message is not None:
            previous = entry.message
            spans.append((len(tokens), len(tokens) + last - first, entry.message))
        if (first, last) == (0, len(rendered)):
            ledger.entries[index] = replace(entry, size=len(rendered))
        tokens.extend(rendered[first:last])
    return Stream(tokens, spans)


class Rebuilder:
    """Starts rebuilds, trains them chunk by chunk (in a background thread, or on a caller's thread to finish one),
    and resumes them when an agent comes back from the store."""

    def __init__(
        self,
        writer: ChunkWriter,
        snapshots: Snapshots,
        residency: Residency,
        renderer: ChatRenderer,
        config: TempLoraConfig,
    ) -> None:
        self.writer = writer
        self.snapshots = snapshots
        self.residency = residency
        self.renderer = renderer
        self.config = config
        self._waiting: deque[str] = deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        _REBUILDERS.add(self)

    def start(self, state: AgentState, copy: Copy, start: Anchor) -> None:
        """Restore the adapter from the snapshot `copy` (anchored at `start`) and plan training the stream after it
        again (nothing is trained yet: `schedule` or `finish` does it)."""
        self.snapshots.restore(state, copy)
        ledger = state.conversation.ledger
        ledger.rebuild = Rebuild(start, total=0)
        self._stream(state)  # measures it
        state.kv = None  # states the old adapter computed
        if not ledger.rebuild.total:
            ledger.rebuild = None

    def step(self, state: AgentState) -> None:
        """Train the rebuild's next chunk and commit it; after the last one the adapter is served again."""
        talk, rebuild = state.conversation, state.conversation.ledger.rebuild
        stream = self._stream(state)
        end = min(rebuild.done + self.config.chunk_tokens, rebuild.total)
        chunk = stream.tokens[rebuild.done : end]
        job = self.writer.job(state, talk.written, chunk, stream.messages(rebuild.done, end))
        self.writer.train(state, job)
        self.writer.count(state, job)
        talk.keep_context(chunk, self.config.train_context_tokens)
        state.tokens_written += len(chunk)
        rebuild.done = end
        if rebuild.done >= rebuild.total:
            talk.ledger.rebuild, state.kv = None, None  # served from the next reply on
        self.residency.commit(state)
        self.snapshots.prune(state)  # also what a process killed mid-`forget_turns` left
        self.snapshots.take_if_due(state)

    def finish(self, state: AgentState) -> None:
        """Run the agent's rebuild to its end on this thread, as far as its write budget goes (see `stop_on`; the
        background thread trains the rest)."""
        while state.rebuilding and claim(state, self.config.chunk_tokens):
            self.step(state)

    def resume(self, state: AgentState) -> None:
        """An agent back from the store: go on with the rebuild it had under way."""
        if state.rebuilding:
            self.schedule(state.agent_id)

    def schedule(self, agent_id: str) -> None:
        """Have the background thread train the agent's rebuild, a chunk at a time, taking turns with the others."""
        with self._lock:
            if agent_id not in self._waiting:
                self._waiting.append(agent_id)
            if self._thread is None:
                self._halt = threading.Event()
                self._thread = threading.Thread(target=self._work, args=(self._halt,), name="templora-rebuild")
                self._thread.daemon = True
                self._thread.start()

    def stop(self, timeout: float = REBUILD_STOP_SECONDS) -> None:
        """Stop the background thread after the chunk under way (waiting `timeout` seconds at most); the agents left
        waiting go on at the next `schedule`, and every rebuild resumes on its agent's next load."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._halt.set()
        if thread is not None:
            thread.join(timeout)

    def _work(self, halt: threading.Event) -> None:
        """The background thread: one chunk of the next waiting agent, which then waits again behind the others."""
        while not halt.is_set():
            with self._lock:
                if not self._waiting:
                    self._thread = None
                    return
                agent_id = self._waiting.popleft()
            if self._advance(agent_id):
                with self._lock:
                    if agent_id not in self._waiting:
                        self._waiting.append(agent_id)

    def _advance(self, agent_id: str) -> bool:
        """One chunk of the agent's rebuild if it is in RAM (else it resumes on its next load); whether more is left."""
        try:
            with self.residency.resident(agent_id) as state:
                if state is None or not state.rebuilding:
                    return False
                self.step(state)
                return state.rebuilding
        except Exception:  # noqa: BLE001 - this thread serves every agent; the rebuild resumes on the next load
            log.exception("rebuilding agent %r failed; it resumes on its next load or write", agent_id)
            return False

    def _stream(self, state: AgentState) -> Stream:
        """The rebuild's stream: from its snapshot to where the pending tokens begin (rendered once per process)."""
        talk, rebuild = state.conversation, state.conversation.ledger.rebuild
        if rebuild.stream is None:
            end = talk.ledger.anchor_at(len(talk.pending))
            rebuild.stream = render_stream(talk.ledger, self.renderer, rebuild.start, end)
            rebuild.total = len(rebuild.stream.tokens)
        return rebuild.stream


@atexit.register
def _stop_all() -> None:
    """At the interpreter's exit, stop every rebuild after its chunk under way (it resumes on the next load)."""
    for rebuilder in list(_REBUILDERS):
        rebuilder.stop()
