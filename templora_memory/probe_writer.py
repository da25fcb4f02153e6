"""Who writes a chunk's probes (`probe_writer`): rules on the user's statements, rules on every sentence shape, or
the model itself (self-study).

"statements" (the default) is `templora_memory.probes`; "shapes" is `templora_memory.probe_shapes`. With "model"
the base model (adapter disabled) reading the chunk writes, for each sentence the "shapes" rules would probe, the
question a user would ask to recall it, then answers that question as it would with the chunk in its prompt — as in
Cartridges' self-study (arXiv 2506.06266) and Active Reading (arXiv 2508.09494). Its wording then teaches the
openings the model's own replies take. A written question that is not a question, or an answer that does not name
the sentence's name or number, falls back on the rule's, so a weak writer costs time, not facts. Generation is
greedy, so the probes written are reproducible. Meant for models that write well; unmeasured at 135M.
"""

from __future__ import annotations

from collections.abc import Sequence

from peft import PeftModel

from templora_memory import probe_shapes, probes
from templora_memory.generation import CHAT_REPETITION_PENALTY, Sampling, generate_tokens
from templora_memory.kv_cache import PromptCache
from templora_memory.message import Message
from templora_memory.probes import Probe
from templora_memory.rendering import ChatRenderer

RULES = {"statements": probes.probes_for, "shapes": probe_shapes.probes_for, "model": probe_shapes.probes_for}
"""The rules each writer takes its probes from ("model": the sentences it writes about, and its fallback)."""
ASK = 'Write the short question I would ask you later to check that you remember this: "{sentence}"'
"""The user turn after the chunk that has the model write a probe's question."""
MAX_WRITTEN_TOKENS = 32
"""Most tokens the model writes for one question or one answer."""


class ProbeWriter:
    """Writes a chunk's probes by rules, or has the base model write them (see the module docstring)."""

    def __init__(self, renderer: ChatRenderer, eos_ids: set[int], writer: str = "statements") -> None:
        if writer not in RULES:
            raise ValueError(f"probe writer {writer!r} is not one of {', '.join(RULES)}")
        self.renderer = renderer
        self.eos_ids = eos_ids
        self.writer = writer

    def write(
        self, model: PeftModel, context: Sequence[int], messages: Sequence[Message], count: int, seed: int
    ) -> list[Probe]:
        """Up to `count` probes about `messages`; the model (adapter disabled) reads `context`, the chunk."""
        rules = RULES[self.writer](messages, count, seed)
        if self.writer != "model" or not rules or not context:
            return rules
        last = messages[-1] if messages else None
        cache = PromptCache()  # the chunk's states are computed once and shared by every question and answer
        replies: dict[str, str] = {}  # the same request gets the same (greedy) reply, written once
        with model.disable_adapter():
            written = [self._written(model, list(context), last, rule, cache, replies) for rule in rules]
        unique: dict[tuple[str, str], Probe] = {}
        for probe in written:  # a sentence's probes may be written alike: each question and answer taught once
            unique.setdefault((probe.question, probe.answer), probe)
        return list(unique.values())

    def _written(
        self,
        model: PeftModel,
        context: list[int],
        last: Message | None,
        rule: Probe,
        cache: PromptCache,
        replies: dict[str, str],
    ) -> Probe:
        """The model's question about the rule probe's sentence and its answer, each kept only if usable."""

        def reply(asked: str) -> str:
            if asked not in replies:
                replies[asked] = self._generate(model, context, last, asked, cache)
            return replies[asked]

        head, mark, _ = reply(ASK.format(sentence=rule.sentence)).strip().split("\n")[0].partition("?")
        question = f"{head.strip()}?" if mark and len(head.split()) >= 3 else rule.question
        answer = reply(question).split("\n")[0].strip()
        if not answer or (rule.span and rule.span.lower() not in answer.lower()):
            answer = rule.answer
        return Probe(question, answer, rule.span, rule.sentence)

    def _generate(
        self, model: PeftModel, context: list[int], last: Message | None, asked: str, cache: PromptCache
    ) -> str:
        """The model's greedy reply to `asked`, a user turn after the chunk."""
        follow = self.renderer.follow_up(last, [{"role": "user", "content": asked}])
        sampling = Sampling(MAX_WRITTEN_TOKENS, repetition_penalty=CHAT_REPETITION_PENALTY, penalised=())
        tokens = list(generate_tokens(model, context + follow, sampling, self.eos_ids, cache))
        return self.renderer.tokenizer.decode(tokens, skip_special_tokens=True)
