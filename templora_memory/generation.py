"""Token-by-token generation with a KV cache, and incremental decoding that honours stop strings."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from templora_memory.constrained import Constraint
from templora_memory.devices import model_device
from templora_memory.kv_cache import PromptCache

CHAT_REPETITION_PENALTY = 1.1
"""The chat model's and the server's repetition penalty: the 135M default model loops without one."""


GREEDY_BELOW = 1e-5
"""Temperatures below this pick greedily (as vLLM does): dividing logits by 1e-300 gives inf and nan probabilities."""


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked: greedy when temperature is 0 (or below `GREEDY_BELOW`)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    penalised: tuple[int, ...] | None = None
    """Prompt tokens the repetition penalty counts besides the reply's own; None: the whole prompt (transformers'
    convention). `MemoryEngine.respond` sets the assistant's earlier turns: a reply may repeat the user's words (the
    question it answers, a fact it was told) but not its own."""
    seed: int | None = None
    ignore_eos: bool = False
    """Generate exactly `max_new_tokens` (end-of-sequence tokens are kept going past), e.g. to time replies."""


@torch.no_grad()
def generate_tokens(
    model: nn.Module,
    prompt: Sequence[int],
    sampling: Sampling,
    eos_ids: set[int],
    cache: PromptCache | None = None,
    constraint: Constraint | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time until an end-of-sequence token or `max_new_tokens`.

    With a `cache` (an agent's, kept between calls) only the prompt tokens it does not hold yet are computed; a
    `LogitsSource` model (llama.cpp) keeps its own states and ignores it.
    The repetition penalty counts `sampling.penalised` (else the prompt) and the reply. With a `constraint`, only
    tokens its grammar allows are picked, the penalty counts only the reply, and generation ends when the grammar is
    complete.
    """
    if isinstance(model, LogitsSource):  # another backend (llama.cpp) that keeps its own states
        feed, step = list(prompt), model.next_logits
    else:
        cache = cache if cache is not None else PromptCache()
        feed, step = cache.align(prompt), torch_step(model, cache)
    picker = TokenPicker(prompt, sampling, eos_ids, constraint)
    token = picker.choose(step(feed)) if sampling.max_new_tokens > 0 else None
    while token is not None:
        yield token
        token = picker.choose(step([token])) if picker.accept(token) else None


class TokenPicker:
    """The per-token logic of one reply, apart from the model: grammar mask, repetition penalty, sampling, and when
    the reply ends. `generate_tokens` and the batched decoder (`batched_decoding`) pick every reply's tokens with it."""

    def __init__(
        self, prompt: Sequence[int], sampling: Sampling, eos_ids: set[int], constraint: Constraint | None = None
    ) -> None:
        self.sampling, self.eos_ids, self.constraint = sampling, eos_ids, constraint
        # an own generator even unseeded: the global RNG belongs to seeded training (see trainer.seeded)
        seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        self.generator = torch.Generator().manual_seed(seed % 2**64)  # torch takes 64 bits; any integer seeds it
        # tokens are picked on the CPU (one row of logits per token), so a seed picks the same tokens on every device
        self.seen = torch.tensor(_penalised(prompt, sampling, constraint), dtype=torch.long, device="cpu")  # (T,)
        self.picked = 0

    def choose(self, logits: torch.Tensor) -> int | None:
        """The next token after `logits` (V,) (changed in place), or None when it ends the reply (end of sequence)."""
        if self.constraint is not None:
            self.constraint.mask(logits)
        token = _pick(logits, self.seen, self.sampling, self.generator)
        return None if token in self.eos_ids and not self.sampling.ignore_eos else token

    def accept(self, token: int) -> bool:
        """Count `token` as part of the reply; False once the reply is complete (grammar finished, or length)."""
        self.picked += 1
        if self.constraint is not None:
            self.constraint.advance(token)
            if self.constraint.finished:
                return False
        self.seen = torch.cat([self.seen, torch.tensor([token], device="cpu")])
        return self.picked < self.sampling.max_new_tokens


