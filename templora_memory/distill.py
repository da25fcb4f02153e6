"""Context distillation onto probes: the base model with the chunk in its context teaches the adapter without it.

For each probe (see `templora_memory.probes`) the teacher is the base model (adapter disabled) reading
the chunk and the L_T tokens before it, then the probe's question as the next user turn; its top-k
log-probabilities (at temperature T) on the answer's tokens are kept. The student is the agent's model
reading only its system message and the question. The trainer adds KL(teacher ‖ student) on the answer
tokens to the chunk's loss. Taught probes are kept (a bounded, seeded reservoir) and replayed in later
updates, so facts written earlier are rehearsed while later ones are written.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel
from transformers import Cache

from templora_memory import precision
from templora_memory.config import TempLoraConfig
from templora_memory.devices import model_device
from templora_memory.message import Message
from templora_memory.probe_writer import ProbeWriter
from templora_memory.probes import ANCHORS
from templora_memory.rendering import ChatRenderer
from templora_memory.trainer import DistillBatch, padded_batch, scored_logits

TOP_K = 32
"""Teacher log-probabilities kept per answer token (the rest of the vocabulary carries little mass)."""
ANCHOR_SYSTEMS = 64
"""System messages whose taught anchors are kept per engine (agents usually share a handful)."""


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
            "prompt": torch.tensor(self.prompt, dtype=torch.long, device="cpu"),
            "answer": torch.tensor(self.answer, dtype=torch.long, device="cpu"),
            "top_ids": self.top_ids.cpu(),
            "top_logprobs": self.top_logprobs.cpu(),
        }

    @classmethod
    def from_record(cls, record: dict[str, torch.Tensor]) -> TaughtProbe:
        return cls(record["prompt"].tolist(), record["answer"].tolist(), record["top_ids"], record["top_logprobs"])


class ProbeTeacher:
    """Builds a chunk's probes, takes the teacher's answer distributions, and keeps the replay reservoir."""

    def __init__(self, renderer: ChatRenderer, config: TempLoraConfig, eos_ids: set[int] | None = None) -> None:
        """`eos_ids` end the model's writing (`probe_writer="model"`); the rule writers need none."""
        self.renderer = renderer
        self.config = config
        self.writer = ProbeWriter(renderer, eos_ids or set(), config.probe_writer)
        self._anchors: dict[str, list[TaughtProbe]] = {}  # system message (JSON) -> every anchor, taught

    @torch.no_grad()
    def teach(
        self,
        model: PeftModel,
        context: Sequence[int],
        messages: Sequence[Message],
        system: Sequence[Message],
        seed: int,
    ) -> list[TaughtProbe]:
        """Probes about the chunk's `messages`, taught by the base model reading `context` (L_T + the chunk).

        The context runs once; all probes then run as one batch reading copies of its KV cache, each probe
        being the question after the chunk and the answer (right-padded: the padding follows every token scored).
        """
        if not context:
            return []
        probes = self.writer.write(model, context, messages, self.config.probe_questions, seed)
        if not probes:
            return []
        last = messages[-1] if messages else None
        students, follows = [], []
        for probe in probes:
            question = {"role": "user", "content": probe.question}
            answer = {"role": "assistant", "content": probe.answer}
            students.append(self.renderer.reply(list(system), [question], answer))
            follows.append(self.renderer.follow_up(last, [question]))  # the question after the chunk, the header
        device = model_device(model)
        with model.disable_adapter(), precision.training(self.config.train_precision, device):
            ids = torch.tensor([list(context)], device=device)
            cache = model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values
            cache.batch_repeat_interleave(len(probes))
            readings = [(follow, answer) for follow, (_, answer) in zip(follows, students, strict=True)]
            return self._taught(model, students, readings, cache)

    @torch.no_grad()
    def anchor(self, model: PeftModel, system: Sequence[Message], seed: int) -> list[TaughtProbe]:
        """Up to `anchor_probes` generic questions (never about the conversation) with written answers, taught by the
        base model reading what the student reads: the KL then holds the adapter to what the model knew before."""
        count = min(self.config.anchor_probes, len(ANCHORS))
        if not count:
            return []
        taught = self._all_anchors(model, system)
        return [taught[i] for i in random.Random(seed).sample(range(len(ANCHORS)), count)]

    def _all_anchors(self, model: PeftModel, system: Sequence[Message]) -> list[TaughtProbe]:
        """Every anchor after this system message, taught once per engine (the base model never changes), always
        as the same batch, so an update's targets do not depend on which updates came before it."""
        key = json.dumps(list(system), sort_keys=True)
        if key not in self._anchors:
            students = [
                self.renderer.reply(list(system), [{"role": "user", "content": q}], {"role": "assistant", "content": a})
                for q, a in ANCHORS
            ]
            with model.disable_adapter(), precision.training(self.config.train_precision, model_device(model)):
                self._anchors[key] = self._taught(model, students, students)
            while len(self._anchors) > ANCHOR_SYSTEMS:
                self._anchors.pop(next(iter(self._anchors)))  # the system message taught longest ago
        return self._anchors[key]

    def _taught(
        self,
        model: PeftModel,
        students: Sequence[tuple[list[int], list[int]]],
        readings: Sequence[tuple[list[int], list[int]]],
        cache: Cache | None = None,
    ) -> list[TaughtProbe]:
        """The teacher's top-k log-probabilities on each answer, reading (prefix, answer) `readings` as one batch
        (after `cache` if given; right-padded, so the padding follows every token scored)."""
        batch = padded_batch(readings, model_device(model))
        logits = scored_logits(
            model, batch.labels, input_ids=batch.input_ids, past_key_values=cache, use_cache=cache is not None
        )
        scored = logits.float() / self.config.distill_temperature
        top = torch.log_softmax(scored, dim=-1).topk(min(TOP_K, scored.shape[-1]), dim=-1)  # (N, k), probe-major
        lengths = [len(answer) for _, answer in students]
        taught = zip(students, top.indices.split(lengths), top.values.split(lengths), strict=True)
        return [TaughtProbe(prompt, answer, ids, logprobs) for (prompt, answer), ids, logprobs in taught]

    def batch(self, taught: Sequence[TaughtProbe], device: torch.device) -> DistillBatch | None:
        """The probes as one padded student batch with the teacher's targets, on `device` (probes read back from the
        store are on the CPU), or None when there is none."""
        if not taught:
            return None
        students = padded_batch([(probe.prompt, probe.answer) for probe in taught], device)
        top_ids = torch.cat([probe.top_ids.to(device) for probe in taught])  # (N, k), N answer tokens in batch order
        top_logprobs = torch.cat([probe.top_logprobs.to(device) for probe in taught])
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
