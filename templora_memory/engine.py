"""`MemoryEngine`: Temp-Lora over many agents, free of any agent framework.

Each agent's conversation is a token stream rendered with the chat template. Tokens not yet
written accumulate until they reach Δ (`chunk_tokens`); the chunk is then trained into the
agent's own LoRA with the L_T tokens before it as unscored input (Algorithm 1). The prompt is
the system message plus the newest turns that fit in L_X (`window_tokens`); a turn is never
dropped from the prompt before it has been written.

The engine is a facade over one module per job: `conversation` (turns and token streams), `rendering`
(the chat template), `window` (L_X), `writing` (chunk updates, cascaded or parallel), `residency` (RAM, locks,
the store), `generation` and `replies`. Reads (`window`, `prompt_ids`, `stats`, `log_likelihood`,
`stream_completion`) change no memory; writes (`add_turns`, `respond`, `absorb`) train and commit.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Generator, Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from templora_memory.adapters import AdapterBank
from templora_memory.agent import AgentSnapshot, AgentState, AgentStats, check_agent_id
from templora_memory.budget import budgeted, check_complete, markup_tokens
from templora_memory.config import TempLoraConfig
from templora_memory.constrained import Constraint, GrammarCache
from templora_memory.corrections import Corrected, Corrections, Forgotten
from templora_memory.decoding import decoder_for
from templora_memory.devices import place
from templora_memory.distill import ProbeTeacher
from templora_memory.errors import InvalidInputError, StoreError
from templora_memory.generation import Sampling, continuation_logits
from templora_memory.kv_cache import PromptCache, RopeShift
from templora_memory.ledger import LedgerTurn
from templora_memory.loading import load_model
from templora_memory.message import (
    Message,
    Turn,
    check_messages,
    check_text,
    fingerprint,
    said_by_assistant,
    split_system,
)
from templora_memory.offer import ToolOffer
from templora_memory.readout import Readout, Recall
from templora_memory.rebuild import Rebuilder
from templora_memory.recall import HybridRecall
from templora_memory.rendering import ChatRenderer
from templora_memory.replies import Reply, ReplyStream, decode_reply
from templora_memory.reply_batch import ReplyBatch
from templora_memory.residency import Residency, check_max_resident
from templora_memory.snapshots import Snapshots
from templora_memory.store import AgentStore, open_store
from templora_memory.synthetic import QuestionWriter
from templora_memory.tools import ToolSchema
from templora_memory.window import PromptWindow
from templora_memory.writing import ChunkWriter, ParallelWriter, Teachers

Loaded = tuple[PreTrainedModel, PreTrainedTokenizerBase, str]
"""A model already in memory: (model, tokenizer, name), as `loading.load_model` returns it."""
Tools = list[ToolSchema] | None
"""The tools a prompt offers (None: none)."""


class MemoryEngine:
    """Owns the base model, the adapter bank and every agent's memory (and, optionally, their store)."""

    def __init__(
        self,
        model: str | None = None,
        config: TempLoraConfig | None = None,
        *,
        loaded: Loaded | None = None,
        store: AgentStore | str | os.PathLike | None = None,
        max_resident: int | None = None,
    ) -> None:
        """Load the model; `store` (a directory, s3:// URL or AgentStore) persists agents; `max_resident` bounds RAM."""
        self.config = config or TempLoraConfig()
        self.max_resident = check_max_resident(max_resident)  # most adapters kept in RAM (None: no limit)
        base, self.tokenizer, self.model_name = loaded or load_model(model)
        base, self.device = place(base, self.config.device)
        self.context_tokens = int(getattr(base.config, "max_position_embeddings", 2048))
        self.config.check_against_context(self.context_tokens)
        replica = copy.deepcopy(base) if self.config.deployment == "parallel" else None  # before peft wraps base
        self.decoder = decoder_for(base, self.tokenizer, self.config, model, self.model_name)  # replies run on it
        self.bank = AdapterBank(base, self.config)
        self.renderer = ChatRenderer(self.tokenizer)
        self.grammars = GrammarCache(self.tokenizer)
        self.eos_ids = _eos_ids(self.tokenizer, base)
        self._window = PromptWindow(self.renderer, self.config.window_tokens, archive=self.config.recall_tokens > 0)
        self._recall = HybridRecall(self.renderer, self.config.recall_tokens) if self.config.recall_tokens else None
        self._model_lock = threading.RLock()  # generation and training take turns on the one base model
        self.replies = ReplyBatch(self.decoder, self.bank, self._model_lock)  # replies running at once: one batch
        parts = _memory_parts(self, base, open_store(store, spill=max_resident is not None), max_resident, replica)
        self.store, self._residency, self._writer, self._rebuilds, self._corrections, self._readout = parts

    # ----- agents -------------------------------------------------------------------------

    def agent(self, agent_id: str) -> AgentSnapshot:
        """A read-only copy of the agent's state (its turns, token streams and stats); creates the agent if new."""
        with self._residency.locked(agent_id) as state:
            return state.snapshot()

    def agent_ids(self) -> list[str]:
        """Ids of the agents that have a memory, in RAM or in the store."""
        return self._residency.ids()

    def damaged_agents(self) -> dict[str, str]:
        """Store folders (`store_key`s) the last `agent_ids` skipped because their files are damaged, with why."""
        return dict(self._residency.damaged)

    def resident_ids(self) -> list[str]:
        """Ids of the agents whose adapter is in RAM, least recently used first."""
        return self._residency.resident_ids()

    def forget(self, agent_id: str) -> bool:
        """Destroy the agent's adapter and state, in RAM and in the store (Algorithm 1, line 22)."""
        return self._residency.forget(agent_id)

    def exists(self, agent_id: str) -> bool:
        """True if the agent has a memory, in RAM or in the store (reads of one that has none raise)."""
        return self._residency.exists(agent_id)

    def stats(self, agent_id: str) -> AgentStats:
        """Counters of the agent's memory; `UnknownAgentError` if it has none (nothing is created)."""
        return self._residency.stats(agent_id)

    def window(self, agent_id: str) -> list[Message]:
        """The turns the agent's next prompt would hold (sized next to its system message, which is not returned)."""
        self._residency.require(agent_id)
        with self._residency.locked(agent_id) as state:
            return [turn.message for turn in self._window.turns(state.conversation)]

    def unseen(self, agent_id: str, messages: Sequence[Message]) -> list[Message]:
        """Messages (by content) not among the agent's last FINGERPRINTS_KEPT turns: an older turn reads as unseen."""
        with self._residency.locked(agent_id) as state:
            seen = set(state.conversation.fingerprints)
        return [m for m in messages if fingerprint(m) not in seen]

    def turns(self, agent_id: str, after: int | None = None, limit: int | None = None) -> list[LedgerTurn]:
        """The agent's ledger (every turn and absorbed text it was told), oldest first: `limit` after the id `after`."""
        return self._corrections.turns(agent_id, after, limit)

    def forget_turns(self, agent_id: str, turn_ids: Sequence[int] = (), matching: str | None = None) -> Forgotten:
        """Forget turns (by id, or whose text contains `matching`): out of window, archive, ledger and store at once;
        the adapter is rebuilt without them in the background, unused until then (`templora_memory.rebuild`)."""
        return self._corrections.forget_turns(agent_id, turn_ids, matching)

    def correct_turn(self, agent_id: str, turn_id: int, content: str) -> Corrected:
        """Replace what a user or assistant turn said: `content` becomes a new turn by the same speaker and the old
        one is forgotten as by `forget_turns` (the adapter rebuilt without it)."""
        return self._corrections.correct_turn(agent_id, turn_id, content)

    def recalls(self, agent_id: str, limit: int = 16) -> list[Recall]:
        """The user's newest `limit` statements asked of the adapter alone: answered, likely or lost (`readout`)."""
        return self._readout.recalls(agent_id, limit)

    # ----- persistence --------------------------------------------------------------------

    def save(self, agent_id: str) -> None:
        """Commit the agent to the store now (the engine also does so after every write)."""
        self._residency.save(agent_id)

    def release(self, agent_id: str) -> bool:
        """Commit the agent and let it leave RAM and its lease, so another process may write it; False if not in RAM."""
        return self._residency.release(agent_id, self._writer.settle)

    def close(self) -> None:
        """Stop rebuilds after their chunk under way, and release every agent in RAM (committed, leases given back),
        each one that can be even if others fail (then `StoreError` names them); the engine stays usable."""
        self._rebuilds.stop()
        if failed := self._residency.release_all(self._writer.settle):
            raise StoreError(f"{len(failed)} agent(s) could not be committed and released: {failed}")

    def export(self, agent_id: str, destination: str | os.PathLike) -> Path:
        """Copy the agent's memory into a new directory (peft adapter files + state) to move it elsewhere."""
        return self._residency.export(agent_id, destination)

    def import_(self, source: str | os.PathLike, agent_id: str) -> AgentStats:
        """Install a directory written by `export` as the agent `agent_id` (which must have no memory yet)."""
        return self._residency.import_(source, agent_id)

    # ----- writing ------------------------------------------------------------------------

    def add_turns(self, agent_id: str, messages: Sequence[Message]) -> list[Message]:
        """Append the turns not seen before and write every full chunk; returns the new turns."""
        check_messages(messages)
        with self._residency.writing(agent_id) as state:
            new = self._receive(state, messages)
            self._writer.write_due(state)
            self._window.let_go(state.conversation)
            return new

    def absorb(self, agent_id: str, text: str, progress: bool = True) -> AgentStats:
        """Pre-train the agent's adapter on a long text before (or between) turns (Algorithm 1, lines 1–3)."""
        return self.write_tokens(agent_id, self.encode(check_text(text)), progress)

    def write_tokens(self, agent_id: str, ids: Sequence[int], progress: bool = False) -> AgentStats:
        """Write token ids into the agent's adapter in chunks of Δ, each with the L_T tokens before it."""
        with self._residency.writing(agent_id) as state:
            self._writer.settle(state, wait=True)
            state.conversation.add_text([int(i) for i in ids])
            self._residency.commit(state)  # the text is safe on disk before training starts
            self._writer.write_all(state, progress)
            return state.stats()

    def wait(self, agent_id: str | None = None) -> None:
        """Finish writing one agent (or every resident one): background chunks, and pending tokens out of its window."""
        for each in [agent_id] if agent_id is not None else self.resident_ids():
            with self._residency.writing(each) as state:
                self._writer.finish(state)
                self._make_room(state)

    # ----- replying -----------------------------------------------------------------------

    def respond(
        self,
        agent_id: str,
        messages: Sequence[Message],
        sampling: Sampling,
        stop: Sequence[str] = (),
        offer: ToolOffer | None = None,
    ) -> ReplyStream:
        """Write the new turns, prompt with the window, and stream the reply; the finished reply is remembered. An
        `offer` (`templora_memory.offer`) puts tools in the prompt, parses calls as the template defines, and may
        constrain the reply to a grammar."""
        check_messages(messages)
        check_agent_id(agent_id)
        offer = offer or ToolOffer()
        constraint = self.grammars.constraint(offer.grammar) if offer.grammar is not None else None
        return ReplyStream(self._respond(agent_id, messages, sampling, stop, offer, constraint))

    def stream_completion(
        self,
        agent_id: str | None,
        prompt: Sequence[int],
        sampling: Sampling,
        stop: Sequence[str] = (),
        *,
        grammar: str | None = None,
        cache: PromptCache | None = None,
    ) -> ReplyStream:
        """Stream the text generated after `prompt` with the agent's adapter (or the base model); nothing is written.
        `cache`: a `PromptCache` the caller keeps across calls (default: the agent's own with `cache_reuse`)."""
        constraint = self.grammars.constraint(grammar) if grammar is not None else None
        return ReplyStream(self._complete(agent_id, list(prompt), sampling, stop, constraint, cache))

    def log_likelihood(
        self, agent_id: str | None, prompt: Sequence[int], continuation: Sequence[int], cache: PromptCache | None = None
    ) -> list[float]:
        """Per-token log-probabilities of `continuation` after `prompt`, with the agent's adapter or none.
        `cache`: a `PromptCache` the caller keeps across calls (default: the agent's own with `cache_reuse`)."""
        with self._residency.reading(agent_id, cache) as (cache, adapter):
            with self._model_lock, self.bank.active(adapter) as model:
                logits = continuation_logits(model, prompt, continuation, cache)  # (C, V)
        logprobs = torch.log_softmax(logits, dim=-1)
        return logprobs.gather(1, torch.tensor(continuation, device=logprobs.device)[:, None]).squeeze(1).tolist()

    def prompt_ids(self, agent_id: str) -> list[int]:
        """The prompt the agent's next reply would be generated from (its window, no new turn)."""
        with self._residency.locked(agent_id) as state:
            return self._prompt(state, self._window.turns(state.conversation))[0]

    # ----- text ---------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def turn_tokens(self, messages: Sequence[Message]) -> list[int]:
        """How many tokens each message takes, rendered as consecutive turns of a conversation."""
        return [len(turn.tokens) for turn in self.renderer.turns(messages)]

    def render_prompt(
        self, system: Sequence[Message], messages: Sequence[Message], tools: list[ToolSchema] | None = None
    ) -> list[int]:
        """Prompt ids for system + messages (+ tools), ending with the assistant header, ready to generate."""
        return self.renderer.prompt(system, self.renderer.turns(messages), tools)

    def window_start(self, system: Sequence[Message], messages: Sequence[Message]) -> int:
        """Index of the oldest of `messages` that an agent's window would hold next to `system`."""
        return self._window.start(system, self.renderer.turns(messages))

    # ----- internals ----------------------------------------------------------------------

    def _receive(self, state: AgentState, messages: Sequence[Message]) -> list[Message]:
        """Keep the unseen turns (journaled first, every one checked before any is kept); the caller writes them."""
        talk = state.conversation
        system, turns = split_system(messages)
        talk.system = system or talk.system
        new = talk.unseen(turns)
        rendered = self._window.render(new, talk.last_message)
        self._residency.journal(state, rendered)
        for turn in rendered:
            talk.append(turn)
        return new

    def _make_room(self, state: AgentState, tools: list[ToolSchema] | None = None) -> list[Turn]:
        """Write what is due and what the window (sized with `tools`) lost, let go of old turns; returns the window."""
        window = self._window.turns(state.conversation, tools)
        self._writer.write(state, in_window=sum(len(turn.tokens) for turn in window))
        self._window.let_go(state.conversation)
        return window

    def _prompt(self, state: AgentState, window: list[Turn], tools: Tools = None) -> tuple[list[int], list[Turn]]:
        """The prompt and its turns: the system message (and tools), recalled old turns (hybrid recall), the window."""
        turns = [*(self._recall.turns(state.conversation, window, state) if self._recall else []), *window]
        return self.renderer.prompt(state.conversation.system, turns, tools), turns

    def _respond(
        self,
        agent_id: str,
        messages: Sequence[Message],
        sampling: Sampling,
        stop: Sequence[str],
        offer: ToolOffer,
        constraint: Constraint | None,
    ) -> Generator[str, None, Reply]:
        """The reply as `respond` streams it: write the new turns, make room, generate, remember the reply."""
        with self._residency.writing(agent_id) as state:
            self._receive(state, messages)
            window = self._make_room(state, offer.tools)
            if not window:
                raise InvalidInputError("no conversation turn to reply to: pass at least one user message")
            prompt, turns = self._prompt(state, window, offer.tools)
            state.last_prompt_tokens, markup = len(prompt), markup_tokens(offer, self.encode)  # markup not counted
            budget = budgeted(sampling, markup, self.context_tokens - len(prompt), said_by_assistant(turns))
            tool_template = self.tokenizer.chat_template if offer.tools else False
            cache = self._residency.own_cache(state)
            reply = yield from self._generate(state.adapter(), prompt, budget, stop, cache, constraint, tool_template)
            check_complete(reply, constraint, sampling.max_new_tokens, markup)  # a cut-off call is never remembered
            remembered = self._window.render([reply.message()], state.conversation.last_message)
            self._residency.journal(state, remembered)
            state.conversation.append(remembered[0])  # written with the next call's chunks
            return reply

    def _complete(
        self,
        agent_id: str | None,
        prompt: list[int],
        sampling: Sampling,
        stop: Sequence[str],
        constraint: Constraint | None,
        cache: PromptCache | None,
    ) -> Generator[str, None, Reply]:
        """The generation `stream_completion` streams: nothing is written."""
        with self._residency.reading(agent_id, cache) as (cache, adapter):
            return (yield from self._generate(adapter, prompt, sampling, stop, cache, constraint, False))

    def _generate(
        self,
        agent_id: str | None,
        prompt: list[int],
        sampling: Sampling,
        stop: Sequence[str],
        cache: PromptCache | None,
        constraint: Constraint | None,
        tool_template: str | None | bool,
    ) -> Generator[str, None, Reply]:
        """Generate after `prompt` with the agent's adapter, decoding text pieces; returns the parsed reply."""
        tokens = self.replies.tokens(agent_id, prompt, sampling, self.eos_ids, cache, constraint)
        limits = dict(stop=stop, max_new_tokens=sampling.max_new_tokens, prompt_tokens=len(prompt))
        return (yield from decode_reply(tokens, self.tokenizer, **limits, tool_template=tool_template))


