"""Which agents are in RAM: LRU order, per-agent locks, and load / evict / commit / restore through the store.

At most `max_resident` adapters stay in RAM; the least recently used idle agent goes to the store and
comes back on its next call (into the adapter slot of the agent leaving). Every commit goes through
`Residency.commit`: after each write call, each trained chunk, on eviction and on request. An agent in RAM
holds its lease in the store (one writer per agent across processes); it is given back when the agent leaves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from templora_memory import trainer
from templora_memory.adapter_files import Weights
from templora_memory.adapters import AdapterBank
from templora_memory.agent import AgentState, AgentStats, agent_seed, check_agent_id
from templora_memory.config import TempLoraConfig
from templora_memory.distill import TaughtProbe
from templora_memory.errors import ConfigError, DamagedAgentError, LeaseLostError, StoreError, UnknownAgentError
from templora_memory.kv_cache import PromptCache, RopeShift
from templora_memory.message import Turn
from templora_memory.rendering import ChatRenderer
from templora_memory.store import FORMAT_VERSION, AgentStore, StoredAgent, store_key

log = logging.getLogger("templora_memory")
_SHAPE_FIELDS = ("lora_rank", "lora_alpha", "target_modules")  # a stored adapter must match these
_LOADERS = 64  # agents are loaded by at most this many threads at once (one per agent)
Settle = Callable[[AgentState, bool], None]
"""The writer's `settle`: takes in (waiting, if asked) a chunk the agent is training in the background."""


def check_max_resident(max_resident: object) -> int | None:
    """`max_resident`, which must be a positive integer, or None for no limit."""
    if max_resident is not None and (
        isinstance(max_resident, bool) or not isinstance(max_resident, int) or max_resident < 1
    ):
        raise ConfigError(f"max_resident must be a positive integer or None (no limit), got {max_resident!r}")
    return max_resident