@torch.no_grad()
def continuation_logits(
    model: nn.Module, prompt: Sequence[int], continuation: Sequence[int], cache: PromptCache | None = None
) -> torch.Tensor:
    """Logits (C, V) predicting each continuation token after `prompt`; a `cache` is used and extended."""
    cache = cache if cache is not None else PromptCache()
    feed = cache.align(prompt)
    ids = feed + list(continuation)
    try:
        input_ids = torch.tensor([ids], device=model_device(model))
        out = model(input_ids=input_ids, past_key_values=cache.past, use_cache=True)
    except BaseException:
        cache.clear()
        raise
    cache.record(ids, out.past_key_values)
    return out.logits[0, len(feed) - 1 : -1].float()


@runtime_checkable
class LogitsSource(Protocol):
    """A model outside torch that `generate_tokens` can decode with (see `templora_memory.llamacpp_decoding`)."""

    def next_logits(self, feed: list[int]) -> torch.Tensor:
        """The next token's logits (V,) fp32 after `feed`: the whole prompt first, then one token per call."""
        ...


def torch_step(model: nn.Module, cache: PromptCache) -> Callable[[list[int]], torch.Tensor]:
    """The next token's logits after the tokens fed, run through `model` with the KV states `cache` holds."""
    last_only = {"logits_to_keep": 1} if _keeps_logits(model) else {}  # a long prompt needs no logits but its last
    device = model_device(model)

    def step(feed: list[int]) -> torch.Tensor:
        try:
            ids = torch.tensor([feed], device=device)
            out = model(input_ids=ids, past_key_values=cache.past, use_cache=True, **last_only)
        except BaseException:
            cache.clear()  # some layers may hold the new states already: the cache no longer matches its ids
            raise
        cache.record(feed, out.past_key_values)
        return out.logits[0, -1].float().cpu()

    return step


def _keeps_logits(model: nn.Module) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' causal LMs; peft's wrapper hides it)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _penalised(prompt: Sequence[int], sampling: Sampling, constraint: Constraint | None) -> list[int]:
    """The prompt tokens the repetition penalty counts: none under a constraint (a constrained reply copies values out
    of the prompt, tool arguments, and penalising them picks wrong ones), else those named, else the whole prompt."""
    if constraint is not None:
        return []
    return list(prompt if sampling.penalised is None else sampling.penalised)


def _pick(logits: torch.Tensor, seen: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """Apply repetition penalty, then take the argmax or sample from the nucleus."""
    if sampling.repetition_penalty != 1.0:
        previous = logits[seen]
        logits[seen] = torch.where(
            previous > 0, previous / sampling.repetition_penalty, previous * sampling.repetition_penalty
        )
    if sampling.temperature < GREEDY_BELOW:
        return int(logits.argmax())
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


class StopDecoder:
    """Decodes a growing list of token ids into text pieces, cutting at the first stop string.

    Text that could still become a stop string, or an incomplete UTF-8 character, is held back
    until it is certain; `finished` turns True once a stop string has been seen.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.emitted = ""
        self.finished = False

    def push(self, token: int) -> str:
        """Add one token; return the text that is now safe to emit (possibly empty)."""
        self.ids.append(token)
        return self._advance(final=False)

    def flush(self) -> str:
        """Emit whatever is held back once generation has ended."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self.finished:
            return ""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.finished = True
            text = text[:cut]
        elif not final:
            text = text[: len(text) - self._held_back(text)]
        piece = text[len(self.emitted) :]
        self.emitted = text if len(text) > len(self.emitted) else self.emitted
        return piece

    def _held_back(self, text: str) -> int:
        """Characters at the end of `text` that might be the start of a stop string or a split character."""
        if text.endswith("\ufffd"):
            return len(text) - len(self.emitted) if len(text) > len(self.emitted) else 0
        return max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