def _memory_parts(
    engine: MemoryEngine,
    base: PreTrainedModel,
    store: AgentStore | None,
    max_resident: int | None,
    replica: PreTrainedModel | None,
) -> tuple[AgentStore | None, Residency, ChunkWriter, Rebuilder, Corrections, Readout]:
    """What keeps the engine's agents: the store (a temporary one holds evicted agents when none was given), their
    residency in RAM, the writer (cascaded, or parallel on the `replica`; a snapshot taken after each chunk's commit
    when one is due), the rebuilder of adapters that forgot turns, the ledger's corrections and the readout of what
    adapters recall."""
    shift = RopeShift.of(base) if engine.config.attention_sinks else None  # attention sinks rotate cached keys
    residency = Residency(
        engine.bank, engine.config, engine.model_name, engine.renderer, engine._model_lock, store, max_resident, shift
    )
    teachers = Teachers(
        QuestionWriter(engine.tokenizer, engine.renderer, engine.eos_ids, engine.config.synthetic_questions),
        ProbeTeacher(engine.renderer, engine.config, engine.eos_ids),
    )
    snapshots = Snapshots(engine.bank, engine.config, engine._model_lock, store)

    def commit(state: AgentState) -> None:
        residency.commit(state)
        snapshots.take_if_due(state)

    parts = (engine.bank, engine.config, engine._model_lock, teachers, commit)
    writer = ParallelWriter(*parts, replica) if replica is not None else ChunkWriter(*parts)
    rebuilder = Rebuilder(writer, snapshots, residency, engine.renderer, engine.config)
    residency.loaded, writer.catch_up = rebuilder.resume, rebuilder.finish
    readout = Readout(residency, engine.renderer, engine.encode, engine.log_likelihood, engine.stream_completion)
    return store, residency, writer, rebuilder, Corrections(residency, writer, rebuilder, engine._window), readout


def _eos_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> set[int]:
    """Every token id that ends a reply: the tokenizer's and the generation config's end-of-sequence ids."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}
