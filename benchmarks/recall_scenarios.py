"""Seeded needle-in-dialogue scenarios for `python -m benchmarks recall`.

A scenario is an NPC conversation in which a few facts are told, once each, in one of several wordings and
sentence shapes (`benchmarks.recall_facts`: a tuning split and a report split); scripted small talk (no
generation, so building one is cheap) then pushes each fact a set number of chunks out of the prompt window
before it is asked about, in other words than it was told. Several facts per conversation check that later
facts do not erase earlier ones.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks.recall_facts import SPLITS, FactKind

Message = dict[str, str]


PERSONAS = (
    "You are Bram, the innkeeper of the Crooked Lantern inn. Answer the traveller briefly.",
    "You are Hilde, the blacksmith of Oakridge. Answer the customer briefly.",
    "You are Odo, the librarian of the old abbey. Answer the visitor briefly.",
    "You are Sela, a merchant at the harbour market. Answer the buyer briefly.",
)
ACKNOWLEDGEMENTS = ("I will remember that.", "Noted, friend.", "Good to know.", "I shall keep that in mind.")
SMALL_TALK = (
    ("Good evening! Is it always this busy here?", "Most nights, yes. Market days are the worst."),
    ("What is on the menu tonight?", "Barley soup, fresh bread and roast turnips."),
    ("Is the road to the mountains safe these days?", "Safe enough by day. Keep to the main road."),
    ("Have you heard any news from the capital?", "Only rumours of new taxes, as always."),
    ("The weather has been strange this week.", "Rain in the morning and sun by noon. Odd indeed."),
    ("Who is the old man sitting by the fire?", "That is Aldo. He tells stories for a cup of ale."),
    ("Do you know a good place to buy boots?", "The cobbler near the well does fine work."),
    ("What do people do here for fun?", "Dice, songs, and the odd wrestling match."),
    ("How long have you lived in this town?", "Since I was a child. I know every street."),
    ("Are there wolves in the forest?", "A few. They keep away from the fires."),
    ("The bread here is very good.", "Thank you. It is baked before dawn."),
    ("Is there a festival coming up?", "The harvest feast, at the end of the month."),
    ("What is the name of this river?", "The locals just call it the Grey."),
    ("Can you recommend a guide for the pass?", "Ask for Rurik at the stables."),
    ("I hear music from the square.", "The travelling players arrived today."),
    ("How much is a room for the night?", "Two silver coins, breakfast included."),
)


@dataclass(frozen=True)
class Fact:
    """A fact told in a scenario: its kind, value, the exchange that told it, the question, the answer prefix."""

    kind: str
    value: str
    telling: str
    question: str
    answer_prefix: str
    chunks_back: int
    shape: str


@dataclass(frozen=True)
class Scenario:
    """One conversation (system message + turns) and the facts to ask about at its end."""

    name: str
    system: Message
    messages: list[Message]
    facts: list[Fact]


def build_scenario(
    index: int,
    seed: int,
    distances: Sequence[int],
    chunk_tokens: int,
    window_tokens: int,
    count_tokens: Callable[[list[Message]], int],
    split: str = "tuning",
) -> Scenario:
    """Scenario `index`: one telling of the split's kinds per distance, told oldest first, each then pushed `d`
    chunks (+ the window) back; every fact a telling carries is asked.

    `count_tokens(messages)` gives the tokens the messages take in the conversation (the chat template's).
    """
    rng = random.Random(f"{seed}:{index}")
    kinds = rng.sample(SPLITS[split], len(distances))
    talk = list(SMALL_TALK)
    rng.shuffle(talk)
    filler = small_talk(talk, rng)
    messages: list[Message] = []
    facts = []
    ordered = sorted(distances, reverse=True)
    for position, (kind, back) in enumerate(zip(kinds, ordered, strict=True)):
        exchange, told = _telling(kind, rng)
        messages += exchange
        nearer = ordered[position + 1] if position + 1 < len(ordered) else 0
        target = (back - nearer) * chunk_tokens + (window_tokens if nearer == 0 else 0)
        messages += fill(filler, target, count_tokens)
        telling = " / ".join(m["content"] for m in exchange)
        for ask in kind.asks:
            question = rng.choice(ask.questions)
            facts.append(Fact(kind.kind, told[ask.slot], telling, question, ask.answer_prefix, back, kind.shape))
    system = {"role": "system", "content": PERSONAS[index % len(PERSONAS)]}
    return Scenario(f"scenario-{index}", system, messages, facts)


def _telling(kind: FactKind, rng: random.Random) -> tuple[list[Message], tuple[str, ...]]:
    """One exchange that tells the kind's values (the NPC acknowledges where its line is not the telling)."""
    values = rng.choice(kind.values)
    user, npc = rng.choice(kind.tellings)
    slots = dict(zip("vw", values, strict=False))
    npc_line = rng.choice(ACKNOWLEDGEMENTS) if npc is None else npc.format(**slots)
    return [{"role": "user", "content": user.format(**slots)}, {"role": "assistant", "content": npc_line}], values


def small_talk(talk: list[tuple[str, str]], rng: random.Random):
    """An endless stream of small-talk exchanges, each line varied by a running number so no two are identical."""
    round_ = 0
    while True:
        round_ += 1
        for user, assistant in talk:
            yield [{"role": "user", "content": f"{user} ({round_})"}, {"role": "assistant", "content": assistant}]
        rng.shuffle(talk)


def fill(filler, tokens: int, count_tokens: Callable[[list[Message]], int]) -> list[Message]:
    """Small-talk exchanges adding up to at least `tokens` tokens."""
    out: list[Message] = []
    while count_tokens(out) < tokens:
        out += next(filler)
    return out


def normalise(text: str) -> str:
    """Lower case, no punctuation, single spaces: how replies and answers are compared."""
    table = str.maketrans("", "", string.punctuation)
    return re.sub(r"\s+", " ", text.lower().translate(table)).strip()


def contains_answer(reply: str, answer: str) -> bool:
    """Exact match, normalised: the answer's words appear in the reply in order."""
    return f" {normalise(answer)} " in f" {normalise(reply)} "
