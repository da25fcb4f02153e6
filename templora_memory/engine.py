"""`MemoryEngine`: Temp-Lora over many agents, free of any agent framework.

Each agent's conversation is a token stream rendered with the chat template. Tokens not yet
written accumulate until they reach Δ (`chunk_tokens`); the chunk is then trained into the
agent's own LoRA with the L_T tokens before it as unscored input (Algorithm 1). The prompt is
the system message plus the newest turns that fit in L_X (`window_tokens`); a turn is never
dropped from the prompt before it has been written.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from templora_memory.adapters import AdapterBank
from templora_memory.agent import AgentState, AgentStats
from templora_memory.config import TempLoraConfig
from templora_memory.errors import InvalidInputError
from templora_memory.generation import Sampling, StopDecoder, generate_tokens
from templora_memory.loading import load_model
from templora_memory.tools import parse_reply
from templora_memory.trainer import build_example, learning_rate, train_chunk
from templora_memory.window import ChatRenderer, Message, Turn, fingerprint, window_start

MAX_AGENT_ID_LENGTH = 128


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
    """Owns the base model, the adapter bank and every agent's state."""

    def __init__(self, model: str | None = None, config: TempLoraConfig | None = None, *, loaded=None) -> None:
        self.config = config or TempLoraConfig()
        base, self.tokenizer, self.model_name = loaded or load_model(model)
        self.context_tokens = int(getattr(base.config, "max_position_embeddings", 2048))
        self.config.check_against_context(self.context_tokens)
        self.bank = AdapterBank(base, self.config)
        self.renderer = ChatRenderer(self.tokenizer)
        self.eos_ids = _eos_ids(self.tokenizer, base)
        self._agents: dict[str, AgentState] = {}
        self._agents_lock = threading.Lock()
        self._model_lock = threading.RLock()

    # ----- agents -------------------------------------------------------------------------

    def agent(self, agent_id: str) -> AgentState:
        """The agent's state, creating its adapter on first use."""
        _check_agent_id(agent_id)
        with self._agents_lock:
            state = self._agents.get(agent_id)
            if state is None:
                with self._model_lock:
                    self.bank.add(agent_id, seed=self._seed(agent_id))
                state = self._agents[agent_id] = AgentState(agent_id)
            return state

    def agent_ids(self) -> list[str]:
        """Ids of the agents that currently have a memory."""
        return list(self._agents)

    def forget(self, agent_id: str) -> bool:
        """Destroy the agent's adapter and state (Algorithm 1, line 22); False if it had none."""
        with self._agents_lock:
            state = self._agents.pop(agent_id, None)
        if state is None:
            return False
        with state.lock, self._model_lock:
            self.bank.delete(agent_id)
            state.optimizer = None
        return True

    def stats(self, agent_id: str) -> AgentStats:
        """Counters of the agent's memory (an agent never seen reports zeros and gets no adapter)."""
        _check_agent_id(agent_id)
        state = self._agents.get(agent_id)
        return (state or AgentState(agent_id)).stats()

    def window(self, agent_id: str) -> list[Message]:
        """The turns that the agent's next prompt would hold (sized next to its last system message, which is not returned)."""
        state = self.agent(agent_id)
        with state.lock:
            start = self._window(state, state.system)
            return [turn.message for turn in state.turns[start:]]

    # ----- writing ------------------------------------------------------------------------

    def add_turns(self, agent_id: str, messages: Sequence[Message]) -> list[Message]:
        """Append the turns not seen before and write every full chunk; returns the new turns."""
        state = self.agent(agent_id)
        with state.lock:
            system, turns = _split_system(messages)
            if system:
                state.system = system
            new = state.new_messages(turns, [fingerprint(m) for m in turns])
            for message in new:
                self._append(state, message)
            self._write_full_chunks(state)
            return new

    def absorb(self, agent_id: str, text: str, progress: bool = True) -> AgentStats:
        """Pre-train the agent's adapter on a long text before (or between) turns (Algorithm 1, lines 1–3)."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("absorb() needs a non-empty string of text to write into the agent's memory")
        state = self.agent(agent_id)
        with state.lock:
            state.pending.extend(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            chunks = -(-len(state.pending) // self.config.chunk_tokens)
            with tqdm(total=chunks, desc=f"absorbing into {agent_id}", unit="chunk", disable=not progress) as bar:
                while state.pending:
                    self._write(state, min(self.config.chunk_tokens, len(state.pending)))
                    bar.update(1)
                    bar.set_postfix(loss=f"{state.last_loss:.3f}")
            return state.stats()

    # ----- replying -----------------------------------------------------------------------

    def respond(
        self,
        agent_id: str,
        messages: Sequence[Message],
        sampling: Sampling,
        stop: Sequence[str] = (),
        reply: Reply | None = None,
        tools: list[dict] | None = None,
    ) -> Iterator[str]:
        """Write the new turns, prompt with the window, and stream the reply's text; the reply is remembered.

        `tools` (OpenAI-style function schemas) are rendered by the chat template, and the reply is then
        parsed for tool calls the way the template defines (see `templora_memory.tools`).
        """
        reply = reply if reply is not None else Reply()
        state = self.agent(agent_id)
        with state.lock:
            self.add_turns(agent_id, messages)
            if not state.turns:
                raise InvalidInputError("no conversation turn to reply to: pass at least one user message")
            prompt = self._prompt(state, tools)
            yield from self.stream_completion(agent_id, prompt, sampling, stop, reply)
            parsed = parse_reply(reply.text, self.tokenizer.chat_template) if tools else None
            reply.message = parsed.message() if parsed else {"role": "assistant", "content": reply.text}
            self._append(state, reply.message)

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
        reply.prompt_tokens = len(prompt)
        decoder = StopDecoder(self.tokenizer, stop)
        with self._model_lock, self.bank.active(agent_id) as model:
            for token in generate_tokens(model, prompt, sampling, self.eos_ids):
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

    def log_likelihood(self, agent_id: str | None, prompt: Sequence[int], continuation: Sequence[int]) -> list[float]:
        """Per-token log-probabilities of `continuation` after `prompt`, with the agent's adapter or none."""
        ids = torch.tensor([list(prompt) + list(continuation)])  # (1, P + C)
        with self._model_lock, self.bank.active(agent_id) as model, torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()  # (C, V)
        logprobs = torch.log_softmax(logits, dim=-1)
        return logprobs.gather(1, torch.tensor(continuation).unsqueeze(1)).squeeze(1).tolist()

    def prompt_ids(self, agent_id: str) -> list[int]:
        """The prompt the agent's next reply would be generated from (its window, no new turn)."""
        state = self.agent(agent_id)
        with state.lock:
            return self._prompt(state)

    # ----- internals ----------------------------------------------------------------------

    def _append(self, state: AgentState, message: Message) -> None:
        previous = state.turns[-1].message if state.turns else None
        turn = self.renderer.turn(message, previous)
        if len(turn.tokens) > self.config.window_tokens:
            raise InvalidInputError(
                f"a {message['role']} message of {len(turn.tokens)} tokens is longer than window_tokens="
                f"{self.config.window_tokens}; shorten it, raise window_tokens, or write long text with absorb()"
            )
        state.turns.append(turn)
        state.fingerprints.append(turn.fingerprint)
        state.pending.extend(turn.tokens)

    def _write_full_chunks(self, state: AgentState) -> None:
        while len(state.pending) >= self.config.chunk_tokens:
            self._write(state, self.config.chunk_tokens)

    def _prompt(self, state: AgentState, tools: list[dict] | None = None) -> list[int]:
        """Build the prompt from the window, first writing any pending tokens the window no longer holds."""
        start = self._window(state, state.system, tools)
        in_window = sum(len(turn.tokens) for turn in state.turns[start:])
        overflow = len(state.pending) - in_window
        if overflow > 0:
            self._write(state, overflow)
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
        """Train the next `n_tokens` pending tokens into the agent's adapter (one Temp-Lora update)."""
        chunk = state.pending[:n_tokens]
        input_ids, labels = build_example(state.written, chunk, self.config.train_context_tokens)
        started = time.perf_counter()
        with self._model_lock, self.bank.active(state.agent_id) as model, torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed(state.agent_id) + state.chunks_trained + 1)
            optimizer = state.optimizer or self._new_optimizer(state.agent_id)
            warmup = self.config.warmup_chunks * self.config.epochs
            lr_at = lambda step: learning_rate(step, self.config.learning_rate, warmup)  # noqa: E731
            state.last_loss = train_chunk(model, input_ids, labels, optimizer, self.config.epochs, state.steps, lr_at)
        state.optimizer = optimizer
        state.train_seconds += time.perf_counter() - started
        state.steps += self.config.epochs
        state.chunks_trained += 1
        state.tokens_written += len(chunk)
        state.written = (state.written + chunk)[-self.config.train_context_tokens :] if self.config.train_context_tokens else []
        del state.pending[:n_tokens]

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
    if not isinstance(agent_id, str) or not agent_id.strip():
        raise InvalidInputError(f"agent_id must be a non-empty string, got {agent_id!r}")
    if len(agent_id) > MAX_AGENT_ID_LENGTH or "\x00" in agent_id:
        raise InvalidInputError(
            f"agent_id must be at most {MAX_AGENT_ID_LENGTH} characters without NUL bytes, got {agent_id[:40]!r}..."
        )


def _eos_ids(tokenizer, model) -> set[int]:
    """Every token id that ends a reply: the tokenizer's and the generation config's end-of-sequence ids."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}
