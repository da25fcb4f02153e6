"""Hybrid recall: turns that left the window, retrieved by BM25 against the newest user turn, back in the prompt.

The adapter carries what left the prompt in its weights; retrieval puts the best-matching old turns back as
text, in a budget of `recall_tokens` on top of the window (parametric + retrieval beat either alone in the
studies summarised in README, "Memory that answers"). Needs the `retrieval` extra (bm25s).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from templora_memory.conversation import ChatRenderer
from templora_memory.errors import ConfigError
from templora_memory.message import Message, Turn

TOP_K = 8
"""Most turns retrieved per reply (fewer when the budget is spent first)."""


class HybridRecall:
    """Picks archived turns for a prompt: BM25 against the newest user turn, in `budget` tokens, in their order."""

    def __init__(self, renderer: ChatRenderer, budget: int) -> None:
        if importlib.util.find_spec("bm25s") is None:
            raise ConfigError(
                'recall_tokens needs the retrieval extra: pip install "templora-memory[retrieval]" (or recall_tokens=0)'
            )
        self.renderer = renderer
        self.budget = budget

    def turns(self, archive: Sequence[Message], window: Sequence[Turn]) -> list[Turn]:
        """Archived turns matching the window's newest user turn, oldest first, rendered, within the budget."""
        query = next((t.message for t in reversed(window) if t.message["role"] == "user"), None)
        if not archive or query is None:
            return []
        chosen, used = [], 0
        for index in _bm25([str(m.get("content") or "") for m in archive], str(query.get("content") or "")):
            size = len(self.renderer.turn(archive[index], None).tokens)
            if used + size <= self.budget:
                chosen.append(index)
                used += size
        return self.renderer.turns([archive[i] for i in sorted(chosen)])


def _bm25(corpus: list[str], query: str) -> list[int]:
    """Indices of the best-matching texts (at most `TOP_K`, none scoring 0), best first."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
    found, scores = retriever.retrieve(
        bm25s.tokenize([query], stopwords="en", show_progress=False), k=min(TOP_K, len(corpus)), show_progress=False
    )
    return [int(i) for i, s in zip(found[0], scores[0], strict=True) if s > 0]
