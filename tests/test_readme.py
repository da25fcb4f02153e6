"""The README's "Use with LangChain" and "Use with LlamaIndex" snippets run as written, on the real default model.

Each ```python block under those headings is executed with `exec`. Constructing a `ParametricMemory` or
`TemploraLLM` without an engine would load the default model a second time, so here it shares the
session's `real_engine` instead (the snippets must use the embedded default model for that to hold).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

import templora_memory.chat_model as chat_model_module
from templora_memory import MemoryEngine

pytestmark = pytest.mark.real_model
README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme_snippets(heading: str) -> list[str]:
    """The ```python blocks of the README section titled `heading` (up to the next heading of its level or above)."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^(#+) {re.escape(heading)}\n", text, re.MULTILINE)
    assert match, f"README.md has no section {heading!r}"
    level = len(match.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.MULTILINE).search(text, match.end())
    return FENCE.findall(text[match.end() : end.start() if end else len(text)])


def _last_printed(out: str) -> str:
    return out.strip().splitlines()[-1]


def check_chain(ns: dict, engine: MemoryEngine, out: str) -> None:
    stats = engine.stats("cook")
    assert stats.turns_seen == 4  # two human turns and two replies, each written once
    assert f"turns_seen={stats.turns_seen}" in _last_printed(out)
    reply = engine.window("cook")[-1]
    assert reply["role"] == "assistant" and reply["content"].strip() and reply["content"].strip() in out


def check_agent(ns: dict, engine: MemoryEngine, out: str) -> None:
    messages = ns["state"]["messages"]
    assert [m.type for m in messages] == ["human", "ai"] and messages[-1].content.strip()
    assert messages[-1].content.strip() in out
    assert engine.stats("baker").turns_seen == 2  # the agent's model is the memory: the exchange was written


def check_chat_engine(ns: dict, engine: MemoryEngine, out: str) -> None:
    stats = engine.stats("bard")
    assert stats.turns_seen == 4  # the LLM and the memory both saw each turn; it was written once
    assert ns["memory"].get()[-2].content == "Sing a line about my horse."
    assert ns["memory"].get()[-1].content.strip()  # the streamed reply was remembered
    assert f"turns_seen={stats.turns_seen}" in _last_printed(out)


def check_memory_block(ns: dict, engine: MemoryEngine, out: str) -> None:
    stats = engine.stats("scribe")
    assert stats.turns_seen == 6  # three exchanges, each turn written once though the block saw flushed ones too
    short_term = ns["memory"].get()  # what LlamaIndex's memory still puts in the prompt
    assert 0 < len(short_term) < 6  # older turns were flushed out of it (into the block)
    assert short_term[-1].content.strip() and short_term[-1].content.strip() in out


SNIPPETS: dict[str, list[Callable[[dict, MemoryEngine, str], None]]] = {
    "Use with LangChain": [check_chain, check_agent],
    "Use with LlamaIndex": [check_chat_engine, check_memory_block],
}
CASES = [(heading, i) for heading, checks in SNIPPETS.items() for i in range(len(checks))]


@pytest.mark.parametrize("heading", list(SNIPPETS))
def test_every_snippet_has_a_check(heading):
    assert len(readme_snippets(heading)) == len(SNIPPETS[heading])


@pytest.fixture
def shared_engine(real_engine, monkeypatch):
    """Models the snippets construct share the session's engine; agents they create are forgotten afterwards."""
    pytest.importorskip("langchain.agents")
    llms = pytest.importorskip("templora_memory.integrations.llamaindex.llms")
    built = []

    def engine_factory(model=None, config=None, **options):
        assert model is None, "README snippets must use the embedded default model"
        built.append(model)
        return real_engine

    monkeypatch.setattr(chat_model_module, "MemoryEngine", engine_factory)
    monkeypatch.setattr(llms, "MemoryEngine", engine_factory)
    before = set(real_engine.agent_ids())
    yield real_engine, built
    for agent_id in set(real_engine.agent_ids()) - before:
        real_engine.forget(agent_id)


@pytest.mark.parametrize(("heading", "index"), CASES, ids=[f"{h.split()[-1]}-{i}" for h, i in CASES])
def test_readme_snippet_runs(heading, index, shared_engine, capsys):
    engine, built = shared_engine
    snippets = readme_snippets(heading)
    assert index < len(snippets), f"README section {heading!r} lost snippet {index}"
    before = set(engine.agent_ids())
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(snippets[index], f"README.md[{heading} #{index}]", "exec"), namespace)
    out = capsys.readouterr().out
    assert built, "the snippet built no model"
    new_agents = set(engine.agent_ids()) - before
    assert new_agents, "the snippet wrote into no agent's memory"
    assert out.strip(), "the snippet printed nothing"
    SNIPPETS[heading][index](namespace, engine, out)
