"""Seeded needle-in-dialogue scenarios for `python -m benchmarks recall`.

A scenario is an NPC conversation in which the user tells a few facts, once each, in one of several
wordings; scripted small talk (no generation, so building one is cheap) then pushes each fact a set
number of chunks out of the prompt window before it is asked about, in other words than it was told.
Several facts per conversation check that later facts do not erase earlier ones.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Message = dict[str, str]


@dataclass(frozen=True)
class FactKind:
    """One kind of fact: its possible values, how a user tells it, how it is asked, and how an answer starts."""

    kind: str
    values: tuple[str, ...]
    tellings: tuple[str, ...]
    """User lines stating the fact; `{v}` is the value."""
    questions: tuple[str, ...]
    """User lines asking for it, worded unlike every telling."""
    answer_prefix: str
    """A neutral start of the assistant's answer, after which the value is scored."""


KINDS = (
    FactKind(
        "name",
        ("Mira", "Tomas", "Elsa", "Ivo", "Greta", "Pavel", "Lina", "Oskar"),
        ("My daughter is called {v}.", "By the way, my little girl's name is {v}.", "I named my daughter {v}."),
        ("What is my daughter's name?", "Do you remember what my girl is called?"),
        "Your daughter's name is",
    ),
    FactKind(
        "code",
        ("bluebell", "copperfish", "moonstone", "thistle", "saffron", "hawthorn", "marigold", "quartz"),
        (
            "The password for the cellar is {v}.",
            "Keep this secret: the cellar password is {v}.",
            "To open the cellar, say {v}.",
        ),
        ("What do I say to get into the cellar?", "Which word opens the cellar door?"),
        "The cellar password is",
    ),
    FactKind(
        "place",
        ("the old mill", "the north stable", "the chapel yard", "the river ford", "the blacksmith's shed"),
        ("I left my horse at {v}.", "My horse is waiting for me at {v}.", "I tied my horse up at {v} this morning."),
        ("Where did I leave my horse?", "Where can I find my horse again?"),
        "Your horse is at",
    ),
    FactKind(
        "number",
        ("seven", "twelve", "nineteen", "forty", "three", "sixty"),
        ("I have {v} sheep on my farm.", "My farm keeps {v} sheep these days.", "We counted {v} sheep in my flock."),
        ("How many sheep do I own?", "What is the size of my flock?"),
        "You have",
    ),
    FactKind(
        "day",
        ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
        ("My wedding is on {v}.", "I am getting married on {v}.", "The wedding will be held on {v}."),
        ("On which day is my wedding?", "When do I get married?"),
        "Your wedding is on",
    ),
    FactKind(
        "relation",
        ("a baker", "a sailor", "a carpenter", "a weaver", "a miner", "a fisherman"),
        ("My brother works as {v}.", "My older brother is {v} by trade.", "My brother earns his bread as {v}."),
        ("What does my brother do for a living?", "What is my brother's job?"),
        "Your brother is",
    ),
    FactKind(
        "possession",
        ("red", "green", "yellow", "purple", "white", "black"),
        ("My cart is painted {v}.", "I drive a {v} cart.", "You will know my cart: it is {v}."),
        ("What colour is my cart?", "How would I recognise my cart?"),
        "Your cart is",
    ),
    FactKind(
        "preference",
        ("cider", "mead", "plum wine", "black tea", "goat milk", "ginger beer"),
        (
            "My favourite drink is {v}.",
            "Nothing beats {v}, it is what I always drink.",
            "I love {v} more than any other drink.",
        ),
        ("What do I like to drink most?", "Which drink should you pour for me?"),
        "Your favourite drink is",
    ),
    FactKind(
        "plan",
        ("Eastport", "Highmoor", "Saltmarsh", "Ravenhill", "Brookvale", "Stonebridge"),
        ("Tomorrow I travel to {v}.", "I am heading to {v} next.", "My next journey takes me to {v}."),
        ("Where am I going next?", "Which town is my next destination?"),
        "You are travelling to",
    ),
)

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
GENERAL_CHECKS = (
    ("What is the capital of France?", "Paris"),
    ("How many legs does a spider have?", "eight"),
    ("What colour is the sky on a clear day?", "blue"),
    ("Reply with the single word: yes.", "yes"),
    ("What is two plus two?", "four"),
    ("Which animal says moo?", "cow"),
)
"""(question, answer) never said in any conversation: an adapter that only parrots its conversation is caught."""


@dataclass(frozen=True)
class Fact:
    """A fact told in a scenario: its kind, value, the line that told it, the question and the answer prefix."""

    kind: str
    value: str
    telling: str
    question: str
    answer_prefix: str
    chunks_back: int


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
) -> Scenario:
    """Scenario `index`: one fact per distance, told oldest first, each then pushed `d` chunks (+ the window) back.

    `count_tokens(messages)` gives the tokens the messages take in the conversation (the chat template's).
    """
    rng = random.Random(f"{seed}:{index}")
    kinds = rng.sample(KINDS, len(distances))
    talk = list(SMALL_TALK)
    rng.shuffle(talk)
    filler = _filler(talk, rng)
    messages: list[Message] = []
    facts = []
    ordered = sorted(distances, reverse=True)
    for position, (kind, back) in enumerate(zip(kinds, ordered, strict=True)):
        value = rng.choice(kind.values)
        telling = rng.choice(kind.tellings).format(v=value)
        messages += [
            {"role": "user", "content": telling},
            {"role": "assistant", "content": rng.choice(ACKNOWLEDGEMENTS)},
        ]
        nearer = ordered[position + 1] if position + 1 < len(ordered) else 0
        target = (back - nearer) * chunk_tokens + (window_tokens if nearer == 0 else 0)
        messages += _fill(filler, target, count_tokens)
        question = rng.choice(kind.questions)
        facts.append(Fact(kind.kind, value, telling, question, kind.answer_prefix, back))
    system = {"role": "system", "content": PERSONAS[index % len(PERSONAS)]}
    return Scenario(f"scenario-{index}", system, messages, facts)


def _filler(talk: list[tuple[str, str]], rng: random.Random):
    """An endless stream of small-talk exchanges, each line varied by a running number so no two are identical."""
    round_ = 0
    while True:
        round_ += 1
        for user, assistant in talk:
            yield [{"role": "user", "content": f"{user} ({round_})"}, {"role": "assistant", "content": assistant}]
        rng.shuffle(talk)


def _fill(filler, tokens: int, count_tokens: Callable[[list[Message]], int]) -> list[Message]:
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
