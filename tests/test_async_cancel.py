"""Async paths (issue 23, finding 11): cancelling `astream` / `ainvoke` stops generation and the reply is not
remembered (the server's rule), and the async memory hooks train off the event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")
REPLY = "one two three four five six seven eight nine ten eleven twelve"


@pytest.fixture
def slow_script(scripted_model, tiny_memory):
    """The scripted reply, one token every 0.05 s; `slow_script.tokens` counts the tokens generated."""
    scripted_model.play(tiny_memory.engine.tokenizer, REPLY)
    generate = scripted_model.generate

    def slow(*args, **kwargs):
        for token in generate(*args, **kwargs):
            time.sleep(0.05)
            slow.tokens += 1
            yield token

    slow.tokens = 0
    scripted_model.generate = slow
    return slow


def _remembered(memory, agent_id: str) -> list[str]:
    return [m["role"] for m in memory.engine.window(agent_id)]


def test_closing_an_astream_stops_generation_and_forgets_the_reply(tiny_memory, slow_script, monkeypatch):
    monkeypatch.setattr("templora_memory.reply_batch.ReplyBatch.tokens", staticmethod(slow_script))

    async def first_piece_then_leave() -> None:
        stream = tiny_memory.astream("Count for me", agent_id="a", max_tokens=64)
        await anext(stream)
        await stream.aclose()

    asyncio.run(first_piece_then_leave())
    time.sleep(0.3)  # the worker sees the stop at its next piece
    assert _remembered(tiny_memory, "a") == ["user"]
    assert slow_script.tokens < len(tiny_memory.engine.encode(REPLY))


def test_cancelling_ainvoke_stops_generation_and_forgets_the_reply(tiny_memory, slow_script, monkeypatch):
    monkeypatch.setattr("templora_memory.reply_batch.ReplyBatch.tokens", staticmethod(slow_script))

    async def cancel_midway() -> None:
        task = asyncio.create_task(tiny_memory.ainvoke("Count for me", agent_id="b", max_tokens=64))
        while slow_script.tokens < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    time.sleep(0.3)
    assert _remembered(tiny_memory, "b") == ["user"]
    assert slow_script.tokens < len(tiny_memory.engine.encode(REPLY))
    assert tiny_memory.invoke("Again", agent_id="b").content  # the agent's lock was given back


def test_the_llamaindex_memory_block_trains_off_the_event_loop(make_engine, monkeypatch):
    llama = pytest.importorskip("llama_index.core.llms")
    from templora_memory.integrations.llamaindex import TemploraMemoryBlock

    engine = make_engine()
    block = TemploraMemoryBlock(engine, agent_id="c")
    loop_thread, writer_threads = threading.get_ident(), []
    add_turns = engine.add_turns
    monkeypatch.setattr(engine, "add_turns", lambda *a: writer_threads.append(threading.get_ident()) or add_turns(*a))
    asyncio.run(block._aput([llama.ChatMessage(role="user", content="The well is dry.")]))
    assert writer_threads and loop_thread not in writer_threads
