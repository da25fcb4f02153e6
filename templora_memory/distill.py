"""Context distillation onto probes: the base model with the chunk in its context teaches the adapter without it.

For each probe (see `templora_memory.probes`) the teacher is the base model (adapter disabled) reading
the chunk and the L_T tokens before it, then the probe's question as the next user turn; its top-k
log-probabilities (at temperature T) on the answer's tokens are kept. The student is the agent's model
reading only its system message and the question. The trainer adds KL(teacher ‖ student) on the answer
tokens to the chunk's loss. Taught probes are kept (a bounded, seeded reservoir) and replayed in later
updates, so facts written earlier are rehearsed while later ones are written.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel

from templora_memory.config import TempLoraConfig
from templora_memory.conversation import ChatRenderer
from templora_memory.message import Message
from templora_memory.probes import Probe, probes_for
from templora_memory.trainer import DistillBatch, padded_batch

TOP_K = 32
"""Teacher log-probabilities kept per answer token (the rest of the vocabulary carries little mass)."""


@dataclass(frozen=True)
class TaughtProbe:
    """A probe as the student reads it, and the teacher's top-k log-probabilities on each of its answer tokens."""

    prompt: list[int]
    """The student's prompt: the agent's system message, the question, the assistant header."""
    answer: list[int]
    top_ids: torch.Tensor
    """(A, k) token ids, one row per answer token."""
    top_logprobs: torch.Tensor
    """(A, k) the teacher's log-softmax(logits / T) at those ids."""

    def to_record(self) -> dict[str, torch.Tensor]:
        """Tensors only, for the store (`torch.load(weights_only=True)` reads them back)."""
        return {
            "prompt": torch.tensor(self.prompt, dtype=torch.long),
            "answer": torch.tensor(self.answer, dtype=torch.long),
            "top_ids": self.top_ids,
            "top_logprobs": self.top_logprobs,
        }

    @classmethod
    def from_record(cls, record: dict[str, torch.Tensor]) -> TaughtProbe:
        return cls(record["prompt"].tolist(), record["answer"].tolist(), record["top_ids"], record["top_logprobs"])


class ProbeTeacher:
    """Builds a chunk's probes, takes the teacher's answer distributions, and keeps the replay reservoir."""

    def __init__(self, renderer: ChatRenderer, config: TempLoraConfig) -> None:
        self.renderer = renderer
        self.config = config

    @torch.no_grad()
    def teach(
        self,
        model: PeftModel,
        context: Sequence[int],
        messages: Sequence[Message],
        system: Sequence[Message],
        seed: int,
    ) -> list[TaughtProbe]:
        """Probes about the chunk's `messages`, taught by the base model reading `context` (L_T + the chunk)."""
        probes = probes_for(messages, self.config.probe_questions, seed)
        if not probes or not context:
            return []
        last = messages[-1] if messages else None
        with model.disable_adapter():
            cache = model(input_ids=torch.tensor([list(context)]), use_cache=True).past_key_values
            return [self._teach_one(model, cache, last, system, probe) for probe in probes]

    def _teach_one(self, model, cache, last: Message | None, system, probe: Probe) -> TaughtProbe:
        question = {"role": "user", "content": probe.question}
        answer = {"role": "assistant", "content": probe.answer}
        student_prompt, answer_ids = self.renderer.reply(list(system), [question], answer)
        follow = self.renderer.follow_up(last, [question])  # the question after the chunk, then the header
        ids = follow + answer_ids
        logits = model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True).logits[0]  # (F+A, V)
        cache.crop(-len(ids))  # the next probe follows the chunk again
        scored = logits[len(follow) - 1 : len(ids) - 1].float() / self.config.distill_temperature  # (A, V)
        top = torch.log_softmax(scored, dim=-1).topk(min(TOP_K, scored.shape[-1]), dim=-1)
        return TaughtProbe(student_prompt, answer_ids, top.indices, top.values)

    def batch(self, taught: Sequence[TaughtProbe]) -> DistillBatch | None:
        """The probes as one padded student batch with the teacher's targets (None when there is none)."""
        if not taught:
            return None
        students = padded_batch([(probe.prompt, probe.answer) for probe in taught])
        top_ids = torch.cat([probe.top_ids for probe in taught])  # (N, k), N answer tokens in batch order
        top_logprobs = torch.cat([probe.top_logprobs for probe in taught])
        return DistillBatch(students, top_ids, top_logprobs)

    def replayed(self, reservoir: Sequence[TaughtProbe], seed: int) -> list[TaughtProbe]:
        """Earlier probes to rehearse in this update: up to `probe_questions` of the reservoir, seeded."""
        count = min(self.config.probe_questions, len(reservoir))
        return random.Random(seed).sample(list(reservoir), count) if count else []

    def keep(self, reservoir: list[TaughtProbe], seen: int, taught: Sequence[TaughtProbe], seed: int) -> int:
        """Add `taught` to the bounded reservoir (a uniform sample of every probe seen); returns probes seen after."""
        rng = random.Random(seed)
        for probe in taught:
            seen += 1
            if len(reservoir) < self.config.replay_probes:
                reservoir.append(probe)
            elif self.config.replay_probes and (slot := rng.randrange(seen)) < self.config.replay_probes:
                reservoir[slot] = probe
        return seen
