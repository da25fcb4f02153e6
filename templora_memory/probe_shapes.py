"""Opt-in probes from every turn and sentence shape (`probe_writer="shapes"`; no generation).

The default probes (`templora_memory.probes`) come from the user's first-person statements only. These come from
every sentence of every turn that names something (a name, a number, a place): the user's statements are restated
in the assistant's voice ("I was born in Oslo." → "You were born in Oslo."), their questions and requests reported
("You asked me: could I feed Biscuit, your dog?"), and the assistant's own words recalled as said ("I told you:
your room is number four."). A sentence that leans on the one before it ("I owe him nine coins.") is restated with
it. Each becomes a cloze on each of its salient spans and a generic recall question.

On the recall benchmark's tuning split these lowered recall against the default probes at 135M (docs/benchmarks.md,
"recall on the split benchmark"), so they are not the default.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from templora_memory import probes
from templora_memory.message import Message
from templora_memory.probes import Probe

RECALL_QUESTIONS = {
    "statement": probes.RECALL_QUESTIONS,
    "question": ("What did I ask you earlier?", "Do you remember what I asked you?"),
    "assistant": ("What did you tell me earlier?", "Can you repeat what you said before?"),
}
"""Generic questions whose answer is the restated sentence, by who said it and how."""
SPAN_WORDS = 4
"""Most words of a span found without a name or number: the words after the sentence's last copula or preposition
("The password is bluebell." → "bluebell"; "I left my horse at the old mill." → "the old mill")."""
_BEFORE_VALUE = {
    "is", "are", "was", "were", "am", "be", "at", "in", "on", "to", "as", "called", "named", "say", "says", "for",
    "of", "from", "with", "under", "into", "near", "by", "about", "like", "drink", "drinks", "eat", "eats",
}  # fmt: skip
SPANS_PER_SENTENCE = 2
"""Most cloze probes one sentence gets (one per salient span, the last ones first)."""
_SWAPS = {
    "i": "you", "me": "you", "my": "your", "mine": "yours", "myself": "yourself", "i'm": "you're",
    "i've": "you've", "i'll": "you'll", "i'd": "you'd", "we": "you", "us": "you", "our": "your",
    "ours": "yours", "we're": "you're", "we've": "you've", "ourselves": "yourselves",
    "your": "my", "yours": "mine", "yourself": "myself", "you're": "I'm", "you've": "I've", "you'll": "I'll",
    "you'd": "I'd",
}  # fmt: skip
_SUBJECT_BEFORE = {
    "can", "could", "would", "will", "do", "did", "have", "had", "are", "were", "should", "shall", "may", "might",
    "must", "if", "when", "and", "but", "that", "so", "because", "while", "as", "or", "where", "what", "how", "why",
}  # fmt: skip
"""Words after which "you" is a subject ("could you" → "could I"); elsewhere mid-sentence it is an object ("me")."""
_AGREEMENT = (
    (re.compile(r"\b(you) (am|was)\b", re.I), {"am": "are", "was": "were"}),
    (re.compile(r"\b(I) (are|were)\b"), {"are": "am", "were": "was"}),
    (re.compile(r"\b(are|were) (I)\b", re.I), {"are": "am", "were": "was"}),
)
"""The verb "to be" agreeing with its swapped subject ("you was" → "you were", "I are" → "I am")."""
_WORD = re.compile(r"[A-Za-z']+")
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")
_NUMBER_WORDS = (
    r"(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen"
    r"|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred)(?:-[a-z]+)?"
)
_SALIENT = re.compile(rf"\b(?:(?!I\b)[A-Z][a-z]+(?: [A-Z][a-z]+)*|\d[\d:/.,-]*\d|\d|{_NUMBER_WORDS})\b")
_REQUEST = re.compile(r"^(?:please|could you|can you|would you|will you|tell|let|remember)\b", re.I)
_LEANS_BACK = re.compile(r"\b(?:it|he|she|they|him|them|his|her|their|its)\b", re.I)
"""A sentence naming someone or something only by a pronoun leans on the sentence before it ("I owe him ...")."""
_LOWER_STARTS = {
    "the", "a", "an", "my", "your", "our", "his", "her", "their", "it", "this", "that", "these", "those", "there",
    "then", "next", "between", "please", "could", "can", "would", "will", "do", "did", "have", "has", "is", "are",
    "was", "were", "what", "where", "when", "who", "how", "why", "before", "after", "if", "tell", "let", "remember",
    "for", "to", "in", "on", "at", "yes", "no", "we", "you", "they", "he", "she", "keep", "by", "according", "since",
}  # fmt: skip
"""Sentence openings that are ordinary words, lower-cased when the sentence is quoted after "I told you: "."""


@dataclass(frozen=True)
class Said:
    """One sentence of a turn: its text, who said it, and the sentence before it in the same turn."""

    text: str
    role: str
    previous: str | None = None

    @property
    def shape(self) -> str:
        """ "assistant" for the assistant's words; else "question" (questions, requests) or "statement"."""
        if self.role == "assistant":
            return "assistant"
        return "question" if self.text.endswith("?") or _REQUEST.match(self.text) else "statement"


