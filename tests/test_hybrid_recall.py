"""Hybrid recall on the tiny model: turns that left the window come back into the prompt when they match."""

from __future__ import annotations

import importlib.util

import pytest

from templora_memory import ConfigError
from templora_memory.generation import Sampling

pytest.importorskip("bm25s")

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


def test_recall_without_the_retrieval_extra_says_how_to_install_it(make_engine, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bm25s" else real(name, *a))
    with pytest.raises(ConfigError, match=r"templora-memory\[retrieval\]"):
        make_engine(recall_tokens=48)
