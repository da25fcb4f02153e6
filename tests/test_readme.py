"""Every ```python block of the README runs as written, on the real default model (the store's, on the tiny one).

Each block is executed with `exec` and checked. Constructing a `ParametricMemory` or `TemploraLLM` without an
engine would load the default model again, so here it shares the session's `real_engine` (or `real_tool_engine`
for a window wide enough for tool schemas); a block that opens a store gets a tiny engine over that store, in
a temporary folder: it shows persistence mechanics. The "Serve over HTTP" blocks run against a live server in
tests/test_server.py.
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


def headings() -> list[tuple[int, str, int]]:
    """The README's headings as (level, title, line number), skipping `#` lines inside code blocks."""
    found, fenced = [], False
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines()):
        fenced ^= line.startswith("```")
        if not fenced and (match := re.match(r"^(#+) (.+)$", line)):
            found.append((len(match.group(1)), match.group(2), number))
    return found


def readme_snippets(heading: str, nested: bool = True) -> list[str]:
    """The ```python blocks of the README section titled `heading` (up to the next heading of its level or above;
    with `nested=False`, up to the next heading of any level)."""
    lines, found = README.read_text(encoding="utf-8").splitlines(keepends=True), headings()
    index = next((i for i, (_, title, _) in enumerate(found) if title == heading), None)
    assert index is not None, f"README.md has no section {heading!r}"
    level, _, start = found[index]
    end = next((line for lv, _, line in found[index + 1 :] if not nested or lv <= level), len(lines))
    return FENCE.findall("".join(lines[start + 1 : end]))


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


def check_use(ns: dict, engine: MemoryEngine, out: str) -> None:
    assert out.strip().splitlines()[-2:] == ["A fine name for a horse.", "False"]
    assert "tokens_written=" in out and not engine.exists("npc-7")


def check_store(ns: dict, engine: MemoryEngine, out: str) -> None:
    store = ns["memory"].engine
    assert store.exists("npc-7") and store.exists("npc-7-copy")
    assert store.stats("npc-7-copy").turns_seen == store.stats("npc-7").turns_seen == 2
    assert "turns_seen=2" in _last_printed(out)


def check_tools(ns: dict, engine: MemoryEngine, out: str) -> None:
    assert ns["call"].tool_calls[0]["name"] == "market_price" and ns["call"].tool_calls[0]["args"]["item"] in (
        "bread",
        "milk",
        "eggs",
    )
    assert "name=" in _last_printed(out) and "age=" in _last_printed(out)  # a Person, parsed


def check_recipe(ns: dict, engine: MemoryEngine, out: str) -> None:
    assert ns["plain"].probe_questions == 0 and ns["memory"].config.probe_questions == 8


SNIPPETS: dict[str, list[Callable[[dict, MemoryEngine, str], None]]] = {
    "Use": [check_use],
    "Many agents: persistence, RAM limits, background training": [check_store],
    "Use with LangChain": [check_chain, check_agent],
    "Tools and structured output (constrained decoding)": [check_tools],
    "Use with LlamaIndex": [check_chat_engine, check_memory_block],
    "Memory that answers: context distillation onto probes": [check_recipe],
}
RUN_ELSEWHERE = {"Serve over HTTP (OpenAI-compatible)": "tests/test_server.py, against a live server"}
QUIET = {"Memory that answers: context distillation onto probes"}
"""Blocks that only build a config: they print nothing and write into no agent."""
CASES = [(heading, i) for heading, checks in SNIPPETS.items() for i in range(len(checks))]


@pytest.mark.parametrize("heading", list(SNIPPETS))
def test_every_snippet_has_a_check(heading):
    assert len(readme_snippets(heading)) == len(SNIPPETS[heading])


def test_every_python_block_of_the_readme_is_run_by_a_test():
    with_code = {title for _, title, _ in headings() if readme_snippets(title, nested=False)}
    assert with_code <= set(SNIPPETS) | set(RUN_ELSEWHERE), with_code - set(SNIPPETS) - set(RUN_ELSEWHERE)


@pytest.fixture
def shared_engine(real_engine, monkeypatch, request, make_engine, tmp_path):
    """Models the snippets construct share the session's engine; agents they create are forgotten afterwards."""
    pytest.importorskip("langchain.agents")
    llms = pytest.importorskip("templora_memory.integrations.llamaindex.llms")
    monkeypatch.chdir(tmp_path)  # where a snippet's store folder lands
    built, borrowed = [], []

    def engine_factory(model=None, config=None, **options):
        assert model is None, "README snippets must use the embedded default model"
        built.append(model)
        if options.get("store") is not None:
            return make_engine(store=options["store"], max_resident=options.get("max_resident"))
        if config is not None and config.window_tokens >= 640:  # tool schemas in the prompt
            tools = request.getfixturevalue("real_tool_engine")
            borrowed.append((tools, set(tools.agent_ids())))
            return tools
        return real_engine

    monkeypatch.setattr(chat_model_module, "MemoryEngine", engine_factory)
    monkeypatch.setattr(llms, "MemoryEngine", engine_factory)
    before = set(real_engine.agent_ids())
    yield real_engine, built, borrowed
    for engine, known in [(real_engine, before), *borrowed]:
        for agent_id in set(engine.agent_ids()) - known:
            engine.forget(agent_id)


@pytest.mark.parametrize(("heading", "index"), CASES, ids=[f"{h.split()[-1]}-{i}" for h, i in CASES])
def test_readme_snippet_runs(heading, index, shared_engine, capsys):
    engine, built, borrowed = shared_engine
    snippets = readme_snippets(heading)
    assert index < len(snippets), f"README section {heading!r} lost snippet {index}"
    before = set(engine.agent_ids())
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(snippets[index], f"README.md[{heading} #{index}]", "exec"), namespace)
    out = capsys.readouterr().out
    assert built, "the snippet built no model"
    memory = namespace.get("llm") or namespace.get("memory")
    used = getattr(memory, "engine", engine)  # the wide-window engine for a default window (see shared_engine)
    before = next((known for other, known in borrowed if other is used), before)  # its agents before the snippet
    if heading not in QUIET:
        touched = set(used.agent_ids()) - before if memory is not None else set()
        assert touched or heading == "Use", "the snippet wrote into no agent's memory"  # "Use" forgets its agent
        assert out.strip(), "the snippet printed nothing"
    SNIPPETS[heading][index](namespace, used, out)