def swap_person(text: str) -> str:
    """The speaker and the listener swap both ways ("my" → "your", "could you" → "could I", "for you" → "for me"),
    with the verb "to be" agreeing ("I was" → "you were"), keeping capitals."""

    def swap(match: re.Match) -> str:
        word, lower = match.group(0), match.group(0).lower()
        if lower == "you":
            before = text[: match.start()].split()
            clause_start = not before or before[-1].endswith((",", ";", ":")) or before[-1].lower() in _SUBJECT_BEFORE
            swapped = "I" if clause_start else "me"
        else:
            swapped = _SWAPS.get(lower)
        if swapped is None:
            return word
        opens = match.start() == 0 or text[: match.start()].rstrip().endswith((".", "!", "?"))
        return swapped[0].upper() + swapped[1:] if opens or swapped.startswith("I") else swapped

    swapped = _WORD.sub(swap, text.strip())
    for pattern, verbs in _AGREEMENT:
        swapped = pattern.sub(lambda m, v=verbs: " ".join(v.get(w.lower(), w) for w in m.groups()), swapped)
    return swapped


def restate(sentence: str) -> str:
    """A sentence in the other speaker's voice, starting with a capital."""
    text = swap_person(sentence)
    return text[:1].upper() + text[1:]


def sentences(message: Message) -> list[Said]:
    """The sentences of a user or assistant turn (questions too), at least three words each."""
    role = message.get("role")
    if role not in ("user", "assistant"):
        return []
    found = [s.strip() for s in _SENTENCE.findall(str(message.get("content") or ""))]
    said, previous = [], None
    for text in found:
        if len(text.split()) >= 3:
            said.append(Said(text, role, previous))
            previous = text
    return said


def salient_spans(sentence: str) -> list[str]:
    """The spans a question about the sentence would ask for: its names and numbers, last first (not its first
    word); a statement without any falls back on its last words after a copula or preposition."""
    found = [m.group(0) for m in _SALIENT.finditer(sentence) if m.start() > 0]
    if found:
        return list(dict.fromkeys(reversed(found)))[:SPANS_PER_SENTENCE]
    if sentence.endswith("?") or len(sentence.split()) < 4:
        return []
    words = sentence.rstrip(".!").split()
    after = [i for i, word in enumerate(words[:-1]) if word.lower() in _BEFORE_VALUE]
    start = after[-1] + 1 if after else len(words) - 2
    return [" ".join(words[max(start, len(words) - SPAN_WORDS) :])]


def answer_for(said: Said) -> str:
    """What the assistant answers when asked about the sentence: restated, reported, or recalled as said."""
    leans = said.previous and _LEANS_BACK.search(said.text) and Said(said.previous, said.role).shape == said.shape
    text = f"{said.previous} {said.text}" if leans else said.text
    if said.shape == "assistant":
        return f"I told you: {_lower_first(text)}"
    if said.shape == "question":
        return f"You asked me: {_lower_first(swap_person(text))}"
    return restate(text)


def cloze(restated: str, span: str) -> str | None:
    """ "Remind me: your daughter is called what?" — the restated sentence with its span asked for."""
    head, found, tail = restated.rstrip(".!?").rpartition(span)
    if not found:
        return None
    return f"Remind me: {_lower_first(f'{head}what{tail}'.strip())}?"


def probes_for(messages: Sequence[Message], count: int, seed: int) -> list[Probe]:
    """Up to `count` probes about what `messages` say, reproducible from `seed`.

    Every sentence that names something gets a cloze per salient span before any sentence gets a second probe, so a
    chunk's facts all get asked; generic recall questions follow.
    """
    if count <= 0:
        return []
    rng = random.Random(seed)
    said = [s for message in messages for s in sentences(message)]
    named = [s for s in said if _SALIENT.search(s.text[1:])] + [s for s in said if not _SALIENT.search(s.text[1:])]
    first, then = [], []
    for sentence in named:
        clozes, recall = _sentence_probes(sentence, rng)
        first += clozes[:1] or recall
        then += clozes[1:] + (recall if clozes else [])
    return (first + then)[:count]


def _sentence_probes(said: Said, rng: random.Random) -> tuple[list[Probe], list[Probe]]:
    """A sentence's cloze probes (statements only: one per span) and its generic recall probe."""
    answer = answer_for(said)
    spans = salient_spans(said.text)
    clozes = []
    if said.shape == "statement":
        for span in spans:
            asked = cloze(answer, swap_person(span))
            if asked:
                clozes.append(Probe(asked, answer, swap_person(span), said.text))
    question = rng.choice(RECALL_QUESTIONS[said.shape])
    recall = [Probe(question, _recalled(answer, said), swap_person(spans[0]) if spans else None, said.text)]
    return clozes, recall


def _recalled(answer: str, said: Said) -> str:
    """ "You told me that your daughter is called Mira." — a restated statement as a recall answer."""
    if said.shape != "statement":
        return answer
    return f"You told me that {_lower_first(answer)}"


def _lower_first(text: str) -> str:
    """The text with its first letter lower-cased where it opens with an ordinary word (not a name, not "I")."""
    first = text.split(" ", 1)[0].strip(",;:").lower()
    return text[:1].lower() + text[1:] if first in _LOWER_STARTS else text
