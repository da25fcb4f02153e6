"""What users see of an agent's memory and change in it: its ledger listed, chosen turns forgotten for good, and a
turn corrected.

`forget_turns` takes turns (by ledger id, or every one whose text contains a string) out of the window, the hybrid
recall archive, the pending stream and the ledger at once, and commits the agent keeping no earlier version, so
their text leaves the store. If any of their tokens had reached the adapter, the adapter is put back to the nearest
snapshot before them and rebuilt without them (`templora_memory.rebuild`); until that ends it is not used at all.
`correct_turn` tells the corrected text as a new turn by the same speaker and forgets the old one, so the old value
leaves the adapter as a forgotten turn does and the new one is the newest thing the agent was told.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel

from templora_memory.agent import AgentState
from templora_memory.conversation import Conversation
from templora_memory.errors import DamagedAgentError, InvalidInputError, UnknownTurnError
from templora_memory.ledger import Anchor, Entry, LedgerTurn
from templora_memory.rebuild import Rebuilder
from templora_memory.residency import Residency
from templora_memory.snapshots import Copy
from templora_memory.window import PromptWindow
from templora_memory.writing import ChunkWriter

CORRECTABLE = ("user", "assistant")
"""Roles of the turns `correct_turn` takes (an absorbed text is forgotten and absorbed again instead)."""
Start = tuple[int, Copy, Anchor] | None
"""Where a rebuild without some turns starts: the first of them the adapter saw, the snapshot before it and its
anchor; None when the adapter saw none of them."""


class Forgotten(BaseModel):
    """What `forget_turns` did."""

    deleted: list[int]
    """Ids of the turns forgotten (none when nothing matched)."""
    rebuilding: bool
    """True while the adapter is trained again without them; replies meanwhile read the window and recall only."""
    rebuild_tokens: int
    """Tokens the rebuild trains again (0 when none of theirs had reached the adapter)."""
    rebuilt_from: str | None
    """The snapshot the rebuild starts from ("origin": a new adapter); None without a rebuild."""


class Corrected(Forgotten):
    """What `correct_turn` did: the old turn forgotten (its id in `deleted`, its rebuild if any), the new one told."""

    added: int
    """The id of the turn that now says it."""


class Corrections:
    """Lists an agent's ledger, forgets turns from everything that holds them, and corrects a turn."""

    def __init__(self, residency: Residency, writer: ChunkWriter, rebuilder: Rebuilder, window: PromptWindow) -> None:
        self.residency = residency
        self.writer = writer
        self.rebuilder = rebuilder
        self.window = window
        self.tokenizer = rebuilder.renderer.tokenizer

    def turns(self, agent_id: str, after: int | None, limit: int | None) -> list[LedgerTurn]:
        """The ledger's entries after the id `after` (all: None), `limit` at most (all: None), oldest first."""
        _check_page(after, limit)
        self.residency.require(agent_id)
        with self.residency.locked(agent_id) as state:
            talk = state.conversation
            spans = [span for span in talk.ledger.spans() if after is None or span[0].id > after][:limit]
            boundary = sum(entry.size for entry in talk.ledger.entries) - len(talk.pending)
            return [self._listed(entry, end <= boundary) for entry, _, end in spans]

    def forget_turns(self, agent_id: str, turn_ids: Iterable[int], matching: str | None) -> Forgotten:
        """Forget the turns with these ids and every turn whose text contains `matching` (case-insensitive)."""
        ids = _checked_ids(turn_ids, matching)
        self.residency.require(agent_id)
        with self.residency.locked(agent_id) as state:
            self.writer.settle(state, True)  # a chunk training in the background is taken in first
            chosen = self._chosen(state, ids, matching)
            if not chosen:
                return Forgotten(deleted=[], rebuilding=state.rebuilding, rebuild_tokens=0, rebuilt_from=None)
            forgotten = self._forget(state, chosen, self._start(state, chosen))
        if forgotten.rebuilding:
            self.rebuilder.schedule(agent_id)
        return forgotten

    def correct_turn(self, agent_id: str, turn_id: int, content: str) -> Corrected:
        """Tell `content` as a new turn by the speaker of turn `turn_id`, then forget that turn. The new turn is
        journaled before the old one is taken out, so a crash in between leaves both, never neither."""
        _checked_ids([turn_id], None)
        _check_correction(content)
        self.residency.require(agent_id)
        with self.residency.locked(agent_id) as state:
            self.writer.settle(state, True)
            role = self._correctable_role(state, turn_id)
            start = self._start(state, {turn_id})  # checked before anything changes
            told = self.window.render([{"role": role, "content": content}], state.conversation.last_message)
            self.residency.journal(state, told)
            state.conversation.append(told[0])
            added = state.conversation.ledger.entries[-1].id
            forgotten = self._forget(state, {turn_id}, start)
        if forgotten.rebuilding:
            self.rebuilder.schedule(agent_id)
        return Corrected(**forgotten.model_dump(), added=added)

    def _forget(self, state: AgentState, chosen: set[int], start: Start) -> Forgotten:
        """Take the chosen turns out of everything, start the adapter's rebuild from `start`, commit keeping no
        earlier version."""
        _remove(state.conversation, chosen)
        if start is not None:
            first, copy, anchor = start
            ledger = state.conversation.ledger
            ledger.snapshots = [kept for kept in ledger.snapshots if kept.before(first)]
            self.rebuilder.start(state, copy, anchor)
        state.kv = state.archive_index = None  # what was computed from their text
        self.residency.commit(state, weights=True, purge=True)
        self.rebuilder.snapshots.prune(state)
        rebuild = state.conversation.ledger.rebuild
        return Forgotten(
            deleted=sorted(chosen),
            rebuilding=rebuild is not None,
            rebuild_tokens=rebuild.total if rebuild is not None else 0,
            rebuilt_from=start[2].name if start is not None else None,
        )

    def _correctable_role(self, state: AgentState, turn_id: int) -> str:
        """The role of turn `turn_id`; an error when the ledger does not hold it or it is not a user or assistant
        turn."""
        role = next((entry.role for entry in state.conversation.ledger.entries if entry.id == turn_id), None)
        if role is None:
            self._chosen(state, [turn_id], None)  # raises UnknownTurnError, worded as for forget_turns
        if role not in CORRECTABLE:
            raise InvalidInputError(
                f"turn {turn_id} is a {role} entry; only user and assistant turns can be corrected (forget an absorbed "
                "text and absorb the corrected one)",
                param="turn_id",
            )
        return role

    def _chosen(self, state: AgentState, ids: list[int], matching: str | None) -> set[int]:
        """The ids of the turns to forget; `UnknownTurnError` for an id the ledger does not hold."""
        entries = state.conversation.ledger.entries
        held = {entry.id for entry in entries}
        missing = [turn_id for turn_id in ids if turn_id not in held]
        if missing:
            raise UnknownTurnError(
                f"agent {state.agent_id[:80]!r} has no turn {missing[0]} in its ledger (forgotten already, compacted "
                "away past ledger_turns, or never given); turns() lists the ones it holds",
            )
        needle = matching.casefold() if matching is not None else None
        found = {entry.id for entry in entries if needle is not None and needle in self._text(entry).casefold()}
        return set(ids) | found

    def _start(self, state: AgentState, chosen: set[int]) -> Start:
        """Where the adapter's rebuild without the chosen turns starts: the newest snapshot before the first of them
        it saw that reads back whole (None: it saw none); an error saying why when none does."""
        reached = _written(state.conversation, chosen)
        if not reached:
            return None
        first = min(reached)
        candidates = [anchor for anchor in state.conversation.ledger.starts() if anchor.before(first)]
        for anchor in reversed(candidates):
            try:
                return first, self.rebuilder.snapshots.read(state, anchor), anchor
            except DamagedAgentError as exc:
                problem = exc
        reason = f"its snapshots before it are damaged ({problem})" if candidates else "no snapshot lies before it"
        raise InvalidInputError(
            f"turn {first} of agent {state.agent_id[:80]!r} is in the adapter and {reason} (the ledger was compacted "
            "past the adapter's start): it cannot be taken out without the whole memory; forget() the agent, or raise "
            "ledger_turns and keep snapshot_tokens on so that later turns stay forgettable",
            param="turn_ids",
        )

    def _listed(self, entry: Entry, written: bool) -> LedgerTurn:
        return LedgerTurn(
            id=entry.id, time=entry.time, role=entry.role, content=self._text(entry), tokens=entry.size, written=written
        )

    def _text(self, entry: Entry) -> str:
        """What the entry said: a turn's text, or an absorbed text decoded."""
        return entry.text() if entry.tokens is None else self.tokenizer.decode(list(entry.tokens))


