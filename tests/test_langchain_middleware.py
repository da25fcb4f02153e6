"""`ParametricMemoryMiddleware` in `create_agent` loops on the tiny model: old turns leave the state for the adapter."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain.agents")

from langchain.agents import create_agent  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402

from templora_memory import InvalidInputError, ParametricMemory  # noqa: E402
from templora_memory.integrations.langchain_middleware import ParametricMemoryMiddleware, safe_cutoff  # noqa: E402
from templora_memory.message import fingerprint  # noqa: E402
from tests.schemas import ADD_CALL, add  # noqa: E402


def _chat(agent, thread: str, lines: list[str]) -> list:
    config = {"configurable": {"thread_id": thread}}
    for line in lines:
        state = agent.invoke({"messages": [HumanMessage(line)]}, config)
    return state["messages"]


LINES = [f"Note {i}: the {word} is behind the old mill." for i, word in enumerate(["key", "map", "coin", "ring"] * 2)]


def test_safe_cutoff_never_splits_a_tool_call_from_its_results():
    call = AIMessage("", tool_calls=[{"name": "add", "args": {}, "id": "c1"}])
    results = [ToolMessage("1", tool_call_id="c1"), ToolMessage("2", tool_call_id="c1")]
    messages = [HumanMessage("a"), call, *results, HumanMessage("b"), AIMessage("c")]
    # a cut that would land on the tool results moves past them: the call and its results leave together
    assert safe_cutoff(messages, [10] * 6, keep_tokens=35) == 4
    # when moving past them would leave nothing, the cut moves back before the call instead
    assert safe_cutoff(messages[:4], [10] * 4, keep_tokens=15) == 1
    assert safe_cutoff(messages, [10] * 6, keep_tokens=0) == 5  # the newest message always stays


def test_agent_loop_moves_old_turns_into_the_agents_own_adapter(make_engine):
    memory = ParametricMemory(engine=make_engine(), agent_id="innkeeper")
    middleware = ParametricMemoryMiddleware(memory, "innkeeper")
    agent = create_agent(memory, middleware=[middleware], checkpointer=InMemorySaver())
    state = _chat(agent, "t1", LINES)
    stats = memory.stats("innkeeper")
    assert len(state) < 2 * len(LINES)  # old turns left the agent's state...
    assert stats.chunks_trained >= 2 and stats.tokens_written >= 64  # ...and live in the adapter
    assert stats.turns_seen == 2 * len(LINES)  # every turn written once: evicted turns were already seen
    assert state[-2].content == LINES[-1] and isinstance(state[-1], AIMessage)


def test_evicted_turns_are_written_into_another_agents_memory(make_engine):
    memory = ParametricMemory(engine=make_engine(), agent_id="talker")
    middleware = ParametricMemoryMiddleware(memory, "archive", trigger_tokens=80, keep_tokens=30)
    agent = create_agent(memory, middleware=[middleware], checkpointer=InMemorySaver())
    state = _chat(agent, "t2", LINES)
    archived = set(memory.engine.agent("archive").fingerprints)
    kept = {m.content for m in state}
    # each note is either still in the state or archived (replies are not counted: the tiny model may repeat one)
    assert all(line in kept or fingerprint({"role": "user", "content": line}) in archived for line in LINES)
    assert not any(line in kept and fingerprint({"role": "user", "content": line}) in archived for line in LINES)
    assert memory.stats("archive").chunks_trained >= 1
    assert all(m.content != HumanMessage(LINES[0]).content for m in state)


def test_tool_loop_keeps_calls_with_their_results(tool_memory, scripted_model):
    # the model calls the tool, then answers, each turn
    scripted_model.play(tool_memory.engine.tokenizer, ADD_CALL, "It is 5.")
    memory = ParametricMemory(engine=tool_memory.engine, agent_id="clerk")
    middleware = ParametricMemoryMiddleware(memory, "clerk", trigger_tokens=400, keep_tokens=200)
    agent = create_agent(memory, [add], system_prompt="You add.", middleware=[middleware], checkpointer=InMemorySaver())
    state = _chat(agent, "t3", [f"What is 2 + 3? ({i})" for i in range(6)])
    assert len(state) < 4 * 6  # human, tool call, tool result, answer per turn: old ones left the state
    assert not isinstance(state[0], ToolMessage)
    calls = {c["id"] for m in state if isinstance(m, AIMessage) for c in m.tool_calls}
    assert all(m.tool_call_id in calls for m in state if isinstance(m, ToolMessage))  # no orphaned result
    stats = memory.stats("clerk")
    assert stats.tokens_written > 0 and stats.turns_seen == 4 * 6  # tool turns written, none twice


def test_keep_must_not_exceed_trigger(tiny_memory):
    with pytest.raises(InvalidInputError, match="keep_tokens"):
        ParametricMemoryMiddleware(tiny_memory, "a", trigger_tokens=10, keep_tokens=20)
