"""What an agent's adapter recalls: each fact its user stated, asked of the adapter alone, and scored.

The probes are the cloze questions the default probe writer teaches (`templora_memory.probes`): every statement of
the user's that names something (its salient span: a name, a number, a place) restated in the assistant's voice,
the span asked for ("Remind me: your daughter is called what?"). Each is asked with the agent's system message and
the question only (no window, no recall), so what answers is the adapter, and is scored:

- "answered": the greedy reply names the span;
- "likely": it does not, but the adapter makes the span, after the answer's opening ("Your daughter is called"),
  at least e^`LIKELY_MARGIN` times as likely per token as the base model does (a heuristic, not tuned);
- "lost": neither.

Nothing is written. While the adapter is rebuilt no adapter answers, so every score is the base model's.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from templora_memory.errors import InvalidInputError
from templora_memory.generation import CHAT_REPETITION_PENALTY, Sampling
from templora_memory.ledger import Entry
from templora_memory.message import Message
from templora_memory.probes import cloze, restate, salient_span, statements, swap_person
from templora_memory.rendering import ChatRenderer
from templora_memory.residency import Residency

LIKELY_MARGIN = 1.0
"""Nats per token by which the adapter must beat the base model on the span for "likely"."""
ANSWER_TOKENS = 24
"""Greedy tokens generated per question."""
MAX_RECALLS = 256
"""Most probes one call scores (each costs a short generation)."""
Score = Callable[[str | None, list[int], list[int]], list[float]]
"""`MemoryEngine.log_likelihood`: per-token log-probabilities of a continuation, with an agent's adapter or none."""
Generate = Callable[[str, list[int], Sampling], Sequence[str]]
"""`MemoryEngine.stream_completion`: the text pieces generated after a prompt with the agent's adapter."""


class Recall(BaseModel):
    """One fact the user stated, and how the agent's adapter answers for it."""

    turn_id: int
    """The ledger id of the turn that stated it."""
    question: str
    expected: str
    """The answer that restates what was said."""
    span: str
    """The name or number the answer must name."""
    reply: str
    """What the adapter answers, greedy, from the question alone."""
    nll: float
    """Mean negative log-likelihood per token of the span after the answer's opening, with the adapter."""
    base_nll: float
    """The same with the base model (no adapter)."""
    status: Literal["answered", "likely", "lost"]


@dataclass(frozen=True)
class _Probe:
    turn_id: int
    question: str
    expected: str
    span: str
    opening: str
    """The expected answer's text before the span."""


class Readout:
    """Scores the probes of an agent's ledger against its adapter, through the engine's own reads."""

    def __init__(
        self,
        residency: Residency,
        renderer: ChatRenderer,
        encode: Callable[[str], list[int]],
        score: Score,
        generate: Generate,
    ) -> None:
        self.residency = residency
        self.renderer = renderer
        self.encode = encode
        self.score = score
        self.generate = generate

    def recalls(self, agent_id: str, limit: int) -> list[Recall]:
        """The newest `limit` facts the user stated (oldest first), each scored against the adapter."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_RECALLS:
            raise InvalidInputError(f"limit must be an integer from 1 to {MAX_RECALLS}, got {limit!r:.40}", "limit")
        self.residency.require(agent_id)
        with self.residency.locked(agent_id) as state:
            system = list(state.conversation.system)
            probes = probes_of(state.conversation.ledger.entries, limit)
        return [self._scored(agent_id, system, probe) for probe in probes]

    def _scored(self, agent_id: str, system: list[Message], probe: _Probe) -> Recall:
        """Ask the adapter the probe's question; score its reply and the span's likelihood against the base model."""
        prompt = self.renderer.prompt(system, self.renderer.turns([{"role": "user", "content": probe.question}]))
        opened = prompt + self.encode(probe.opening) if probe.opening else prompt
        span = self.encode(f" {probe.span}" if probe.opening else probe.span)
        nll, base_nll = (mean_nll(self.score(reader, opened, span)) for reader in (agent_id, None))
        sampling = Sampling(ANSWER_TOKENS, repetition_penalty=CHAT_REPETITION_PENALTY, penalised=())
        reply = "".join(self.generate(agent_id, prompt, sampling)).strip()
        if _normalised(probe.span) in _normalised(reply):
            status = "answered"
        else:
            status = "likely" if nll <= base_nll - LIKELY_MARGIN else "lost"
        return Recall(
            turn_id=probe.turn_id,
            question=probe.question,
            expected=probe.expected,
            span=probe.span,
            reply=reply,
            nll=round(nll, 4),
            base_nll=round(base_nll, 4),
            status=status,
        )


def probes_of(entries: Sequence[Entry], limit: int) -> list[_Probe]:
    """The cloze probes of the newest `limit` statements users made in these entries that name something."""
    found: list[_Probe] = []
    for entry in reversed(entries):
        if entry.role != "user":
            continue
        for sentence in reversed(statements(entry.text())):
            span = salient_span(sentence)
            expected = restate(sentence)
            asked = swap_person(span) if span else None
            question = cloze(expected, asked) if asked else None
            if question:
                found.append(_Probe(entry.id, question, expected, asked, expected[: expected.rfind(asked)].rstrip()))
            if len(found) == limit:
                return found[::-1]
    return found[::-1]


def mean_nll(logprobs: Sequence[float]) -> float:
    """Mean negative log-likelihood per token (the benchmarks score answers with it too)."""
    return -sum(logprobs) / max(1, len(logprobs))


def _normalised(text: str) -> str:
    """Lower case, no punctuation, single spaces, padded: a span is named when its padded form is in the reply's."""
    words = text.lower().translate(str.maketrans("", "", string.punctuation)).split()
    return f" {' '.join(words)} "
