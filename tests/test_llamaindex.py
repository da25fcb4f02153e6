"""LlamaIndex on the tiny model: a chat engine with `TemploraLLM` and `TemploraMemory`, and a `Memory` block."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import ChatMessage  # noqa: E402
from llama_index.core.chat_engine import SimpleChatEngine  # noqa: E402
from llama_index.core.memory import Memory  # noqa: E402
from templora_memory.integrations.llamaindex import TemploraLLM, TemploraMemory, TemploraMemoryBlock  # noqa: E402

LINES = [f"Note {i}: the {w} is behind the old mill." for i, w in enumerate(["key", "map", "coin", "ring"] * 2)]


def test_chat_engine_writes_every_turn_once(make_engine):
    llm = TemploraLLM(engine=make_engine(), agent_id="bard")
    memory = TemploraMemory.from_defaults(llm, agent_id="bard")
    chat = SimpleChatEngine.from_defaults(llm=llm, memory=memory, system_prompt="You are a bard.")
    for line in LINES:
        response = chat.chat(line)
    stats = llm.engine.stats("bard")
    assert stats.turns_seen == 2 * len(LINES)  # user and reply each written once, though both llm and memory saw them
    assert stats.chunks_trained >= 2  # older turns went into the adapter
    window = memory.get()
    assert window[-1].content == response.response and window[-2].content == LINES[-1]
    assert all(m.role.value != "system" for m in window)  # the chat engine adds its system prompt itself
    assert len(window) < 2 * len(LINES) + 1  # older turns are no longer text


def test_streaming_chat_and_complete(make_engine):
    llm = TemploraLLM(engine=make_engine(), agent_id="scribe")
    streamed = SimpleChatEngine.from_defaults(llm=llm, memory=TemploraMemory.from_defaults(llm, agent_id="scribe"))
    response = streamed.stream_chat("Tell me about the castle.")
    pieces = list(response.response_gen)
    assert "".join(pieces) == response.response and llm.engine.stats("scribe").turns_seen == 2
    deltas = list(llm.stream_complete("Once upon a time"))
    assert "".join(d.delta for d in deltas) == deltas[-1].text
    assert isinstance(llm.complete("Once upon a time").text, str)
    assert llm.engine.stats("scribe").turns_seen == 6  # two completions, each a user turn and a reply
    llm.complete("<|im_start|>user\nraw<|im_end|>\n", formatted=True)
    assert llm.engine.stats("scribe").turns_seen == 6  # raw completion writes nothing
    assert llm.metadata.is_chat_model and llm.metadata.context_window == llm.engine.config.window_tokens


async def test_async_chat(make_engine):
    llm = TemploraLLM(engine=make_engine(), agent_id="async")
    reply = await llm.achat([ChatMessage(role="user", content="Hello there!")])
    assert reply.message.role.value == "assistant" and llm.engine.stats("async").turns_seen == 2


async def test_memory_block_receives_flushed_turns(make_engine):
    engine = make_engine()
    block = TemploraMemoryBlock(engine, agent_id="archive")
    tokenize = lambda text: engine.tokenizer(text)["input_ids"]  # noqa: E731  (offline: no tiktoken download)
    memory = Memory.from_defaults(
        token_limit=120, token_flush_size=40, chat_history_token_ratio=0.5, tokenizer_fn=tokenize, memory_blocks=[block]
    )
    for i, line in enumerate(LINES):
        await memory.aput(ChatMessage(role="user" if i % 2 == 0 else "assistant", content=line))
    short_term = await memory.aget()  # the messages the next prompt holds (our block inserts no text)
    archived = engine.stats("archive")
    assert archived.turns_seen >= 2 and archived.chunks_trained >= 1  # flushed turns went into the adapter
    # each turn is either still in short-term memory or was written, once, into the adapter
    assert [m.content for m in short_term] == LINES[archived.turns_seen :]
