"""One agent's conversation as bookkeeping: which turns are new, its written and pending tokens, and the archive.

No model, no training, no I/O. The conversation is a token stream (paper: the text Y); tokens not yet
written into the adapter are `pending` (m in Algorithm 1), the last L_T written ones stay as the next chunk's
training input. Rendering is `rendering`'s job, the prompt window `window`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from templora_memory.ledger import Ledger
from templora_memory.message import Message, Turn, fingerprint

FINGERPRINTS_KEPT = 2048
"""Identities of the newest turns a conversation keeps to recognise a resent history (`Conversation.unseen`)."""
ARCHIVE_KEPT = 2048
"""The most turns that left the window a conversation keeps as text for hybrid recall (the newest ones)."""


@dataclass
class Conversation:
    """An agent's turns in reach of the window, the newest turns' identities, and its written and pending tokens."""

    system: list[Message] = field(default_factory=list)
    """The last system message(s) received, reused when a call brings none."""
    turns: list[Turn] = field(default_factory=list)
    """Recent turns that may still appear in a window, oldest first."""
    fingerprints: list[str] = field(default_factory=list)
    """Identity of the newest turns received (the last `FINGERPRINTS_KEPT`, up to a batch more), oldest first: a
    resent history is recognised by them, so no turn is written twice."""
    seen: int = 0
    """Turns ever received, each counted once (the journal numbers turns by it); at least `len(fingerprints)`."""
    written: list[int] = field(default_factory=list)
    """The last L_T tokens already written: training input for the next chunk."""
    pending: list[int] = field(default_factory=list)
    """Tokens not yet written, oldest first (m in Algorithm 1)."""
    archive: list[Message] = field(default_factory=list)
    """Turns that left every window, kept as text only for hybrid recall (`recall_tokens`), oldest first: the last
    `ARCHIVE_KEPT`, up to a batch more."""
    archive_cut: int = 0
    """Turns cut from the archive's front so far (hybrid recall indexes the archive anew when it moves)."""
    ledger: Ledger = field(default_factory=Ledger)
    """Every turn and absorbed text received, with ids, oldest first (bounded: see `templora_memory.ledger`)."""

    def __post_init__(self) -> None:
        self.seen = max(self.seen, len(self.fingerprints))

    @property
    def sizes(self) -> list[int]:
        """Each turn's token count, oldest first."""
        return [len(turn.tokens) for turn in self.turns]

    @property
    def last_message(self) -> Message | None:
        """The newest turn's message (what the next turn is rendered after)."""
        return self.turns[-1].message if self.turns else None

    def unseen(self, messages: Sequence[Message]) -> list[Message]:
        """The messages not seen before: drop the longest prefix that repeats the end of what was seen."""
        return list(messages[self._overlap([fingerprint(m) for m in messages]) :])

    def _overlap(self, prints: Sequence[str]) -> int:
        """Length of the longest prefix of `prints` that repeats the end of what was seen. Only the kept fingerprints
        are compared: a longer prefix counts when it ends with all of them (a client resending its whole history)."""
        kept = self.fingerprints
        if not kept:
            return 0
        for end in range(min(self.seen, len(prints)), 0, -1):
            if prints[end - 1] != kept[-1]:
                continue  # cheap first test: the overlap ends with the newest turn seen
            n = min(end, len(kept))
            if prints[end - n : end] == kept[-n:]:
                return end
        return 0

    def append(self, turn: Turn) -> None:
        """Receive one turn: its tokens join the pending stream (and past the bound, the oldest fingerprints go)."""
        self.turns.append(turn)
        self.fingerprints.append(turn.fingerprint)
        self.seen += 1
        trimmed(self.fingerprints, FINGERPRINTS_KEPT)
        self.pending.extend(turn.tokens)
        self.ledger.add_turn(turn)

    def add_text(self, tokens: list[int]) -> None:
        """Receive an absorbed text's tokens: they join the pending stream (and the ledger)."""
        self.pending.extend(tokens)
        self.ledger.add_text(tokens)

    def pending_messages(self, n_tokens: int) -> list[Message]:
        """The messages whose tokens overlap the first `n_tokens` pending tokens (what the next chunk says)."""
        end, overlapping = len(self.pending), []  # `end`: where each turn ends, counted from the pending start
        for turn in reversed(self.turns):
            start = end - len(turn.tokens)
            if end <= 0:
                break
            if start < n_tokens:
                overlapping.append(turn.message)
            end = start
        return overlapping[::-1]

    def unwritten_outside(self, start: int) -> int:
        """Pending tokens that a window starting at turn `start` no longer holds (they must be written first)."""
        return max(0, len(self.pending) - sum(len(turn.tokens) for turn in self.turns[start:]))

    def mark_written(self, n_tokens: int, train_context_tokens: int) -> list[int]:
        """Move the first `n_tokens` pending tokens to the written stream (keeping its last L_T); returns them."""
        chunk, self.pending = self.pending[:n_tokens], self.pending[n_tokens:]
        self.keep_context(chunk, train_context_tokens)
        return chunk

    def keep_context(self, chunk: list[int], train_context_tokens: int) -> None:
        """After `chunk` is written, keep the last L_T written tokens as the next chunk's training input."""
        self.written = (self.written + chunk)[-train_context_tokens:] if train_context_tokens else []

    def _first_pending_turn(self) -> int:
        """Index of the oldest turn with a token still pending (`len(turns)` when none is)."""
        index, covered = len(self.turns), 0
        while index > 0 and covered < len(self.pending):
            index -= 1
            covered += len(self.turns[index].tokens)
        return index

    def drop_before(self, start: int, archive: bool = False) -> None:
        """Let go of the turns before `start` that are written (they left the window); `archive` keeps their text.
        A turn whose tokens are still pending (a bounded write left them) stays until they are written."""
        start = min(start, self._first_pending_turn())
        if archive:
            self.archive.extend(turn.message for turn in self.turns[:start])
            self.archive_cut += trimmed(self.archive, ARCHIVE_KEPT)
        self.turns = self.turns[start:]


def trimmed(items: list, kept: int) -> int:
    """Cut `items` back to its newest `kept` once it holds more than `kept` + `kept` // 4, so the cut (a copy of the
    list) is paid once per `kept` // 4 additions, not at each; returns how many were cut."""
    cut = len(items) - kept if len(items) > kept + kept // 4 else 0
    del items[:cut]
    return cut
