"""Question–answer probes about a chunk, built from its own text (no generation), for context distillation.

Next-token training on a conversation lowers its loss but barely makes its facts answerable (the
"perplexity curse"; see README, "Memory that answers"). What made facts answerable in the literature is
training the adapter to do *without* the text what the model does *with* it: on probe questions about
the chunk, the base model with the chunk in its context is the teacher, the adapter without it the
student, and the loss is KL(teacher ‖ student) on the probe's answer tokens.

A 135M model writes poor questions, so probes are built from the user's own statements: each declarative
sentence the user said becomes an answer in the assistant's voice ("My daughter is called Mira." →
"Your daughter is called Mira."; "I was born in Oslo." → "You were born in Oslo."), asked by several questions
(surface forms): generic recall questions and a cloze on the sentence's salient span (a name, a number, a place at
its end). These are the default probes (`probe_writer="statements"`); `templora_memory.probe_shapes` builds the
broader, opt-in ones and `templora_memory.probe_writer` picks the writer.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from templora_memory.message import Message

RECALL_QUESTIONS = (
    "What did I tell you earlier?",
    "Can you remind me what I said before?",
    "Do you remember what I mentioned?",
    "What do you know about me?",
)
"""Generic questions whose answer is a restatement of what the user said."""
ANCHORS = (
    ("What is the largest planet in our solar system?", "The largest planet is Jupiter."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What do bees make?", "Bees make honey."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Which season comes after winter?", "Spring comes after winter."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("How many hours are in a day?", "There are twenty-four hours in a day."),
    ("What colour is grass?", "Grass is green."),
    ("What is ten minus three?", "Ten minus three is seven."),
    ("Say hello in one word.", "Hello."),
    ("Which animal barks?", "A dog barks."),
    ("What do we use to see?", "We use our eyes to see."),
    ("Name a fruit that is yellow.", "A banana is yellow."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("Where does the sun rise?", "The sun rises in the east."),
    ("Answer with one word: is fire cold?", "No."),
)
"""Generic questions with plain answers, never about a conversation (`anchor_probes`): the base model's distribution
along these answers is what the adapter is held to, so that writing a conversation leaves general knowledge intact."""
_SWAPS = {
    "i": "you", "me": "you", "my": "your", "mine": "yours", "myself": "yourself", "i'm": "you're",
    "i've": "you've", "i'll": "you'll", "i'd": "you'd", "am": "are", "we": "you", "us": "you", "our": "your",
    "ours": "yours", "we're": "you're", "we've": "you've",
}  # fmt: skip
_AGREES = re.compile(r"\b(you) was(n't)?\b", re.I)
"""A swapped "I was" ("you was") that must agree: "you were" ("I am" agrees through `_SWAPS`' "am" → "are")."""
_WORD = re.compile(r"[A-Za-z']+")
_SENTENCE = re.compile(r"[^.!?\n]+[.!]")
_SALIENT = re.compile(r"\b(?:[A-Z][a-z]+(?: [A-Z][a-z]+)*|\d[\d:/.,-]*\d|\d)\b")


@dataclass(frozen=True)
class Probe:
    """A question the user may ask later, the answer that restates what was said, and the span it must name."""

    question: str
    answer: str
    span: str | None = None
    """The name or number the answer must contain (set by the opt-in writers; the model's answers are checked on it)."""
    sentence: str = field(default="", compare=False)
    """What was said, as said (what a model-written probe is asked about)."""


def swap_person(text: str) -> str:
    """First person becomes second person ("my" → "your", "I am" → "you are", "I was" → "you were"), keeping
    capitals."""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        swapped = _SWAPS.get(word.lower())
        if swapped is None:
            return word
        return swapped.capitalize() if match.start() == 0 else swapped  # "I" is upper case mid-sentence too

    return _AGREES.sub(lambda m: f"{m.group(1)} were{m.group(2) or ''}", _WORD.sub(swap, text.strip()))


def restate(sentence: str) -> str:
    """A user's sentence in the assistant's voice, starting with a capital."""
    text = swap_person(sentence)
    return text[:1].upper() + text[1:]


def recalled(answer: str) -> str:
    """ "You told me that your daughter is called Mira." — a restated sentence as a recall answer."""
    first = answer.split(" ", 1)[0]
    opening = first.lower() if first.lower() in _SWAPS.values() else first
    return f"You told me that {opening}{answer[len(first) :]}"


def statements(text: str) -> list[str]:
    """The declarative sentences of a text (questions dropped), at least three words each."""
    return [s.strip() for s in _SENTENCE.findall(text) if len(s.split()) >= 3]


def salient_span(sentence: str) -> str | None:
    """The span a question about the sentence would ask for: its last name or number, else its last words."""
    found = [m for m in _SALIENT.finditer(sentence) if m.start() > 0]
    if found:
        return found[-1].group(0)
    words = sentence.rstrip(".!").split()
    return " ".join(words[-2:]) if len(words) >= 4 else None


def cloze(restated: str, span: str) -> str | None:
    """ "Remind me: your daughter is called what?" — the restated sentence with its span asked for."""
    head, found, tail = restated.rstrip(".!").rpartition(span)
    if not found:
        return None
    asked = f"{head}what{tail}".strip()
    return f"Remind me: {asked[0].lower()}{asked[1:]}?"


def probes_for(messages: Sequence[Message], count: int, seed: int) -> list[Probe]:
    """Up to `count` probes about the user's statements in `messages`, the sentences with names or numbers first.

    Each statement gets a cloze probe and a generic recall probe, in a seeded order; reproducible from `seed`.
    """
    if count <= 0:
        return []
    rng = random.Random(seed)
    said = [s for m in messages if m.get("role") == "user" for s in statements(str(m.get("content") or ""))]
    said.sort(key=lambda s: _SALIENT.search(s[1:]) is None)  # stable: named facts first, in order
    probes: list[Probe] = []
    for sentence in said:
        answer = restate(sentence)
        span = salient_span(sentence)
        asked = cloze(answer, swap_person(span)) if span else None
        if asked:
            probes.append(Probe(asked, answer))
        probes.append(Probe(rng.choice(RECALL_QUESTIONS), recalled(answer)))
    return probes[:count]
