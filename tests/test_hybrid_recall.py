"""Hybrid recall on the tiny model: turns that left the window come back into the prompt when they match."""

from __future__ import annotations

from templora_memory.generation import Sampling
from templora_memory.recall import BM25Index, synced

OLD = {"role": "user", "content": "The lighthouse keeper hides the golden key under the blue stone."}


def _small_talk(n: int) -> list[dict]:
    return [
        {"role": ("user", "assistant")[i % 2], "content": f"turn {i} about the weather and the market"}
        for i in range(n)
    ]


def _ask(engine, agent: str, text: str) -> str:
    stream = engine.respond(agent, [{"role": "user", "content": text}], Sampling(max_new_tokens=2))
    stream.result()
    return engine.tokenizer.decode(engine.prompt_ids(agent))


def test_a_matching_turn_that_left_the_window_comes_back_within_the_budget(make_engine):
    engine = make_engine(recall_tokens=48)
    engine.add_turns("a", [OLD, *_small_talk(16)])
    engine.wait("a")
    assert OLD not in engine.window("a")  # it left the window...
    prompt = _ask(engine, "a", "Where is the golden key hidden?")
    assert "golden key under the blue stone" in prompt  # ...and the question brings it back
    assert engine.stats("a").prompt_tokens <= engine.config.window_tokens + engine.config.recall_tokens
    assert "golden key under the blue stone" not in _ask(engine, "a", "How is the weather today?")  # no match


def test_without_recall_no_old_turn_is_kept_or_shown(make_engine):
    engine = make_engine()
    engine.add_turns("a", [OLD, *_small_talk(16)])
    assert "golden key under" not in _ask(engine, "a", "Where is the golden key hidden?")
    assert engine.agent("a").stats.turns_seen == 19


def test_the_archive_survives_a_restart(make_engine, tmp_path):
    first = make_engine(store=tmp_path, recall_tokens=48)
    first.add_turns("a", [OLD, *_small_talk(16)])
    first.wait("a")
    first.close()  # as at a process's exit: committed, its lease given back
    second = make_engine(store=tmp_path, recall_tokens=48)
    assert "golden key under the blue stone" in _ask(second, "a", "Where is the golden key hidden?")


def test_the_index_ranks_as_bm25s_does():
    import bm25s

    corpus = [OLD["content"], "the key and the stone", "blue blue sky", "a market stall sells keys", "rain again"]
    for query in ("Where is the golden key hidden?", "blue stone key", "market keys in the rain", "nothing here"):
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
        found, scores = retriever.retrieve(bm25s.tokenize([query], stopwords="en", show_progress=False), k=4)
        theirs = [int(i) for i, s in zip(found[0], scores[0], strict=True) if s > 0]
        ours = BM25Index(corpus).top(query, 4)
        assert ours == theirs


def test_the_index_grows_with_the_archive_and_is_never_rebuilt_for_a_reply(make_engine, monkeypatch):
    built = []
    monkeypatch.setattr(
        BM25Index, "__init__", lambda self, texts=(), cut=0: built.append(len(texts)) or init(self, texts, cut)
    )
    engine = make_engine(recall_tokens=48)
    engine.add_turns("a", [OLD, *_small_talk(16)])
    for turn in range(4):
        _ask(engine, "a", f"Where is the golden key hidden? ({turn})")
    assert len(built) == 1  # built once, then only extended as turns left the window
    archive = [OLD, *_small_talk(6)]
    index = synced(None, archive[:3])
    assert synced(index, archive) is index and len(index) == len(archive)  # new turns are added in place
    assert synced(index, archive[2:]) is not index  # an archive cut from the front is indexed anew


init = BM25Index.__init__
