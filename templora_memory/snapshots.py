"""Snapshots: copies of an agent's adapter at points of its stream, so that forgetting a turn retrains only what came
after the nearest copy before it (`templora_memory.rebuild`).

Every `snapshot_tokens` tokens written, the adapter's weights, its optimizer moments (as `store_optimizer` says),
the probes kept for replay, its counters and the last L_T tokens written are copied: into the store under
agents/<key>/snapshots/<name>/ (written once, each file's sha256 checked when read back), or, for an engine without
a store, into the agent's RAM. Where a copy stands in the stream is its `Anchor` in the ledger, committed with the
agent's state; a copy the committed state no longer names is removed after the next commit. At most
`snapshots_kept` stay, spread over the ledger: past it the one whose loss leaves the smallest gap goes. The origin
(a new adapter) is a copy that costs nothing.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from templora_memory import trainer
from templora_memory.adapter_files import ADAPTER_WEIGHTS, WEIGHT_FILES, Weights, decode_weights, encode_weights
from templora_memory.adapters import AdapterBank
from templora_memory.agent import AgentState, agent_seed
from templora_memory.config import TempLoraConfig
from templora_memory.distill import TaughtProbe
from templora_memory.errors import DamagedAgentError
from templora_memory.ledger import ORIGIN, Anchor
from templora_memory.store import AgentStore, store_key
from templora_memory.versions import DIGESTS, digest, manifest, read_verified

FOLDER = "snapshots"
INFO = "snapshot.json"
"""The counters and the training context of a copy (its other files are the adapter's, as a version holds them)."""
COUNTERS = ("steps", "chunks_trained", "tokens_written", "probes_seen", "questions_written")
"""The counters that describe what an adapter was trained on, put back with it."""


@dataclass
class Copy:
    """A snapshot read back: its weights, counters and the L_T tokens written before it."""

    name: str
    weights: Weights | None
    counters: dict[str, int]
    written: list[int]


def unwritten(state: AgentState) -> int:
    """Tokens at the stream's end the adapter was not trained on: the pending ones, and what a rebuild has left."""
    rebuild = state.conversation.ledger.rebuild
    return len(state.conversation.pending) + (rebuild.total - rebuild.done if rebuild is not None else 0)


class Snapshots:
    """Takes, reads back and removes the copies of one engine's agents (in its store, or in RAM without one)."""

    def __init__(
        self, bank: AdapterBank, config: TempLoraConfig, model_lock: threading.RLock, store: AgentStore | None
    ) -> None:
        self.bank = bank
        self.config = config
        self.model_lock = model_lock
        self.store = store

    def take_if_due(self, state: AgentState) -> None:
        """After a commit: copy the adapter once `snapshot_tokens` were written since the newest copy (or the
        origin), and thin the copies to `snapshots_kept`; the copies the commit no longer names are removed first."""
        ledger, every = state.conversation.ledger, self.config.snapshot_tokens
        last = max((anchor.tokens_written for anchor in ledger.starts()), default=0)
        if not every or state.tokens_written - last < every:
            return
        name = f"s{state.tokens_written:010d}-{uuid.uuid4().hex[:8]}"
        anchor = ledger.anchor_at(unwritten(state), name, state.tokens_written)
        if anchor is None:  # the stream before the ledger began: no place to rebuild from
            return
        self.prune(state)
        self._put(state, name, self._files(state))
        ledger.snapshots.append(anchor)
        while len(ledger.snapshots) > self.config.snapshots_kept:
            del ledger.snapshots[_thinned(ledger.snapshots)]

    def read(self, state: AgentState, anchor: Anchor) -> Copy:
        """The copy at `anchor` read back (the origin's is a new adapter); `DamagedAgentError` if it is not whole."""
        if anchor.name == ORIGIN:
            return Copy(ORIGIN, None, dict.fromkeys(COUNTERS, 0), [])
        files = self._get(state, anchor.name)
        try:
            weights = decode_weights(files)
            info = json.loads(files[INFO])
            return Copy(anchor.name, weights, {k: int(info["counters"][k]) for k in COUNTERS}, list(info["written"]))
        except (OSError, ValueError, RuntimeError, TypeError, KeyError) as exc:
            raise DamagedAgentError(f"snapshot {anchor.name} of agent {state.agent_id!r} is damaged ({exc})") from exc

    def restore(self, state: AgentState, copy: Copy) -> None:
        """Put the agent's adapter, optimizer, replay probes, counters and training context back as `copy` holds them
        (its next commit writes the weights)."""
        agent_id = state.agent_id
        with self.model_lock:
            if copy.weights is None:
                self.bank.reset(agent_id, agent_seed(self.config.seed, agent_id))
            else:
                self.bank.load_weights(agent_id, copy.weights.adapter)
        state.optimizer, state.reservoir = None, []
        if copy.weights is not None:
            if copy.weights.optimizer is not None:
                state.optimizer = trainer.new_optimizer(self.bank.parameters(agent_id), self.config)
                state.optimizer.load_state_dict(copy.weights.optimizer)
            state.reservoir = [TaughtProbe.from_record(record) for record in copy.weights.replay]
        for name, value in copy.counters.items():
            setattr(state, name, value)
        state.conversation.written = list(copy.written)
        state.saved_steps = -1  # the weights are not the committed ones any more

    def prune(self, state: AgentState) -> None:
        """Remove the copies the agent's state does not name (call it after a commit, which makes that state
        durable: a copy dropped since the one before is then no longer needed by any committed state)."""
        named = {anchor.name for anchor in state.conversation.ledger.snapshots}
        if self.store is None:
            for name in [name for name in state.snapshot_files if name not in named]:
                del state.snapshot_files[name]
            return
        folder = f"agents/{store_key(state.agent_id)}/{FOLDER}"
        for name in self.store.blobs.children(folder):
            if name not in named:
                self.store.blobs.remove_tree(f"{folder}/{name}")

    def _files(self, state: AgentState) -> dict[str, bytes]:
        """The copy's files: the adapter's, as a committed version holds them, and its counters and context."""
        with self.model_lock:
            tensors, peft_config = self.bank.weights(state.agent_id)
            kept = state.optimizer is not None and self.config.store_optimizer
            optimizer = state.optimizer.state_dict() if kept else None
            replay = [probe.to_record() for probe in state.reservoir]
            files = encode_weights(Weights(tensors, peft_config, optimizer, replay))
        info = {"counters": {name: getattr(state, name) for name in COUNTERS}, "written": state.conversation.written}
        return {**files, INFO: json.dumps(info).encode()}

    def _put(self, state: AgentState, name: str, files: dict[str, bytes]) -> None:
        """Keep the copy's files: in the store (its digests last, so a copy without them is partial), or in RAM."""
        if self.store is None:
            state.snapshot_files[name] = files
            return
        folder = f"agents/{store_key(state.agent_id)}/{FOLDER}/{name}"
        for file, data in files.items():
            self.store.blobs.write(f"{folder}/{file}", data)
        self.store.blobs.write(f"{folder}/{DIGESTS}", manifest({file: digest(data) for file, data in files.items()}))

    def _get(self, state: AgentState, name: str) -> dict[str, Any]:
        """The copy's files, checked against their digests; `DamagedAgentError` when missing or changed."""
        if self.store is None:
            files = state.snapshot_files.get(name)
        else:
            folder = f"agents/{store_key(state.agent_id)}/{FOLDER}/{name}"
            files = read_verified(self.store.blobs, folder, (*WEIGHT_FILES, INFO))[0]
        if files is None or files.get(ADAPTER_WEIGHTS) is None or files.get(INFO) is None:
            raise DamagedAgentError(f"snapshot {name} of agent {state.agent_id!r} is missing")
        return {file: files.get(file) for file in (*WEIGHT_FILES, INFO)}


def _thinned(anchors: list[Anchor]) -> int:
    """Which copy goes when there are too many: the one whose loss leaves the smallest gap between its neighbours
    (never the oldest or the newest); the oldest when only two are kept."""
    if len(anchors) < 3:
        return 0
    gaps = [anchors[i + 1].tokens_written - anchors[i - 1].tokens_written for i in range(1, len(anchors) - 1)]
    return 1 + gaps.index(min(gaps))
