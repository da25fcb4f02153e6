"""LoCoMo data (Maharana et al., ACL 2024): conversations as chat messages, questions, and the token-F1 metric."""

from __future__ import annotations

import functools
import json
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import existing_data
from templora_memory.errors import InvalidInputError

SCORED_CATEGORIES = (1, 2, 4)  # multi-hop, temporal, single-hop
ADVERSARIAL = 5
CATEGORY_NAMES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
NOT_MENTIONED = "Not mentioned in the conversation"


@dataclass(frozen=True)
class Line:
    """One conversation turn: its LoCoMo id, the chat message it becomes, and its session's date."""

    dia_id: str
    message: dict[str, str]
    date: str = ""


@dataclass(frozen=True)
class Question:
    """One LoCoMo question with the answer scored against it."""

    question: str
    answer: str
    category: int
    evidence: tuple[str, ...]


def load(path: str | Path) -> list[dict[str, Any]]:
    """The list of LoCoMo items (each with `conversation`, `qa` and `sample_id`) in a JSON file."""
    path = existing_data(path, "a LoCoMo JSON file (e.g. locomo10.json)")
    if not path.is_file():
        raise InvalidInputError(f"--data {path} is a folder; pass --data PATH to a LoCoMo JSON file")
    items = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(items, list) or not all("conversation" in item and "qa" in item for item in items):
        raise InvalidInputError(f"{path} is not LoCoMo-format: expected a list of items with 'conversation' and 'qa'")
    return items


def speakers(item: dict[str, Any]) -> tuple[str, str]:
    """(speaker_a, speaker_b): the user and the assistant of the streamed conversation."""
    return item["conversation"]["speaker_a"], item["conversation"]["speaker_b"]


def lines(item: dict[str, Any]) -> list[list[Line]]:
    """The conversation's sessions in order, each a list of turns as chat messages.

    speaker_a is the user and speaker_b the assistant; each message reads "Name: text" (plus
    "[shares …]" for an image caption), and a session's first message starts with its date.
    """
    conversation = item["conversation"]
    user, _ = speakers(item)
    numbers = sorted(int(k.split("_")[1]) for k in conversation if re.fullmatch(r"session_\d+", k))
    sessions = []
    for number in numbers:
        date = conversation.get(f"session_{number}_date_time", "")
        session = []
        for turn in conversation[f"session_{number}"]:
            text = f"{turn['speaker']}: {turn['text']}"
            if turn.get("blip_caption"):
                text += f" [shares {turn['blip_caption']}]"
            if not session and date:
                text = f"[{date}] {text}"
            role = "user" if turn["speaker"] == user else "assistant"
            session.append(Line(turn["dia_id"], {"role": role, "content": text}, date))
        sessions.append(session)
    return sessions


def questions(item: dict[str, Any], seen: set[str] | None = None) -> list[Question]:
    """Questions of categories 1, 2, 4 and 5 whose evidence lies in `seen` turns, interleaved by category."""
    by_category: dict[int, list[Question]] = {c: [] for c in (*SCORED_CATEGORIES, ADVERSARIAL)}
    for qa in item["qa"]:
        category = int(qa["category"])
        evidence = tuple(str(e) for e in qa.get("evidence", []))
        if category not in by_category or (seen is not None and not set(evidence) <= seen):
            continue
        answer = NOT_MENTIONED if category == ADVERSARIAL else str(qa["answer"])
        by_category[category].append(Question(qa["question"], answer, category, evidence))
    return _interleave(list(by_category.values()))


def _interleave(groups: list[list[Question]]) -> list[Question]:
    """Round-robin over categories, so that the first N questions cover every category."""
    out = []
    for index in range(max((len(g) for g in groups), default=0)):
        out.extend(g[index] for g in groups if index < len(g))
    return out


# ----- LoCoMo's answer metric (task_eval/evaluation.py of the LoCoMo repository) ---------------


def normalize(text: str) -> str:
    """Lower-case, drop commas, punctuation and articles (a, an, the, and), squeeze whitespace."""
    text = text.replace(",", "").lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the|and)\b", " ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    """Token F1 between normalised, Porter-stemmed prediction and gold."""
    stem = _stemmer()
    predicted = [stem(w) for w in normalize(prediction).split()]
    expected = [stem(w) for w in normalize(gold).split()]
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def multi_f1(prediction: str, gold: str) -> float:
    """Multi-hop F1: mean over comma-separated gold parts of the best F1 against any predicted part."""
    predictions = [p.strip() for p in prediction.split(",")]
    parts = [g.strip() for g in gold.split(",")]
    return sum(max(token_f1(p, g) for p in predictions) for g in parts) / len(parts)


def score(prediction: str, question: Question) -> float:
    """LoCoMo's score: multi-answer F1 (cat. 1), token F1 (2, 4), 'not mentioned' detection (5)."""
    if question.category == ADVERSARIAL:
        lowered = prediction.lower()
        return float("no information available" in lowered or "not mentioned" in lowered)
    if question.category == 1:
        return multi_f1(prediction, question.answer)
    return token_f1(prediction, question.answer)


@functools.cache
def _stemmer():
    """nltk's Porter stemmer, as LoCoMo's metric uses (from the `bench` extra)."""
    from nltk.stem import PorterStemmer

    return PorterStemmer().stem
