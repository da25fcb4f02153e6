"""The ledger: every turn an agent was told and every text it absorbed, each with a stable id, its time and role, in
the order its tokens entered the stream that is written into the adapter.

It is kept in the agent's state (state.json, beside the adapter) and bounded (`ledger_turns`): past the bound the
oldest entries are compacted away, a batch at a time. It also places the adapter's snapshots in that stream (an
`Anchor`: before which entry, after how many of its tokens) and records a rebuild under way (`Rebuild`), so that
a process killed in the middle of one resumes it. Pure bookkeeping: no model, no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from templora_memory.message import Message, Turn

ORIGIN = "origin"
"""The snapshot every adapter starts from (B = 0: the base model), usable while the ledger holds the whole stream."""
TEXT_ROLE = "text"
"""The role of an absorbed text's entry (`MemoryEngine.absorb`)."""
KEPT = 2048
"""Entries a ledger keeps unless told otherwise (`TempLoraConfig.ledger_turns`)."""


@dataclass(frozen=True)
class Entry:
    """One turn (its message) or one absorbed text (its token ids), and the tokens it takes in the stream."""

    id: int
    time: float
    role: str
    message: Message | None
    tokens: tuple[int, ...] | None
    size: int

    def text(self) -> str:
        """The turn's text (text parts joined); an absorbed text's entry has none here (its tokens are decoded)."""
        content = (self.message or {}).get("content") or ""
        if isinstance(content, list):
            return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        return str(content)


@dataclass(frozen=True)
class Anchor:
    """A point of the stream where a snapshot was taken: before entry `entry`, after `offset` of its tokens."""

    name: str
    entry: int
    """The id of the entry holding the first token the snapshot had not seen (an id still to come at the end)."""
    offset: int
    tokens_written: int
    """The agent's `tokens_written` at the snapshot (the next one is due `snapshot_tokens` later)."""

    def before(self, entry_id: int) -> bool:
        """Whether the snapshot had seen no token of entry `entry_id` (nor of any later one)."""
        return self.entry < entry_id or (self.entry == entry_id and self.offset == 0)


@dataclass
class Rebuild:
    """The adapter is being trained again from the snapshot at `start`: `total` tokens of the stream, `done` so far."""

    start: Anchor
    total: int
    done: int = 0
    stream: Any = field(default=None, compare=False, repr=False)
    """The stream to train, once rendered (RAM only: rendered again after a restart)."""


class LedgerTurn(BaseModel):
    """One entry of an agent's ledger, as `MemoryEngine.turns` lists it."""

    id: int
    """Stable id of the turn: never reused, also after the turn is forgotten."""
    time: float
    """When the agent received it (Unix seconds)."""
    role: str
    """"user", "assistant" or "tool", or "text" for a text written with `absorb`."""
    content: str
    """What it said."""
    tokens: int
    """Tokens it takes in the stream written into the adapter."""
    written: bool
    """True once its tokens left the pending stream for the adapter (False: still waiting in the window)."""


