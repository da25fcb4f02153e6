"""Hybrid recall: turns that left the window, retrieved by BM25 against the newest user turn, back in the prompt.

The adapter carries what left the prompt in its weights; retrieval puts the best-matching old turns back as
text, in a budget of `recall_tokens` on top of the window (parametric + retrieval beat either alone in the
studies summarised in README, "Memory that answers"). The index grows with the archive, one turn at a time, and
is rebuilt only when the bounded archive cuts its oldest turns (once per batch: `conversation.ARCHIVE_KEPT`): BM25
as Lucene scores it (k1 1.5, b 0.75), bm25s's tokens and English stopwords.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from templora_memory.conversation import Conversation
from templora_memory.message import Message, Turn
from templora_memory.rendering import ChatRenderer

TOP_K = 8
"""Most turns retrieved per reply (fewer when the budget is spent first)."""
K1, B = 1.5, 0.75
STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
    "this to was will with".split()
)
"""English stopwords of bm25s (and Lucene), so scores match the benchmarks' earlier bm25s runs."""
_TOKEN = re.compile(r"(?u)\b\w\w+\b")


def terms(text: str) -> list[str]:
    """A text's indexed words: lower case, two characters or more, no stopwords."""
    return [word for word in _TOKEN.findall(text.lower()) if word not in STOPWORDS]


class BM25Index:
    """An append-only BM25 index over texts (in order): adding a text costs its own words, a search its query's."""

    def __init__(self, texts: Sequence[str] = (), cut: int = 0) -> None:
        self.cut = cut  # turns cut from the archive's front when it was indexed (see `synced`)
        self.postings: dict[str, list[tuple[int, int]]] = {}  # word -> (document, count), in document order
        self.lengths: list[int] = []
        self.total = 0  # words over all documents, kept so a search does not sum the lengths again
        self.first = ""  # the first text, to notice an archive cut from the front
        self.extend(texts)

    def __len__(self) -> int:
        return len(self.lengths)

    def extend(self, texts: Sequence[str]) -> None:
        """Index `texts` as the next documents."""
        for text in texts:
            if not self.lengths:
                self.first = text
            words = terms(text)
            for word, count in Counter(words).items():
                self.postings.setdefault(word, []).append((len(self.lengths), count))
            self.lengths.append(len(words))
            self.total += len(words)

    def top(self, query: str, k: int) -> list[int]:
        """The documents that best match `query` (at most `k`, none scoring 0), best first, earliest first on ties."""
        if not self.lengths or k <= 0:
            return []
        average = max(self.total / len(self.lengths), 1e-9)
        scores: Counter[int] = Counter()
        for word in set(terms(query)):
            found = self.postings.get(word, [])
            idf = math.log(1 + (len(self.lengths) - len(found) + 0.5) / (len(found) + 0.5))
            for doc, count in found:
                norm = count + K1 * (1 - B + B * self.lengths[doc] / average)
                scores[doc] += idf * count * (K1 + 1) / norm
        ranked = sorted((doc for doc, score in scores.items() if score > 0), key=lambda d: (-scores[d], d))
        return ranked[:k]


def bm25_top(corpus: Sequence[str], query: str, top_k: int) -> list[int]:
    """Indices of the `top_k` texts that best match `query`, best first; none that score 0."""
    return BM25Index(corpus).top(query, top_k)


class HybridRecall:
    """Picks archived turns for a prompt: BM25 against the newest user turn, in `budget` tokens, in their order."""

    def __init__(self, renderer: ChatRenderer, budget: int) -> None:
        self.renderer = renderer
        self.budget = budget

    def turns(self, talk: Conversation, window: Sequence[Turn], keeper: Any) -> list[Turn]:
        """Turns of `talk`'s archive matching the window's newest user turn, oldest first, rendered, in the budget.

        `keeper.archive_index` (an agent's state) holds the archive's index between replies, brought up to date
        here."""
        archive = talk.archive
        keeper.archive_index = index = synced(keeper.archive_index, archive, talk.archive_cut)
        query = next((t.message for t in reversed(window) if t.message["role"] == "user"), None)
        if not archive or query is None:
            return []
        chosen, used = [], 0
        for position in index.top(str(query.get("content") or ""), TOP_K):
            size = len(self.renderer.turn(archive[position], None).tokens)
            if used + size <= self.budget:
                chosen.append(position)
                used += size
        return self.renderer.turns([archive[i] for i in sorted(chosen)])


def synced(index: BM25Index | None, archive: Sequence[Message], cut: int = 0) -> BM25Index:
    """`index` with the archive's new turns added; a new index when there is none or the archive lost its start:
    `cut` (turns cut from its front so far) moved, which a bounded archive does once per batch it cuts."""
    if index is None or index.cut != cut or _lost_start(index, archive):
        return BM25Index([_text(m) for m in archive], cut)
    index.extend([_text(m) for m in archive[len(index) :]])
    return index


def _lost_start(index: BM25Index, archive: Sequence[Message]) -> bool:
    """The archive no longer starts with the index's first turn (an archive cut with no count given)."""
    return len(index) > len(archive) or bool(len(index) and index.first != _text(archive[0]))


def _text(message: Message) -> str:
    return str(message.get("content") or "")
