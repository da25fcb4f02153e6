"""The LangChain surface on the tiny model: agents by binding, history, stop strings, batch and async."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from templora_memory import ModelNotFoundError, UnknownAgentError
from templora_memory.generation import StopDecoder
from templora_memory.loading import load_model


def test_bound_agents_get_their_own_memory(tiny_memory):
    tiny_memory.bind(agent_id="npc-1").invoke("hello there")
    tiny_memory.invoke("a different conversation", agent_id="npc-2")
    assert tiny_memory.stats("npc-1").turns_seen == 2 and tiny_memory.stats("npc-2").turns_seen == 2
    assert tiny_memory.history("npc-1").messages[0].content == "hello there"
    assert tiny_memory.history("npc-2").messages[0].content == "a different conversation"


def test_history_writes_turns_reads_the_window_and_clear_forgets(tiny_memory):
    history = tiny_memory.history("npc")
    turns = [
        HumanMessage(f"fact number {i} about the castle") if i % 2 == 0 else AIMessage(f"noted {i}") for i in range(16)
    ]
    history.add_messages(turns)
    stats = tiny_memory.stats("npc")
    assert stats.turns_seen == 16 and stats.chunks_trained >= 1
    window = history.messages
    assert 0 < len(window) < 16 and [m.content for m in window] == [m.content for m in turns[-len(window) :]]
    history.clear()
    assert not tiny_memory.exists("npc") and history.messages == []


def test_stop_decoder_cuts_at_the_stop_string_and_holds_back_partial_matches(tokenizer):
    decoder = StopDecoder(tokenizer, stop=["END"])
    pieces = [decoder.push(t) for t in tokenizer("Hello there END more text", add_special_tokens=False)["input_ids"]]
    assert "".join(pieces) + decoder.flush() == "Hello there "
    assert decoder.finished


def test_batch_and_async_calls_reply_with_usage(tiny_memory):
    replies = tiny_memory.batch(["one", "two"], config={"max_concurrency": 1})
    assert len(replies) == 2 and all(r.usage_metadata["input_tokens"] > 0 for r in replies)
    reply = asyncio.run(tiny_memory.ainvoke("hi", agent_id="async-agent"))
    assert reply.response_metadata["model_name"] == "tiny-llama"
    assert reply.usage_metadata["output_tokens"] <= tiny_memory.config.max_new_tokens


def test_missing_model_says_how_to_fix_it(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such directory.*pass a local directory"):
        load_model(str(tmp_path / "no-such-model"))
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        load_model(str(tmp_path / "missing.gguf"))


def test_a_call_without_an_agent_id_uses_the_default_agent(tiny_memory):
    assert not tiny_memory.exists() and tiny_memory.agent_id == "default"
    with pytest.raises(UnknownAgentError, match="'default' has no memory"):
        tiny_memory.stats()
    tiny_memory.invoke("Hello there!")
    assert tiny_memory.exists("default") and tiny_memory.stats().turns_seen == 2