def _written(talk: Conversation, chosen: set[int]) -> list[int]:
    """The chosen entries with tokens the adapter was (or is being) trained on: those before the pending tokens."""
    spans = talk.ledger.spans()
    boundary = (spans[-1][2] if spans else 0) - len(talk.pending)
    return [entry.id for entry, start, _ in spans if entry.id in chosen and start < boundary]


def _remove(talk: Conversation, chosen: set[int]) -> None:
    """Take the chosen entries out of the pending stream, the window, the recall archive and the ledger."""
    spans = talk.ledger.spans()
    boundary = (spans[-1][2] if spans else 0) - len(talk.pending)
    gone = {position for entry, start, end in spans if entry.id in chosen for position in range(start, end)}
    talk.pending = [token for i, token in enumerate(talk.pending) if boundary + i not in gone]
    places = _held(talk)
    window = {places[i][1] for i in chosen if i in places and places[i][0] == "window"}
    archived = {places[i][1] for i in chosen if i in places and places[i][0] == "archive"}
    for entry in talk.ledger.entries:  # not matched from the newest: looked for in the archive by its text
        if entry.id in chosen and entry.id not in places and entry.message in talk.archive:
            archived.add(max(i for i, message in enumerate(talk.archive) if message == entry.message))
    talk.turns = [turn for i, turn in enumerate(talk.turns) if i not in window]
    talk.archive = [message for i, message in enumerate(talk.archive) if i not in archived]
    talk.ledger.entries = [entry for entry in talk.ledger.entries if entry.id not in chosen]


