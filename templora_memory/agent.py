"""Per-agent memory state: the turns in reach of the window, the token stream, and training counters."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel

from templora_memory.synthetic import QAPair
from templora_memory.window import Message, Turn, fingerprint

_COUNTERS = (
    "steps",
    "tokens_written",
    "chunks_trained",
    "last_loss",
    "train_seconds",
    "last_prompt_tokens",
    "questions_written",
)


class AgentStats(BaseModel):
    """What an agent's memory holds right now; returned by `ParametricMemory.stats`."""

    agent_id: str
    """The agent these numbers belong to."""
    turns_seen: int
    """Conversation turns received so far (each counted once)."""
    tokens_written: int
    """Tokens trained into the agent's adapter (conversation turns and absorbed text)."""
    tokens_pending: int
    """Tokens received but not yet written; they are still in the prompt window."""
    chunks_trained: int
    """Temp-Lora updates run so far (k in Algorithm 1)."""
    last_loss: float | None
    """Mean training loss of the last chunk, its KL and question terms included (None before the first)."""
    window_tokens: int
    """Prompt size of the last call, system message and generation header included."""
    train_seconds: float
    """Wall-clock seconds spent training this agent's adapter (writing synthetic questions included)."""
    questions_written: int
    """Synthetic question–answer pairs trained with the agent's chunks (`synthetic_questions`)."""


@dataclass
class AgentState:
    """Everything the engine tracks for one agent besides its adapter weights."""

    agent_id: str
    turns: list[Turn] = field(default_factory=list)
    """Recent turns that may still appear in a window, oldest first."""
    fingerprints: list[str] = field(default_factory=list)
    """Identity of every turn ever received, oldest first (to never write a turn twice)."""
    written: list[int] = field(default_factory=list)
    """The last L_T tokens already written: training input for the next chunk."""
    pending: list[int] = field(default_factory=list)
    """Tokens not yet written, oldest first (m in Algorithm 1)."""
    system: list[Message] = field(default_factory=list)
    """The last system message(s) received, reused when a call brings none."""
    optimizer: torch.optim.Optimizer | None = None
    steps: int = 0
    tokens_written: int = 0
    chunks_trained: int = 0
    last_loss: float | None = None
    train_seconds: float = 0.0
    last_prompt_tokens: int = 0
    questions_written: int = 0
    last_questions: list[QAPair] = field(default_factory=list)
    """The synthetic `QAPair`s trained with the last chunk (RAM only, for inspection)."""
    saved_steps: int = 0
    """Optimizer steps at the last commit of the adapter's weights (so unchanged weights are not rewritten)."""
    backlog: list[Message] = field(default_factory=list)
    """Journaled turns that arrived after the last commit, replayed on the next call after a restart."""
    kv: Any = None
    """The agent's `PromptCache` with cache reuse (RAM only: rebuilt after eviction or restart)."""
    job: Any = None
    """The chunk training in the background (parallel deployment), if any."""
    users: int = 0
    """Calls running inside the agent's lock; an agent in use is never evicted."""
    evicted: bool = False
    """Set when the agent left RAM for the store: a caller holding this object must look it up again."""
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def new_messages(self, messages: list[Message], fingerprints: list[str]) -> list[Message]:
        """The messages not seen before: drop the longest prefix that repeats the end of what was seen."""
        for overlap in range(min(len(self.fingerprints), len(fingerprints)), 0, -1):
            if self.fingerprints[-overlap:] == fingerprints[:overlap]:
                return messages[overlap:]
        return messages

    def record(self) -> dict[str, Any]:
        """Everything but the weights and optimizer, as JSON-able data for the store."""
        return {
            "agent_id": self.agent_id,
            "turns": [{"message": turn.message, "tokens": list(turn.tokens)} for turn in self.turns],
            "fingerprints": self.fingerprints,
            "written": self.written,
            "pending": self.pending,
            "system": self.system,
            "counters": {name: getattr(self, name) for name in _COUNTERS},
        }

    @classmethod
    def from_record(cls, agent_id: str, record: dict[str, Any]) -> AgentState:
        """The state `record()` wrote; the weights and optimizer are restored by the engine."""
        turns = [Turn(t["message"], tuple(t["tokens"]), fingerprint(t["message"])) for t in record["turns"]]
        state = cls(
            agent_id,
            turns=turns,
            fingerprints=list(record["fingerprints"]),
            written=list(record["written"]),
            pending=list(record["pending"]),
            system=list(record["system"]),
        )
        for name in _COUNTERS:  # a counter added after the record was written keeps its default
            setattr(state, name, record["counters"].get(name, getattr(state, name)))
        state.saved_steps = state.steps
        return state

    def stats(self) -> AgentStats:
        """A snapshot of the counters users inspect."""
        return AgentStats(
            agent_id=self.agent_id,
            turns_seen=len(self.fingerprints),
            tokens_written=self.tokens_written,
            tokens_pending=len(self.pending),
            chunks_trained=self.chunks_trained,
            last_loss=self.last_loss,
            window_tokens=self.last_prompt_tokens,
            train_seconds=round(self.train_seconds, 3),
            questions_written=self.questions_written,
        )