class Residency:
    """The resident agents of one engine, and the only place that loads, evicts and commits them."""

    def __init__(
        self,
        bank: AdapterBank,
        config: TempLoraConfig,
        model_name: str,
        renderer: ChatRenderer,
        model_lock: threading.RLock,
        store: AgentStore | None = None,
        max_resident: int | None = None,
        rope_shift: RopeShift | None = None,
    ) -> None:
        self.bank = bank
        self.config = config
        self.model_name = model_name
        self.renderer = renderer
        self.model_lock = model_lock
        self.store = store
        self.max_resident = max_resident
        self.rope_shift = rope_shift
        self._agents: OrderedDict[str, AgentState] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()  # re-entered when a commit refused during an eviction drops the agent
        self._loaders = [threading.Lock() for _ in range(_LOADERS)]  # one loader per agent, outside `_lock`
        self.damaged: dict[str, str] = {}
        """Store keys of the agents the last listing could not read, with the reason."""
        self.loaded: Callable[[AgentState], None] = lambda state: None
        """Called with each agent brought back from the store (a rebuild it had under way resumes)."""

    @contextlib.contextmanager
    def locked(self, agent_id: str) -> Iterator[AgentState]:
        """The agent's state, resident and locked by this thread (an agent in use is never evicted)."""
        check_agent_id(agent_id)
        while True:
            state = self._resident(agent_id)
            with state.lock:
                if state.evicted:
                    continue  # evicted between the lookup and the lock: look it up again
                with self._using(state):
                    yield state
                return

    @contextlib.contextmanager
    def resident(self, agent_id: str) -> Iterator[AgentState | None]:
        """The agent's state locked by this thread if it is in RAM, else None (nothing is loaded)."""
        state = self._lookup(agent_id)
        if state is None:
            yield None
            return
        with state.lock:
            if state.evicted:
                yield None
                return
            with self._using(state):
                yield state

    @contextlib.contextmanager
    def _using(self, state: AgentState) -> Iterator[None]:
        """Count a call inside the agent's lock (its lease checked first), so the agent is not evicted meanwhile."""
        self._check_lease(state)
        state.users += 1
        try:
            yield
        finally:
            state.users -= 1

    @contextlib.contextmanager
    def writing(self, agent_id: str) -> Iterator[AgentState]:
        """`locked`, and the agent is committed when the block completes (not when it fails)."""
        with self.locked(agent_id) as state:
            yield state
            self.commit(state)

    @contextlib.contextmanager
    def reading(
        self, agent_id: str | None, cache: PromptCache | None
    ) -> Iterator[tuple[PromptCache | None, str | None]]:
        """The agent locked for a read (nothing to lock for the base model, None), the KV cache to read with (`cache`
        if the caller keeps one, else the agent's own) and the adapter to read (none while it is rebuilt)."""
        if agent_id is None:
            yield cache, None
            return
        with self.locked(agent_id) as state:
            yield (cache if cache is not None else self.own_cache(state)), state.adapter()

    def own_cache(self, state: AgentState) -> PromptCache | None:
        """The agent's KV cache when `cache_reuse` is on (kept while the agent is resident, never stored)."""
        if not self.config.cache_reuse:
            return None
        if state.kv is None:
            state.kv = PromptCache(self.rope_shift)
        return state.kv

    def ids(self) -> list[str]:
        """Ids of the agents that have a memory, in RAM or in the store."""
        with self._lock:
            ids = set(self._agents)
        if self.store is not None:
            damaged = {}
            for key in self.store.keys():
                try:
                    ids.add(str(self.store.record(key).get("agent_id", key)))
                except DamagedAgentError as exc:  # one damaged agent must not hide the others
                    damaged[key] = str(exc)
                    log.warning("listing skips a damaged agent: %s", exc)
            self.damaged = damaged
        return sorted(ids)

    def resident_ids(self) -> list[str]:
        """Ids of the agents whose adapter is in RAM, least recently used first."""
        with self._lock:
            return list(self._agents)

    def exists(self, agent_id: str) -> bool:
        """True if the agent has a memory, in RAM or in the store."""
        check_agent_id(agent_id)
        with self._lock:
            if agent_id in self._agents:
                return True
        return self.store is not None and self.store.has(store_key(agent_id))

    def require(self, agent_id: str) -> None:
        """Raise `UnknownAgentError` if the agent has no memory (a read must not create one)."""
        if not self.exists(agent_id):
            raise UnknownAgentError(
                f"agent {agent_id[:80]!r} has no memory: no turn was ever written for it (or it was forgotten); "
                "check the id, or `exists()` first (agent_ids() lists the agents that have one)"
            )

    def stats(self, agent_id: str) -> AgentStats:
        """The agent's counters, read from RAM or from its stored record without loading it."""
        self.require(agent_id)
        state = self._agents.get(agent_id)
        if state is None and self.store is not None and self.store.has(store_key(agent_id)):
            with _naming(agent_id):
                record = self.store.record(store_key(agent_id))
                state = _from_record(agent_id, record) if record else None
        return (state or AgentState(agent_id)).stats()

    def forget(self, agent_id: str) -> bool:
        """Remove the agent from RAM and the store (loaded first, so under its lease); False if it had no memory."""
        check_agent_id(agent_id)
        if agent_id not in self.resident_ids() and (self.store is None or not self.store.has(store_key(agent_id))):
            return False
        with self.locked(agent_id) as state:
            with self._lock:
                del self._agents[agent_id]
                if self.store is not None:
                    self.store.delete(store_key(agent_id))
            with self.model_lock:
                state.evicted = True
                self.bank.delete(agent_id)
                state.optimizer = None
        return True

    def release(self, agent_id: str, settle: Settle) -> bool:
        """Send a resident agent to the store (its background chunk taken in first) and give its lease back;
        False if it was not in RAM."""
        with self._lock:
            state = self._agents.get(agent_id)
        if state is None:
            return False
        with state.lock:
            if state.evicted:
                return False
            settle(state, True)
            with self._lock:
                self._evict(state, keep_slot=False)
        return True

    def release_all(self, settle: Settle) -> dict[str, str]:
        """`release` every agent in RAM, going on past failures (logged); returns the failed ids with the error."""
        failed = {}
        for agent_id in self.resident_ids():
            try:
                self.release(agent_id, settle)
            except Exception as exc:  # noqa: BLE001 - one agent's fault must not keep the others from their commit
                log.error("agent %r could not be committed and released: %r", agent_id, exc)
                failed[agent_id] = f"{type(exc).__name__}: {str(exc)[:200]}"
        return failed

    def save(self, agent_id: str) -> None:
        """Commit the agent, weights included."""
        self._require_store("save")
        with self.locked(agent_id) as state:
            self.commit(state, weights=True)

    def export(self, agent_id: str, destination: str | os.PathLike) -> Path:
        """Commit the agent, then copy its committed version and journal into the new directory `destination`."""
        self._require_store("export")
        with self.locked(agent_id) as state:
            self.commit(state, weights=True)
            return self.store.export(store_key(agent_id), destination)

    def import_(self, source: str | os.PathLike, agent_id: str) -> AgentStats:
        """Install an exported agent directory as `agent_id`, which must have no memory in RAM or the store."""
        self._require_store("import")
        check_agent_id(agent_id)
        with self._lock:  # every resident agent is in the store too, so the store's check covers both
            self.store.import_(store_key(agent_id), source)
        with self.locked(agent_id) as state:
            return state.stats()

    def journal(self, state: AgentState, turns: Sequence[Turn]) -> None:
        """Make received turns durable before they are kept (replayed after a crash before the next commit)."""
        if self.store is None:
            return
        seen = state.conversation.seen
        for offset, turn in enumerate(turns):
            self.store.journal(store_key(state.agent_id), seen + offset, turn.message)

    def commit(self, state: AgentState, weights: bool = False, purge: bool = False) -> None:
        """Persist the agent; its weights only when trained since the last commit (or when asked). `purge`: keep no
        earlier version (a forgotten turn must leave the store)."""
        if self.store is None:
            return
        record = {"format_version": FORMAT_VERSION, "model": self.model_name, "config": self.config.model_dump()}
        payload = None
        if weights or state.steps != state.saved_steps:
            with self.model_lock:
                tensors, peft_config = self.bank.weights(state.agent_id)
            peft_config["base_model_name_or_path"] = self.model_name
            kept = state.optimizer is not None and self.config.store_optimizer
            optimizer = state.optimizer.state_dict() if kept else None
            replay = [probe.to_record() for probe in state.reservoir]
            payload = Weights(adapter=tensors, adapter_config=peft_config, optimizer=optimizer, replay=replay)
        try:
            self.store.commit(store_key(state.agent_id), {**record, **state.record()}, payload, purge)
        except LeaseLostError:
            self._drop(state)  # another writer has the agent now: the next call loads its commits
            raise
        state.saved_steps = state.steps

    def _resident(self, agent_id: str) -> AgentState:
        """The agent in RAM, loaded first if need be. Its lease (which may mean waiting for another process) and
        its files are taken outside the engine-wide lock, by one thread per agent."""
        state = self._lookup(agent_id)
        if state is not None:
            return state
        with self._loaders[hash(agent_id) % _LOADERS]:
            state = self._lookup(agent_id)
            if state is not None:
                return state
            key = store_key(agent_id)
            with _naming(agent_id):
                stored = self.store.acquire(key) if self.store is not None else None
            try:
                with self._lock, _naming(agent_id):
                    self._make_room()  # first, so the agent coming in reuses the adapter slot of one leaving
                    state = self._agents[agent_id] = self._install(agent_id, stored)
            except BaseException:
                if self.store is not None:
                    self.store.release(key)
                raise
            return state

    def _check_lease(self, state: AgentState) -> None:
        """Serve an agent only while this process's lease on it is good (see `Leases.check`); an agent another
        process took over leaves RAM uncommitted (its next call loads that process's commits)."""
        if self.store is None:
            return
        try:
            self.store.check(store_key(state.agent_id))
        except LeaseLostError:
            self._drop(state)
            raise

    def _lookup(self, agent_id: str) -> AgentState | None:
        """The agent if it is in RAM (now the most recently used), else None."""
        with self._lock:
            state = self._agents.get(agent_id)
            if state is not None:
                self._agents.move_to_end(agent_id)
            return state

    def _install(self, agent_id: str, stored: StoredAgent | None) -> AgentState:
        """Bring a stored agent into RAM, or create a fresh one (LoRA B = 0: the base model's behaviour)."""
        key = store_key(agent_id)
        if stored is not None and stored.record:
            self._check_compatible(key, stored.record)
        with self.model_lock:
            self.bank.add(agent_id, seed=agent_seed(self.config.seed, agent_id))
            try:
                state = self._restore(agent_id, stored) if stored is not None else AgentState(agent_id)
            except Exception:
                self.bank.delete(agent_id)
                raise
        state.conversation.ledger.kept = self.config.ledger_turns  # a restored one's was set before its journal
        if stored is None:
            self.commit(state)  # a new agent is listed by the store at once
        else:
            self.loaded(state)
        return state

    def _restore(self, agent_id: str, stored: StoredAgent) -> AgentState:
        """The agent as last committed, plus the turns journaled after that commit (written at its next write)."""
        state = _from_record(agent_id, stored.record) if stored.record else AgentState(agent_id)
        state.conversation.ledger.kept = self.config.ledger_turns  # before the journal's turns join it
        where = self.store.locate(store_key(agent_id))
        if stored.weights is not None:
            try:
                self.bank.load_weights(agent_id, stored.weights.adapter)
            except (ValueError, RuntimeError) as exc:
                raise StoreError(f"the adapter in {where} does not fit this model: {exc}") from exc
            if stored.weights.optimizer is not None:
                state.optimizer = trainer.new_optimizer(self.bank.parameters(agent_id), self.config)
                state.optimizer.load_state_dict(stored.weights.optimizer)
            state.reservoir = [TaughtProbe.from_record(record) for record in stored.weights.replay]
        elif state.steps:
            raise DamagedAgentError(f"{where} lost the weights of a trained adapter")
        talk = state.conversation
        backlog = [message for seq, message in stored.journal if seq >= talk.seen]
        try:
            turns = self.renderer.turns(backlog, talk.last_message)
        except (KeyError, TypeError, ValueError) as exc:
            raise DamagedAgentError(f"the journal in {where} holds a turn that is not a message ({exc!r:.80})") from exc
        for turn in turns:
            talk.append(turn)
        return state

    def _make_room(self) -> None:
        """Send least recently used, idle agents to the store until one more fits under `max_resident`."""
        if self.max_resident is None:
            return
        for agent_id in list(self._agents):
            if len(self._agents) < self.max_resident:
                return
            state = self._agents[agent_id]
            if not state.lock.acquire(blocking=False):
                continue
            try:
                if not (state.users or state.job is not None):
                    self._evict(state, keep_slot=True)  # the slot is reused by the agent coming in
            except LeaseLostError:
                continue  # another process writes this agent now; it left RAM without a commit
            finally:
                state.lock.release()

    def _evict(self, state: AgentState, keep_slot: bool) -> None:
        """Commit the agent, take its adapter out of RAM and give its lease back (its lock and `_lock` held)."""
        self.commit(state)
        with self.model_lock:
            self.bank.delete(state.agent_id, release=not keep_slot)
        state.optimizer, state.evicted = None, True
        del self._agents[state.agent_id]
        if self.store is not None:
            self.store.release(store_key(state.agent_id))

    def _drop(self, state: AgentState) -> None:
        """Forget the agent's RAM copy without committing it (its lock held)."""
        with self._lock:
            if self._agents.get(state.agent_id) is state:
                del self._agents[state.agent_id]
        with self.model_lock:
            if not state.evicted:
                self.bank.delete(state.agent_id)
        state.optimizer, state.evicted = None, True

    def _require_store(self, verb: str) -> None:
        if self.store is None:
            raise ConfigError(f"{verb} needs a store: create the engine with store='path/to/dir'")

    def _check_compatible(self, key: str, record: dict) -> None:
        """A stored agent must have been trained for this model with this LoRA shape."""
        stored_config = record.get("config", {})
        different = [f for f in _SHAPE_FIELDS if stored_config.get(f) != getattr(self.config, f)]
        if different or record.get("model") != self.model_name:
            detail = ", ".join(f"{f}={stored_config.get(f)!r} (engine: {getattr(self.config, f)!r})" for f in different)
            raise StoreError(
                f"the agent in {self.store.locate(key)} was trained for model {record.get('model')!r}"
                + (f" with {detail}" if detail else "")
                + f"; this engine runs {self.model_name!r}. Load it with the same model and LoRA shape."
            )


def _from_record(agent_id: str, record: dict) -> AgentState:
    """The agent's state from its stored record; a record of the wrong shape is a `DamagedAgentError`."""
    try:
        return AgentState.from_record(agent_id, record)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DamagedAgentError(f"its state.json has the wrong shape ({type(exc).__name__}: {exc!s:.80})") from exc


@contextlib.contextmanager
def _naming(agent_id: str) -> Iterator[None]:
    """Damage found while loading the agent is reported with its id (the store knows only its folder)."""
    try:
        yield
    except DamagedAgentError as exc:
        if agent_id in str(exc):
            raise
        raise DamagedAgentError(f"agent {agent_id!r} cannot be loaded: {exc}") from exc