def _held(talk: Conversation) -> dict[int, tuple[str, int]]:
    """Where each ledger turn's text is held: ("window", index) or ("archive", index). The archive then the window
    hold the newest turns received, in order, as the ledger does: matched from the newest while they agree."""
    held = [("archive", i, m) for i, m in enumerate(talk.archive)]
    held += [("window", i, turn.message) for i, turn in enumerate(talk.turns)]
    turns = [entry for entry in talk.ledger.entries if entry.message is not None]
    places = {}
    for entry, (where, index, message) in zip(reversed(turns), reversed(held), strict=False):
        if message != entry.message:
            break
        places[entry.id] = (where, index)
    return places


def _checked_ids(turn_ids: object, matching: object) -> list[int]:
    """The turn ids as a list of ints, refusing anything else, and refusing a call that names no turn at all."""
    if isinstance(turn_ids, (str, bytes, int, dict)) or not isinstance(turn_ids, Iterable):
        raise InvalidInputError(f"turn_ids must be a list of turn ids (from turns()), got {turn_ids!r:.60}", "turn_ids")
    ids = list(turn_ids)
    wrong = [turn_id for turn_id in ids if isinstance(turn_id, bool) or not isinstance(turn_id, int)]
    if wrong:
        raise InvalidInputError(f"turn ids are integers (from turns()), got {wrong[0]!r:.60}", "turn_ids")
    if matching is not None and (not isinstance(matching, str) or not matching.strip()):
        raise InvalidInputError(f"matching must be a non-blank string, got {matching!r:.60}", "matching")
    if not ids and matching is None:
        raise InvalidInputError("name the turns to forget: turn_ids=[...] (ids from turns()) or matching='some text'")
    return ids


def _check_correction(content: object) -> None:
    """The corrected turn's text must be a non-blank string."""
    if not isinstance(content, str) or not content.strip():
        raise InvalidInputError(f"content must be the corrected turn's text, got {content!r:.60}", "content")


def _check_page(after: object, limit: object) -> None:
    """`after` is a turn id or None; `limit` a positive number or None."""
    if after is not None and (isinstance(after, bool) or not isinstance(after, int)):
        raise InvalidInputError(
            f"after must be a turn id (an integer from turns()) or None, got {after!r:.60}", "after"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInputError(f"limit must be a positive integer or None (all), got {limit!r:.60}", "limit")
