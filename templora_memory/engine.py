"""`MemoryEngine`: Temp-Lora over many agents, free of any agent framework.

Each agent's conversation is a token stream rendered with the chat template. Tokens not yet
written accumulate until they reach Δ (`chunk_tokens`); the chunk is then trained into the
agent's own LoRA with the L_T tokens before it as unscored input (Algorithm 1). The prompt is
the system message plus the newest turns that fit in L_X (`window_tokens`); a turn is never
dropped from the prompt before it has been written.

With a store, every agent is committed to disk after each call and each trained chunk, turns are
journaled as they arrive, and at most `max_resident` adapters stay in RAM (least recently used
ones go to the store and come back on their next call).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from templora_memory.adapters import AdapterBank, adapter_name
from templora_memory.agent import AgentState, AgentStats
from templora_memory.background import BackgroundTrainer, TrainingJob
from templora_memory.config import TempLoraConfig
from templora_memory.constrained import Constraint, GrammarCache
from templora_memory.errors import ConfigError, InvalidInputError, StoreError, TemploraError
from templora_memory.generation import Sampling, StopDecoder, continuation_logits, generate_tokens
from templora_memory.kv_cache import PromptCache, RopeShift
from templora_memory.loading import load_model
from templora_memory.store import FORMAT_VERSION, AgentStore, Weights
from templora_memory.synthetic import QAPair, QuestionWriter
from templora_memory.tools import parse_reply
from templora_memory.trainer import build_example, learning_rate, write_chunk
from templora_memory.window import ChatRenderer, Message, Turn, fingerprint, window_start

MAX_AGENT_ID_LENGTH = 128
ROLES = ("system", "user", "assistant", "tool")
_SHAPE_FIELDS = ("lora_rank", "lora_alpha", "target_modules")  # a stored adapter must match these


@dataclass
class Reply:
    """The outcome of one generation, filled in as its text is streamed."""

    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    message: Message | None = None
    """The assistant turn as remembered: its text, split into content and tool calls when tools were offered."""


class MemoryEngine:
    """Owns the base model, the adapter bank and every agent's state (and, optionally, their store)."""

    def __init__(
        self,
        model: str | None = None,
        config: TempLoraConfig | None = None,
        *,
        loaded=None,
        store: AgentStore | str | os.PathLike | None = None,
        max_resident: int | None = None,
    ) -> None:
        """Load the model; `store` persists agents, `max_resident` bounds the adapters kept in RAM."""
        self.config = config or TempLoraConfig()
        if max_resident is not None and (
            isinstance(max_resident, bool) or not isinstance(max_resident, int) or max_resident < 1
        ):
            raise ConfigError(f"max_resident must be a positive integer or None (no limit), got {max_resident!r}")
        base, self.tokenizer, self.model_name = loaded or load_model(model)
        self.context_tokens = int(getattr(base.config, "max_position_embeddings", 2048))
        self.config.check_against_context(self.context_tokens)
        replica = copy.deepcopy(base) if self.config.deployment == "parallel" else None  # before peft wraps base
        self.bank = AdapterBank(base, self.config)
        self.renderer = ChatRenderer(self.tokenizer)
        self.grammars = GrammarCache(self.tokenizer)
        self.eos_ids = _eos_ids(self.tokenizer, base)
        self._questions = QuestionWriter(self.tokenizer, self.renderer, self.eos_ids, self.config.synthetic_questions)
        self._trainer = (
            BackgroundTrainer(replica, self.config, self._lr_at, self._questions) if replica is not None else None
        )
        self._rope_shift = RopeShift.of(base) if self.config.attention_sinks else None
        self.max_resident = max_resident
        self._spill = None  # evicted agents go to a private temporary store when the user gave none
        if store is None and max_resident is not None:
            self._spill = tempfile.TemporaryDirectory(prefix="templora-spill-")
            store = self._spill.name
        self.store = store if isinstance(store, AgentStore) or store is None else AgentStore(store)
        self._agents: OrderedDict[str, AgentState] = OrderedDict()  # resident agents, least recently used first
        self._agents_lock = threading.Lock()
        self._model_lock = threading.RLock()

    # ----- agents -------------------------------------------------------------------------

    def agent(self, agent_id: str) -> AgentState:
        """The agent's resident state, creating or loading it; hold `state.lock` and check `evicted` to use it."""
        with self._locked(agent_id) as state:
            return state

    def agent_ids(self) -> list[str]:
        """Ids of the agents that have a memory, in RAM or in the store."""
        with self._agents_lock:
            ids = set(self._agents)
        if self.store is not None:
            ids.update(self.store.record(key).get("agent_id", key) for key in self.store.keys())
        return sorted(ids)

    def resident_ids(self) -> list[str]:
        """Ids of the agents whose adapter is in RAM, least recently used first."""
        with self._agents_lock:
            return list(self._agents)

    def forget(self, agent_id: str) -> bool:
        """Destroy the agent's adapter and state, in RAM and in the store (Algorithm 1, line 22)."""
        _check_agent_id(agent_id)
        with self._agents_lock:
            state = self._agents.pop(agent_id, None)
            stored = self.store is not None and self.store.has(adapter_name(agent_id))
            if stored:
                self.store.delete(adapter_name(agent_id))
        if state is not None:
            with state.lock, self._model_lock:
                state.evicted = True
                self.bank.delete(agent_id)
                state.optimizer = None
        return state is not None or stored

    def stats(self, agent_id: str) -> AgentStats:
        """Counters of the agent's memory (an agent never seen reports zeros and gets no adapter)."""
        _check_agent_id(agent_id)
        state = self._agents.get(agent_id)
        if state is None and self.store is not None and self.store.has(adapter_name(agent_id)):
            record = self.store.record(adapter_name(agent_id))
            state = AgentState.from_record(agent_id, record) if record else None
        return (state or AgentState(agent_id)).stats()

    def window(self, agent_id: str) -> list[Message]:
        """The turns the agent's next prompt would hold (sized next to its system message, which is not returned)."""
        with self._locked(agent_id) as state:
            start = self._window(state, state.system)
            return [turn.message for turn in state.turns[start:]]

    def unseen(self, agent_id: str, messages: Sequence[Message]) -> list[Message]:
        """The messages this agent has never received (by content), e.g. turns a framework is about to drop."""
        with self._locked(agent_id) as state:
            seen = set(state.fingerprints)
        return [m for m in messages if fingerprint(m) not in seen]

    # ----- persistence --------------------------------------------------------------------

    def save(self, agent_id: str) -> None:
        """Commit the agent to the store now (the engine also does so after every call)."""
        self._require_store("save")
        with self._locked(agent_id) as state:
            self._commit(state, weights=True)

    def export(self, agent_id: str, destination: str | os.PathLike) -> Path:
        """Copy the agent's memory into a new directory (peft adapter files + state) to move it elsewhere."""
        self._require_store("export")
        with self._locked(agent_id) as state:
            self._commit(state, weights=True)
            return self.store.export(adapter_name(agent_id), destination)

    def import_(self, source: str | os.PathLike, agent_id: str) -> AgentStats:
        """Install a directory written by `export` as the agent `agent_id` (which must have no memory yet)."""
        self._require_store("import")
        _check_agent_id(agent_id)
        with self._agents_lock:  # every resident agent is in the store too, so the store's check covers both
            self.store.import_(adapter_name(agent_id), source)
        with self._locked(agent_id) as state:
            return state.stats()

    # ----- writing ------------------------------------------------------------------------

    def add_turns(self, agent_id: str, messages: Sequence[Message]) -> list[Message]:
        """Append the turns not seen before and write every full chunk; returns the new turns."""
        _check_messages(messages)
        with self._locked(agent_id) as state:
            new = self._add_turns(state, messages)
            self._commit(state)
            return new

    def absorb(self, agent_id: str, text: str, progress: bool = True) -> AgentStats:
        """Pre-train the agent's adapter on a long text before (or between) turns (Algorithm 1, lines 1–3)."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("absorb() needs a non-empty string of text to write into the agent's memory")
        return self.write_tokens(agent_id, self.tokenizer(text, add_special_tokens=False)["input_ids"], progress)

    def write_tokens(self, agent_id: str, ids: Sequence[int], progress: bool = False) -> AgentStats:
        """Write token ids into the agent's adapter in chunks of Δ, each with the L_T tokens before it."""
        with self._locked(agent_id) as state:
            self._finish_training(state, wait=True, reschedule=False)
            state.pending.extend(int(i) for i in ids)
            self._commit(state)  # the text is safe on disk before training starts
            chunks = -(-len(state.pending) // self.config.chunk_tokens)
            with tqdm(total=chunks, desc=f"writing into {agent_id}", unit="chunk", disable=not progress) as bar:
                while state.pending:
                    self._write(state, min(self.config.chunk_tokens, len(state.pending)))
                    bar.update(1)
                    bar.set_postfix(loss=f"{state.last_loss:.3f}")
            return state.stats()

    def wait(self, agent_id: str | None = None) -> None:
        """Finish the background training of one agent (or of every resident one) and swap its weights in."""
        for each in [agent_id] if agent_id is not None else self.resident_ids():
            with self._locked(each) as state:
                while state.job is not None:
                    self._finish_training(state, wait=True)

    # ----- replying -----------------------------------------------------------------------

    def respond(
        self,
        agent_id: str,
        messages: Sequence[Message],
        sampling: Sampling,
        stop: Sequence[str] = (),
        reply: Reply | None = None,
        tools: list[dict] | None = None,
        grammar: str | None = None,
    ) -> Iterator[str]:
        """Write the new turns, prompt with the window, and stream the reply's text; the reply is remembered.

        `tools` (OpenAI-style function schemas) are rendered by the chat template, and the reply is then
        parsed for tool calls the way the template defines (see `templora_memory.tools`). A `grammar`
        (see `templora_memory.constrained`) constrains the reply, e.g. to a required tool call.
        """
        _check_messages(messages)
        reply = reply if reply is not None else Reply()
        with self._locked(agent_id) as state:
            self._add_turns(state, messages)
            if not state.turns:
                raise InvalidInputError("no conversation turn to reply to: pass at least one user message")
            prompt = self._prompt(state, tools)
            constraint = self.grammars.constraint(grammar) if grammar is not None else None
            yield from self._generate(agent_id, prompt, sampling, stop, reply, self._cache(state), constraint)
            parsed = parse_reply(reply.text, self.tokenizer.chat_template) if tools else None
            reply.message = parsed.message() if parsed else {"role": "assistant", "content": reply.text}
            self._push(state, self._render(state, [reply.message])[0])
            self._commit(state)

    def stream_completion(
        self,
        agent_id: str | None,
        prompt: Sequence[int],
        sampling: Sampling,
        stop: Sequence[str] = (),
        reply: Reply | None = None,
    ) -> Iterator[str]:
        """Stream the text generated after `prompt` with the agent's adapter (or the base model); nothing is written."""
        reply = reply if reply is not None else Reply()
        if agent_id is None:
            yield from self._generate(None, prompt, sampling, stop, reply)
            return
        with self._locked(agent_id) as state:
            yield from self._generate(agent_id, prompt, sampling, stop, reply, self._cache(state))

    def log_likelihood(self, agent_id: str | None, prompt: Sequence[int], continuation: Sequence[int]) -> list[float]:
        """Per-token log-probabilities of `continuation` after `prompt`, with the agent's adapter or none.

        With `cache_reuse`, the agent's KV cache supplies the states of the prompt it already holds.
        """
        with self._locked(agent_id) if agent_id is not None else contextlib.nullcontext() as state:
            cache = self._cache(state) if state is not None else None
            with self._model_lock, self.bank.active(agent_id) as model:
                logits = continuation_logits(model, prompt, continuation, cache)  # (C, V)
        logprobs = torch.log_softmax(logits, dim=-1)
        return logprobs.gather(1, torch.tensor(continuation).unsqueeze(1)).squeeze(1).tolist()

    def prompt_ids(self, agent_id: str) -> list[int]:
        """The prompt the agent's next reply would be generated from (its window, no new turn)."""
        with self._locked(agent_id) as state:
            prompt = self._prompt(state)
            self._commit(state)
            return prompt

    # ----- residency ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, agent_id: str) -> Iterator[AgentState]:
        """The agent's state, resident and locked by this thread (an agent in use is never evicted)."""
        _check_agent_id(agent_id)
        while True:
            state = self._resident(agent_id)
            with state.lock:
                if state.evicted:
                    continue  # evicted between the lookup and the lock: look it up again
                state.users += 1
                try:
                    if state.backlog:
                        backlog, state.backlog = state.backlog, []
                        self._add_turns(state, backlog)  # turns journaled before a crash are written now
                        self._commit(state)
                    self._finish_training(state, wait=False)
                    yield state
                finally:
                    state.users -= 1
                return

    def _resident(self, agent_id: str) -> AgentState:
        with self._agents_lock:
            state = self._agents.get(agent_id)
            if state is None:
                self._make_room()  # first, so the agent coming in reuses the adapter slot of one leaving
                state = self._agents[agent_id] = self._load_or_create(agent_id)
            self._agents.move_to_end(agent_id)
            return state

    def _load_or_create(self, agent_id: str) -> AgentState:
        """Bring a stored agent back into RAM, or create a fresh one (LoRA B = 0: the base model's behaviour)."""
        key = adapter_name(agent_id)
        stored = self.store.load(key) if self.store is not None and self.store.has(key) else None
        if stored is not None and stored.record:
            self._check_compatible(key, stored.record)
        with self._model_lock:
            self.bank.add(agent_id, seed=self._seed(agent_id))
            try:
                state = self._restore(agent_id, stored) if stored is not None else AgentState(agent_id)
            except Exception:
                self.bank.delete(agent_id)
                raise
        if stored is None and self.store is not None:
            self._commit(state)
        return state

    def _restore(self, agent_id: str, stored) -> AgentState:
        state = AgentState.from_record(agent_id, stored.record) if stored.record else AgentState(agent_id)
        if stored.weights is not None:
            where = self.store.directory(adapter_name(agent_id))
            try:
                self.bank.load_weights(agent_id, stored.weights.adapter)
            except (ValueError, RuntimeError) as exc:
                raise StoreError(f"the adapter in {where} does not fit this model: {exc}") from exc
            if stored.weights.optimizer is not None:
                state.optimizer = self._new_optimizer(agent_id)
                state.optimizer.load_state_dict(stored.weights.optimizer)
        elif state.steps:
            raise StoreError(f"{self.store.directory(adapter_name(agent_id))} lost the weights of a trained adapter")
        seen = len(state.fingerprints)
        state.backlog = [message for seq, message in stored.journal if seq >= seen]
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
                if state.users or state.job is not None:
                    continue
                self._commit(state)
                with self._model_lock:
                    self.bank.delete(agent_id, release=False)  # the slot is reused by the agent coming in
                state.optimizer, state.evicted = None, True
                del self._agents[agent_id]
            finally:
                state.lock.release()

    def _commit(self, state: AgentState, weights: bool = False) -> None:
        """Persist the agent; its weights only when trained since the last commit (or when asked)."""
        if self.store is None:
            return
        record = {
            "format_version": FORMAT_VERSION,
            "model": self.model_name,
            "config": self.config.model_dump(),
            **state.record(),
        }
        payload = None
        if weights or state.steps != state.saved_steps:
            with self._model_lock:
                tensors, peft_config = self.bank.weights(state.agent_id)
            peft_config["base_model_name_or_path"] = self.model_name
            optimizer = state.optimizer.state_dict() if state.optimizer is not None else None
            payload = Weights(adapter=tensors, adapter_config=peft_config, optimizer=optimizer)
        self.store.commit(adapter_name(state.agent_id), record, payload)
        state.saved_steps = state.steps

    def _check_compatible(self, key: str, record: dict) -> None:
        where = self.store.directory(key)
        stored_config = record.get("config", {})
        different = [f for f in _SHAPE_FIELDS if stored_config.get(f) != getattr(self.config, f)]
        if different or record.get("model") != self.model_name:
            detail = ", ".join(f"{f}={stored_config.get(f)!r} (engine: {getattr(self.config, f)!r})" for f in different)
            raise StoreError(
                f"the agent in {where} was trained for model {record.get('model')!r}"
                + (f" with {detail}" if detail else "")
                + f"; this engine runs {self.model_name!r}. Load it with the same model and LoRA shape."
            )

    def _require_store(self, verb: str) -> None:
        if self.store is None:
            raise ConfigError(f"{verb} needs a store: create the engine with store='path/to/dir'")

    # ----- internals ----------------------------------------------------------------------

    def _add_turns(self, state: AgentState, messages: Sequence[Message]) -> list[Message]:
        system, turns = _split_system(messages)
        if system:
            state.system = system
        new = state.new_messages(turns, [fingerprint(m) for m in turns])
        for turn in self._render(state, new):  # every turn is checked before any is kept
            self._push(state, turn)
        self._write_full_chunks(state)
        return new

    def _render(self, state: AgentState, messages: Sequence[Message]) -> list[Turn]:
        """Messages as turns following the agent's last one; a turn longer than the window is refused."""
        turns: list[Turn] = []
        previous = state.turns[-1].message if state.turns else None
        for message in messages:
            turn = self.renderer.turn(message, previous)
            if len(turn.tokens) > self.config.window_tokens:
                raise InvalidInputError(
                    f"a {message['role']} message of {len(turn.tokens)} tokens is longer than window_tokens="
                    f"{self.config.window_tokens}; shorten it, raise window_tokens, or write long text with absorb()"
                )
            turns.append(turn)
            previous = message
        return turns

    def _push(self, state: AgentState, turn: Turn) -> None:
        if self.store is not None:
            self.store.journal(adapter_name(state.agent_id), len(state.fingerprints), turn.message)
        state.turns.append(turn)
        state.fingerprints.append(turn.fingerprint)
        state.pending.extend(turn.tokens)

    def _generate(
        self,
        agent_id: str | None,
        prompt: Sequence[int],
        sampling: Sampling,
        stop: Sequence[str],
        reply: Reply,
        cache: PromptCache | None = None,
        constraint: Constraint | None = None,
    ) -> Iterator[str]:
        reply.prompt_tokens = len(prompt)
        decoder = StopDecoder(self.tokenizer, stop)
        with self._model_lock, self.bank.active(agent_id) as model:
            for token in generate_tokens(model, prompt, sampling, self.eos_ids, cache, constraint):
                reply.completion_tokens += 1
                piece = decoder.push(token)
                if piece:
                    reply.text += piece
                    yield piece
                if decoder.finished:
                    break
            else:
                reply.finish_reason = "length" if reply.completion_tokens >= sampling.max_new_tokens else "stop"
        tail = decoder.flush()
        if tail:
            reply.text += tail
            yield tail

    def _cache(self, state: AgentState) -> PromptCache | None:
        """The agent's KV cache when `cache_reuse` is on (kept while the agent is resident, never stored)."""
        if not self.config.cache_reuse:
            return None
        if state.kv is None:
            state.kv = PromptCache(self._rope_shift)
        return state.kv

    def _write_full_chunks(self, state: AgentState) -> None:
        if self._trainer is not None:
            self._schedule(state)
            return
        while len(state.pending) >= self.config.chunk_tokens:
            self._write(state, self.config.chunk_tokens)

    def _prompt(self, state: AgentState, tools: list[dict] | None = None) -> list[int]:
        """Build the prompt from the window, first writing any pending tokens the window no longer holds."""
        start = self._window(state, state.system, tools)
        in_window = sum(len(turn.tokens) for turn in state.turns[start:])
        if len(state.pending) > in_window and state.job is not None:
            self._finish_training(state, wait=True, reschedule=False)  # the reply waits: its window moved on
        overflow = len(state.pending) - in_window
        if overflow > 0:
            self._write(state, overflow)
            self._write_full_chunks(state)
        state.turns = state.turns[window_start(state.turns, self.config.window_tokens) :]
        start = self._window(state, state.system, tools)
        prompt = self.renderer.prompt(state.system, state.turns[start:], tools)
        state.last_prompt_tokens = len(prompt)
        return prompt

    def _window(self, state: AgentState, system: list[Message], tools: list[dict] | None = None) -> int:
        """Index of the oldest turn in the window: the prompt, headers and tools included, fits in L_X."""
        # a first guess from the fixed overhead; the loop below is exact
        overhead = len(self.renderer.prompt(system, [], tools)) if system else 0
        start = window_start(state.turns, self.config.window_tokens - overhead)
        limit = self.config.window_tokens
        while start < len(state.turns) and len(self.renderer.prompt(system, state.turns[start:], tools)) > limit:
            start += 1
        if state.turns and start >= len(state.turns):
            raise InvalidInputError(
                f"the newest turn does not fit in window_tokens={self.config.window_tokens} next to the system "
                f"message and tools ({overhead} tokens); raise window_tokens or shorten the system message"
            )
        return start

    def _write(self, state: AgentState, n_tokens: int) -> None:
        """Train the next `n_tokens` pending tokens into the agent's adapter now (one Temp-Lora update)."""
        if state.job is not None:
            raise RuntimeError("a chunk is training in the background; finish it before writing synchronously")
        chunk = state.pending[:n_tokens]
        example = build_example(state.written, chunk, self.config.train_context_tokens)
        started = time.perf_counter()
        seed = self._seed(state.agent_id) + state.chunks_trained + 1
        with self._model_lock, self.bank.active(state.agent_id) as model:
            optimizer = state.optimizer or self._new_optimizer(state.agent_id)
            loss, pairs = write_chunk(
                model,
                example,
                chunk,
                state.system,
                optimizer,
                state.steps,
                seed,
                self.config,
                self._lr_at,
                self._questions,
            )
        state.optimizer = optimizer
        self._account(state, n_tokens, loss, time.perf_counter() - started, pairs)

    def _schedule(self, state: AgentState) -> None:
        """Parallel deployment: hand the next full chunk to the background trainer (one job per agent at a time)."""
        if state.job is not None or len(state.pending) < self.config.chunk_tokens:
            return
        n_tokens = self.config.chunk_tokens
        chunk = state.pending[:n_tokens]
        input_ids, labels = build_example(state.written, chunk, self.config.train_context_tokens)
        with self._model_lock:
            weights = [p.detach().clone() for p in self.bank.parameters(state.agent_id)]
        optimizer_state = copy.deepcopy(state.optimizer.state_dict()) if state.optimizer is not None else None
        seed = self._seed(state.agent_id) + state.chunks_trained + 1
        job = TrainingJob(
            agent_id=state.agent_id,
            n_tokens=n_tokens,
            input_ids=input_ids,
            labels=labels,
            chunk=chunk,
            system=list(state.system),
            weights=weights,
            optimizer_state=optimizer_state,
            first_step=state.steps,
            seed=seed,
        )
        state.job = self._trainer.submit(job)

    def _finish_training(self, state: AgentState, wait: bool, reschedule: bool = True) -> None:
        """Swap in the weights of the agent's finished background job (waiting for it if asked)."""
        job = state.job
        if job is None or not (wait or job.done.is_set()):
            return
        job.done.wait()
        state.job = None
        if job.error is not None:
            raise TemploraError(f"background training of agent {state.agent_id!r} failed: {job.error}") from job.error
        with self._model_lock, torch.no_grad():
            for parameter, trained in zip(self.bank.parameters(state.agent_id), job.trained, strict=True):
                parameter.copy_(trained)
        state.optimizer = state.optimizer or self._new_optimizer(state.agent_id)
        state.optimizer.load_state_dict(job.trained_optimizer_state)
        self._account(state, job.n_tokens, job.loss, job.seconds, job.pairs)
        if reschedule:
            self._schedule(state)

    def _account(self, state: AgentState, n_tokens: int, loss: float, seconds: float, pairs: list[QAPair]) -> None:
        """Book a trained chunk and the synthetic pairs trained with it: counters, the next L_T context, a commit."""
        chunk = state.pending[:n_tokens]
        state.last_loss = loss
        state.train_seconds += seconds
        state.last_questions = pairs
        state.questions_written += len(pairs)
        state.steps += self.config.epochs
        state.chunks_trained += 1
        state.tokens_written += len(chunk)
        context = self.config.train_context_tokens
        state.written = (state.written + chunk)[-context:] if context else []
        del state.pending[:n_tokens]
        self._commit(state)  # each trained chunk is durable before the next one starts

    def _lr_at(self, step: int) -> float:
        return learning_rate(step, self.config.learning_rate, self.config.warmup_chunks * self.config.epochs)

    def _new_optimizer(self, agent_id: str) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.bank.parameters(agent_id), lr=self.config.learning_rate, weight_decay=0.0)

    def _seed(self, agent_id: str) -> int:
        digest = hashlib.sha256(f"{self.config.seed}:{agent_id}".encode()).digest()
        return int.from_bytes(digest[:4], "little")


def _split_system(messages: Sequence[Message]) -> tuple[list[Message], list[Message]]:
    """System messages (kept out of memory, always in the prompt) and conversation turns."""
    system = [m for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    if len(system) > 1:
        system = [{"role": "system", "content": "\n\n".join(str(m["content"]) for m in system)}]
    return system, turns


def _check_agent_id(agent_id: object) -> None:
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


def _check_messages(messages: object) -> None:
    """Messages must be chat-template dicts with a known role; empty content is allowed (tool-call turns)."""
    if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, Sequence):
        raise InvalidInputError(
            f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InvalidInputError(
                f"message {index} must be a dict with a role among {ROLES}, got {str(message)[:60]!r}"
            )
        if not isinstance(message.get("content", ""), (str, list)):
            raise InvalidInputError(
                f"message {index} has content of type {type(message['content']).__name__}; pass text"
            )


def _eos_ids(tokenizer, model) -> set[int]:
    """Every token id that ends a reply: the tokenizer's and the generation config's end-of-sequence ids."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}
