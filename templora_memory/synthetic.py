"""Synthetic question–answer pairs about a chunk, the LIFT recipe (Mao et al. 2024, "LIFT: long input fine-tuning").

Before a chunk is trained, the base model (adapter disabled) reads the chunk and writes short
question/answer pairs about it. Each pair becomes a chat example in the agent's own format
(system message, the question as a user turn, the answer as the assistant's reply) with loss on
the answer only, so the adapter learns to *answer* from the chunk, not only to continue its text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from templora_memory.generation import Sampling, generate_tokens
from templora_memory.kv_cache import PromptCache
from templora_memory.message import Message
from templora_memory.rendering import ChatRenderer
from templora_memory.trainer import LabelledBatch, padded_batch

INSTRUCTION = "Write one question about a fact stated above, and its short answer."
"""Asked after the chunk's text, in a user turn; the assistant's reply is started with "Question:"."""
EXAMPLE = (
    "Tom: I finally bought a bike yesterday, a blue one.\nAnna: Nice! I still walk to the bakery where I work.",
    "Question: Where does Anna work?\nAnswer: At a bakery",
)
"""One worked exchange before the chunk: without it a 135M model rarely keeps the Question/Answer format."""
MAX_PAIR_TOKENS = 64
"""Most tokens sampled for one pair."""
SAMPLING = dict(temperature=0.7, top_p=0.9)
"""Sampling of the pairs: some variety between the questions of one chunk, still mostly on topic."""
_PAIR = re.compile(r"^\s*(?P<question>[^\n]+?)\s*\n\s*Answer:[ \t]*(?P<answer>[^\n]*\S)[ \t]*(?:\n|$)")


@dataclass(frozen=True)
class QAPair:
    """One synthetic question about a chunk and its answer."""

    question: str
    answer: str


def parse_pair(text: str) -> QAPair | None:
    """The pair in a continuation of "Question:" ("<question>\\nAnswer: <answer>"), or None if malformed."""
    match = _PAIR.match(text)
    if match is None:
        return None
    return QAPair(match["question"].strip(), match["answer"].strip())


def unique_pairs(pairs: Sequence[QAPair | None]) -> list[QAPair]:
    """The well-formed pairs, each question once (compared without case or extra spaces), in order."""
    seen, kept = set(), []
    for pair in pairs:
        key = " ".join(pair.question.casefold().split()) if pair is not None else None
        if pair is None or key in seen:
            continue
        seen.add(key)
        kept.append(pair)
    return kept


class QuestionWriter:
    """Writes `count` QA pairs about a chunk with the base model and renders them as training examples."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, renderer: ChatRenderer, eos_ids: set[int], count: int
    ) -> None:
        self.tokenizer = tokenizer
        self.renderer = renderer
        self.eos_ids = eos_ids
        self.count = count

    def write(self, model: PeftModel, chunk: Sequence[int], seed: int) -> list[QAPair]:
        """Sample `count` pairs about the chunk with `model`'s adapter disabled; reproducible from `seed`.

        Malformed pairs and repeated questions are dropped, so fewer than `count` may come back.
        """
        if not self.count:
            return []
        prompt = self._prompt(self.tokenizer.decode(list(chunk), skip_special_tokens=True))
        cache = PromptCache()  # the chunk's states are computed once and shared by every sample
        with model.disable_adapter():
            # seeds seed*16 + i: count <= 16, so no two chunks (seeds k, k+1) share a sample's seed
            texts = [self._sample(model, prompt, cache, seed * 16 + i) for i in range(self.count)]
        return unique_pairs([parse_pair(t) for t in texts])

    def batch(self, system: Sequence[Message], pairs: Sequence[QAPair], device: torch.device) -> LabelledBatch | None:
        """The pairs as chat examples after the agent's system message, on `device` (None when there is no pair)."""
        if not pairs:
            return None
        return padded_batch([self._example(system, pair) for pair in pairs], device)

    def _prompt(self, text: str) -> list[int]:
        """The chat asking for a pair: the worked example, then the chunk's text, the reply opened with "Question:"."""
        example, pair = EXAMPLE
        messages = [
            {"role": "user", "content": f"{example}\n\n{INSTRUCTION}"},
            {"role": "assistant", "content": pair},
            {"role": "user", "content": f"{text.strip()}\n\n{INSTRUCTION}"},
        ]
        opening = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(opening + "Question:", add_special_tokens=False)["input_ids"]

    def _sample(self, model: PeftModel, prompt: list[int], cache: PromptCache, seed: int) -> str:
        """One continuation of the prompt, stopped once the answer's line is complete."""
        sampling = Sampling(max_new_tokens=MAX_PAIR_TOKENS, seed=seed, **SAMPLING)
        ids: list[int] = []
        text = ""
        for token in generate_tokens(model, prompt, sampling, self.eos_ids, cache):
            ids.append(token)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if "\n" in text.partition("Answer:")[2]:
                break
        return text

    def _example(self, system: Sequence[Message], pair: QAPair) -> tuple[list[int], list[int]]:
        question = {"role": "user", "content": pair.question}
        answer = {"role": "assistant", "content": pair.answer}
        return self.renderer.reply(list(system), [question], answer)