@dataclass
class Ledger:
    """Every entry still kept, the next id, the snapshots' anchors and the rebuild under way (if any)."""

    entries: list[Entry] = field(default_factory=list)
    next_id: int = 1
    origin: bool = True
    """The ledger holds the stream from its first token (nothing compacted, nothing told before it began)."""
    snapshots: list[Anchor] = field(default_factory=list)
    """Anchors of the stored snapshots, oldest first."""
    rebuild: Rebuild | None = None
    kept: int = field(default=KEPT, compare=False)
    """Entries kept (`ledger_turns`; set by the engine, not stored): past it, the oldest are compacted away."""

    def add_turn(self, turn: Turn) -> None:
        """Record a turn received (its tokens are the stream's newest)."""
        self._add(turn.message.get("role", "user"), turn.message, None, len(turn.tokens))

    def add_text(self, tokens: Sequence[int]) -> None:
        """Record an absorbed text by its token ids (an empty one adds nothing to the stream, nor here)."""
        if tokens:
            self._add(TEXT_ROLE, None, tuple(tokens), len(tokens))

    def _add(self, role: str, message: Message | None, tokens: tuple[int, ...] | None, size: int) -> None:
        self.entries.append(Entry(self.next_id, time.time(), role, message, tokens, size))
        self.next_id += 1
        self.compact(self.kept)

    def compact(self, kept: int) -> int:
        """Drop the oldest entries once more than `kept` + `kept` // 4 are held, back to `kept` (never one a rebuild
        under way still trains); the snapshots placed among them go too. Returns how many entries went."""
        cut = len(self.entries) - kept if len(self.entries) > kept + kept // 4 else 0
        if self.rebuild is not None:
            cut = min(cut, self._index(self.rebuild.start.entry))
        if cut <= 0:
            return 0
        first = self.entries[cut].id if cut < len(self.entries) else self.next_id
        del self.entries[:cut]
        self.origin = False
        self.snapshots = [anchor for anchor in self.snapshots if anchor.entry >= first]
        return cut

    def origin_anchor(self) -> Anchor:
        """The start of the stream: where a new adapter stands."""
        return Anchor(ORIGIN, self.entries[0].id if self.entries else self.next_id, 0, 0)

    def starts(self) -> list[Anchor]:
        """Every point a rebuild may start from, oldest first: the origin while the ledger holds the whole stream,
        then the snapshots."""
        return [*([self.origin_anchor()] if self.origin else []), *self.snapshots]

    def anchor_at(self, from_end: int, name: str = "", tokens_written: int = 0) -> Anchor | None:
        """The anchor of the point `from_end` tokens before the stream's end; None when the ledger does not reach it
        (tokens told before the ledger began)."""
        following, remaining = self.next_id, from_end
        for entry in reversed(self.entries):
            if remaining <= 0:
                break
            if remaining < entry.size:
                return Anchor(name, entry.id, entry.size - remaining, tokens_written)
            remaining -= entry.size
            following = entry.id
        return Anchor(name, following, 0, tokens_written) if remaining == 0 else None

    def _index(self, entry_id: int) -> int:
        """Index of the first entry whose id is at least `entry_id` (`len(entries)` if none)."""
        return next((i for i, entry in enumerate(self.entries) if entry.id >= entry_id), len(self.entries))

    def spans(self) -> list[tuple[Entry, int, int]]:
        """Each entry with where its tokens start and end in the stream the ledger holds."""
        found, start = [], 0
        for entry in self.entries:
            found.append((entry, start, start + entry.size))
            start += entry.size
        return found

    def record(self) -> dict[str, Any]:
        """JSON-able data for the store."""
        rebuild = self.rebuild
        return {
            "entries": [
                {"id": e.id, "time": e.time, "role": e.role, "message": e.message, "tokens": e.tokens, "size": e.size}
                for e in self.entries
            ],
            "next_id": self.next_id,
            "origin": self.origin,
            "snapshots": [_anchor_record(anchor) for anchor in self.snapshots],
            "rebuild": None if rebuild is None else [_anchor_record(rebuild.start), rebuild.total, rebuild.done],
        }

    @classmethod
    def from_record(cls, data: dict[str, Any] | None, fresh: bool) -> Ledger:
        """The ledger `record()` wrote; an agent stored before ledgers existed gets an empty one, which holds the
        whole stream only if the agent was never told anything (`fresh`)."""
        if data is None:
            return cls(origin=fresh)
        entries = [
            Entry(int(e["id"]), float(e["time"]), str(e["role"]), e["message"], _ids(e["tokens"]), int(e["size"]))
            for e in data["entries"]
        ]
        rebuild = data.get("rebuild")
        return cls(
            entries=entries,
            next_id=int(data["next_id"]),
            origin=bool(data["origin"]),
            snapshots=[_anchor(fields) for fields in data["snapshots"]],
            rebuild=None if rebuild is None else Rebuild(_anchor(rebuild[0]), int(rebuild[1]), int(rebuild[2])),
        )


def _anchor_record(anchor: Anchor) -> list:
    return [anchor.name, anchor.entry, anchor.offset, anchor.tokens_written]


def _anchor(fields: Sequence) -> Anchor:
    name, entry, offset, tokens_written = fields
    return Anchor(str(name), int(entry), int(offset), int(tokens_written))


def _ids(tokens: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if tokens is None else tuple(int(t) for t in tokens)
