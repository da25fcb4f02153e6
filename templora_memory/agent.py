"""Per-agent memory state: the conversation, the adapter's training counters, and what users may inspect."""

from __future__ import annotations

import hashlib
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel

from templora_memory.conversation import Conversation
from templora_memory.distill import TaughtProbe
from templora_memory.errors import InvalidInputError
from templora_memory.kv_cache import PromptCache
from templora_memory.ledger import Ledger
from templora_memory.message import Message, Turn, fingerprint
from templora_memory.recall import BM25Index
from templora_memory.synthetic import QAPair

MAX_AGENT_ID_LENGTH = 128
_COUNTERS = (
    "steps",
    "tokens_written",
    "chunks_trained",
    "last_loss",
    "train_seconds",
    "last_prompt_tokens",
    "questions_written",
    "probes_seen",
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
    prompt_tokens: int
    """Prompt size of the last reply, system message and generation header included."""
    train_seconds: float
    """Wall-clock seconds spent training this agent's adapter (writing synthetic questions included)."""
    questions_written: int
    """Synthetic question–answer pairs trained with the agent's chunks (`synthetic_questions`)."""
    training: bool = False
    """True while a chunk trains in the background (parallel deployment)."""
    computed_tokens: int | None = None
    """Tokens the model ran through the agent's KV cache while resident (`cache_reuse`; None without it)."""
    cached_tokens: int | None = None
    """Tokens whose key/value states the agent's KV cache holds now (`cache_reuse`; None without it)."""
    evicted_tokens: int | None = None
    """Tokens whose states attention sinks evicted instead of recomputing the window (`attention_sinks`)."""
    kv_cache_bytes: int | None = None
    """RAM held by the agent's KV cache (`cache_reuse`; None without it)."""
    rebuilding: bool = False
    """True while the adapter is trained again without turns forgotten (`forget_turns`); until it ends, replies read
    the window and hybrid recall only, never the adapter, and new turns wait pending."""
    rebuild_tokens_left: int = 0
    """Tokens the rebuild under way has still to train."""

    @property
    def window_tokens(self) -> int:
        """Deprecated alias of `prompt_tokens` (it always was the last prompt's size); removed in the next release."""
        warnings.warn("AgentStats.window_tokens is deprecated; use prompt_tokens", DeprecationWarning, stacklevel=2)
        return self.prompt_tokens


@dataclass(frozen=True)
class AgentSnapshot:
    """A read-only copy of what the engine holds for one agent besides its weights (for inspection)."""

    agent_id: str
    system: tuple[Message, ...]
    turns: tuple[Turn, ...]
    """The turns still in reach of a window (older ones live only in the adapter)."""
    fingerprints: tuple[str, ...]
    """Identity of the newest turns the agent received (at most `FINGERPRINTS_KEPT` and a batch), oldest first;
    `stats.turns_seen` counts them all."""
    written: tuple[int, ...]
    """The last L_T tokens written: the next chunk's training input."""
    pending: tuple[int, ...]
    """Tokens received but not yet written."""
    last_questions: tuple[QAPair, ...]
    """Synthetic pairs trained with the last chunk (`synthetic_questions`)."""
    stats: AgentStats


@dataclass
class ChunkJob:
    """One chunk to write into an agent's adapter, and (once trained) what the update gave back.

    Built from the agent's state when the chunk is due; the parallel deployment also carries the agent's
    weights and optimizer state as they were, to train on its own copy of the model.
    """

    n_tokens: int
    input_ids: torch.Tensor
    labels: torch.Tensor
    chunk: list[int]
    system: list[Message]
    first_step: int
    seed: int
    messages: list[Message] = field(default_factory=list)
    """The conversation turns the chunk holds (what its probes are built from)."""
    replay: list[TaughtProbe] = field(default_factory=list)
    """Earlier probes rehearsed in this update."""
    weights: list[torch.Tensor] | None = None
    optimizer_state: dict[str, Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    loss: float = 0.0
    pairs: list[QAPair] = field(default_factory=list)
    taught: list[TaughtProbe] = field(default_factory=list)
    seconds: float = 0.0
    trained: list[torch.Tensor] | None = None
    trained_optimizer_state: dict[str, Any] | None = None
    error: BaseException | None = None


@dataclass
class AgentState:
    """Everything the engine tracks for one agent besides its adapter weights."""

    agent_id: str
    conversation: Conversation = field(default_factory=Conversation)
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
    reservoir: list[TaughtProbe] = field(default_factory=list)
    """Taught probes kept for replay (`replay_probes`), stored with the weights."""
    probes_seen: int = 0
    """Probes taught so far (the reservoir is a uniform sample of them)."""
    saved_steps: int = 0
    """Optimizer steps at the last commit of the adapter's weights (so unchanged weights are not rewritten)."""
    kv: PromptCache | None = None
    """The agent's KV cache with cache reuse (RAM only: rebuilt after eviction or restart)."""
    archive_index: BM25Index | None = None
    """Hybrid recall's index of the archive, grown as turns are archived (RAM only: rebuilt after a restart)."""
    job: ChunkJob | None = None
    """The chunk training in the background (parallel deployment), if any."""
    snapshot_files: dict[str, dict[str, bytes]] = field(default_factory=dict)
    """The adapter's snapshots' files by name, for an engine without a store (with one, they are in the store)."""
    users: int = 0
    """Calls running inside the agent's lock; an agent in use is never evicted."""
    evicted: bool = False
    """Set when the agent left RAM for the store: a caller holding this object must look it up again."""
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def record(self) -> dict[str, Any]:
        """Everything but the weights and optimizer, as JSON-able data for the store."""
        talk = self.conversation
        return {
            "agent_id": self.agent_id,
            "turns": [{"message": turn.message, "tokens": list(turn.tokens)} for turn in talk.turns],
            "fingerprints": talk.fingerprints,
            "turns_seen": talk.seen,
            "written": talk.written,
            "pending": talk.pending,
            "system": talk.system,
            "archive": talk.archive,
            "archive_cut": talk.archive_cut,
            "ledger": talk.ledger.record(),
            "counters": {name: getattr(self, name) for name in _COUNTERS},
        }

    @classmethod
    def from_record(cls, agent_id: str, record: dict[str, Any]) -> AgentState:
        """The state `record()` wrote; the weights and optimizer are restored by the engine."""
        turns = [Turn(t["message"], tuple(t["tokens"]), fingerprint(t["message"])) for t in record["turns"]]
        talk = Conversation(
            system=list(record["system"]),
            turns=turns,
            fingerprints=list(record["fingerprints"]),
            seen=int(record.get("turns_seen", len(record["fingerprints"]))),  # older records kept every fingerprint
            written=list(record["written"]),
            pending=list(record["pending"]),
            archive=list(record.get("archive", [])),  # records written before hybrid recall have none
            archive_cut=int(record.get("archive_cut", 0)),
        )
        state = cls(agent_id, conversation=talk)
        for name in _COUNTERS:  # a counter added after the record was written keeps its default
            setattr(state, name, record["counters"].get(name, getattr(state, name)))
        fresh = not talk.pending and not state.tokens_written  # an agent stored before ledgers: was it ever told?
        talk.ledger = Ledger.from_record(record.get("ledger"), fresh)
        state.saved_steps = state.steps
        return state

    @property
    def rebuilding(self) -> bool:
        """Whether the adapter is being trained again without forgotten turns (`templora_memory.rebuild`)."""
        return self.conversation.ledger.rebuild is not None

    def adapter(self) -> str | None:
        """The adapter replies read: the agent's own, or none (None) while it is rebuilt, never the old one."""
        return None if self.rebuilding else self.agent_id

    def stats(self) -> AgentStats:
        """A snapshot of the counters users inspect."""
        rebuild = self.conversation.ledger.rebuild
        return AgentStats(
            agent_id=self.agent_id,
            turns_seen=self.conversation.seen,
            tokens_written=self.tokens_written,
            tokens_pending=len(self.conversation.pending),
            chunks_trained=self.chunks_trained,
            last_loss=self.last_loss,
            prompt_tokens=self.last_prompt_tokens,
            train_seconds=round(self.train_seconds, 3),
            questions_written=self.questions_written,
            training=self.job is not None,
            rebuilding=rebuild is not None,
            rebuild_tokens_left=rebuild.total - rebuild.done if rebuild is not None else 0,
            **(self.kv.stats() if self.kv is not None else {}),
        )

    def snapshot(self) -> AgentSnapshot:
        """A read-only copy for callers outside the engine."""
        talk = self.conversation
        return AgentSnapshot(
            agent_id=self.agent_id,
            system=tuple(talk.system),
            turns=tuple(talk.turns),
            fingerprints=tuple(talk.fingerprints),
            written=tuple(talk.written),
            pending=tuple(talk.pending),
            last_questions=tuple(self.last_questions),
            stats=self.stats(),
        )


def agent_seed(seed: int, agent_id: str) -> int:
    """The agent's own seed (LoRA initialisation, dropout), derived from the config's seed and its id."""
    digest = hashlib.sha256(f"{seed}:{agent_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def check_agent_id(agent_id: object) -> None:
    """Agent ids name memories on disk too: printable, at most 128 characters, no path separators."""
    if not isinstance(agent_id, str) or not agent_id.strip():
        raise InvalidInputError(f"agent_id must be a non-empty string, got {agent_id!r}")
    problem = (
        f"is longer than {MAX_AGENT_ID_LENGTH} characters"
        if len(agent_id) > MAX_AGENT_ID_LENGTH
        else "contains a path separator ('/' or '\\')"
        if "/" in agent_id or "\\" in agent_id
        else "contains a control character (such as NUL or a newline)"
        if not agent_id.isprintable()
        else "starts with '.'"
        if agent_id.startswith(".")
        else "has leading or trailing whitespace"
        if agent_id != agent_id.strip()
        else None
    )
    if problem:
        raise InvalidInputError(
            f"agent_id {agent_id[:40]!r} {problem}; use letters, digits, spaces and punctuation, e.g. 'npc-7'"
        )
