"""Bounded work per request (issue 23, findings 1, 7, 8): a request trains at most `sync_write_tokens` before its
reply and background writes take turns with other agents for the rest; a request past its timeout, and a
shutdown, stop writing before the next optimizer step (a chunk stopped midway is put back as it was); shutdown
commits every agent it can. No turn is lost."""

from __future__ import annotations

import threading
import time

import pytest
import torch

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from templora_memory import StoreError, trainer, writing  # noqa: E402
from templora_memory.errors import WriteStopped  # noqa: E402
from templora_memory.server import BackgroundServer, ServerSettings  # noqa: E402
from templora_memory.store import store_key  # noqa: E402
from tests.test_server import idle, post, user, wait_until  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
FACTS = [user(f"Fact {i}: the miller's daughter number {i} is called Rose-{i}.") for i in range(40)]


@pytest.fixture
def slow_chunks(monkeypatch):
    """Each chunk's update takes `slow_chunks.seconds` more; `slow_chunks.times` has each one's (start, end)."""
    from templora_memory import writing

    update = writing.run_update

    def slow(*args, **kwargs):
        began = time.monotonic()
        time.sleep(slow.seconds)
        update(*args, **kwargs)
        slow.times.append((began, time.monotonic()))

    slow.seconds, slow.times = 0.0, []
    monkeypatch.setattr(writing, "run_update", slow)
    return slow


def _tokens(engine, messages) -> int:
    return sum(engine.turn_tokens(messages))


def _all_kept(engine, agent_id: str, messages) -> bool:
    """Every token of every turn is written or pending, none twice."""
    stats = engine.stats(agent_id)
    return stats.tokens_written + stats.tokens_pending == _tokens(engine, messages)


def test_a_huge_request_writes_its_budget_and_the_rest_in_the_background(make_engine, start_server, slow_chunks):
    engine = make_engine()
    slow_chunks.seconds = 0.05
    server = start_server(engine, workers=1, sync_write_tokens=64)
    response = post(server, {"messages": FACTS, "max_tokens": 4})
    assert response.status_code == 200, response.text
    backlog = engine.stats("npc").tokens_pending
    assert backlog > 4 * engine.config.chunk_tokens and len(slow_chunks.times) <= 2 + 2  # 64 tokens, then the reply
    other = post(server, {"messages": [user("Hello")], "max_tokens": 4}, "other")  # takes its turn meanwhile
    assert other.status_code == 200 and engine.stats("npc").tokens_pending >= engine.config.chunk_tokens
    wait_until(lambda: engine.stats("npc").tokens_pending < engine.config.chunk_tokens, 120)
    reply = {"role": "assistant", "content": response.json()["choices"][0]["message"]["content"]}
    assert engine.stats("npc").turns_seen == 41 and _all_kept(engine, "npc", [*FACTS, reply])


def test_an_agent_over_its_backlog_limit_gets_429_with_retry_after(make_engine, start_server, slow_chunks):
    engine = make_engine()
    slow_chunks.seconds = 0.3
    server = start_server(engine, workers=1, sync_write_tokens=32, max_pending_tokens=100)
    assert post(server, {"messages": FACTS, "max_tokens": 4}).status_code == 200
    refused = post(server, {"messages": [*FACTS, user("And?")], "max_tokens": 4})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "backlog_full", refused.text
    assert int(refused.headers["retry-after"]) >= 1 and "max-pending-tokens" in refused.json()["error"]["message"]
    assert engine.stats("npc").turns_seen == 41  # the refused request wrote nothing


def test_a_request_past_its_timeout_stops_writing_at_the_next_chunk(
    make_engine, start_server, slow_chunks, monkeypatch
):
    from templora_memory.server.app import Service

    monkeypatch.setattr(Service, "keep_writing", lambda self, agent_id: None)  # only the request's own writing
    engine = make_engine()
    slow_chunks.seconds = 0.3
    server = start_server(engine, request_timeout=1.0, sync_write_tokens=10**6)
    began = time.monotonic()
    assert post(server, {"messages": FACTS, "max_tokens": 4}).status_code == 504
    timed_out = time.monotonic()
    wait_until(lambda: idle(server))
    assert post(server, {"messages": [user("Hi")], "max_tokens": 4}, "probe").status_code == 200
    starts = [start for start, _ in slow_chunks.times]
    assert starts and max(starts) < timed_out + 0.25  # the chunk under way when it timed out ends it: no next one
    assert timed_out - began < 3.0 and engine.stats("npc").tokens_pending > 0
    assert engine.stats("npc").turns_seen == 40 and _all_kept(engine, "npc", FACTS)  # no turn lost


def test_shutdown_stops_a_long_chunk_between_steps_within_its_timeout_and_loses_no_turn(
    make_engine, tmp_path, monkeypatch
):
    engine = make_engine(store=tmp_path / "store", epochs=40)  # a chunk takes 40 slow steps: 12 s
    accumulate, steps = trainer._accumulate, []

    def slow(*args):
        steps.append(time.sleep(0.3))
        return accumulate(*args)

    monkeypatch.setattr(trainer, "_accumulate", slow)
    settings = ServerSettings(shutdown_timeout=1.0, sync_write_tokens=10**6)
    server = BackgroundServer(engine, settings).start()
    threading.Thread(target=post, args=(server, {"messages": FACTS, "max_tokens": 4}), daemon=True).start()
    wait_until(lambda: len(steps) >= 2)
    began = time.monotonic()
    server.close()
    assert time.monotonic() - began < 1.0 + 0.3 + 3.0  # the timeout, one step, the commit
    assert engine.resident_ids() == []  # committed and released
    restarted = make_engine(store=tmp_path / "store")
    assert restarted.stats("npc").chunks_trained == 0  # the chunk cut short left nothing
    assert restarted.stats("npc").turns_seen == 40 and _all_kept(restarted, "npc", FACTS)


def test_a_write_stopped_between_two_steps_leaves_the_adapter_as_before_that_chunk(make_engine, monkeypatch):
    stopped, whole = make_engine(seed=3, epochs=3), make_engine(seed=3, epochs=3)
    chunk, stop, steps = stopped.config.chunk_tokens, threading.Event(), []
    accumulate = trainer._accumulate

    def counted(*args):
        steps.append(1)
        if len(steps) == 3 + 2:  # the second chunk's second step: the stop comes before its third
            stop.set()
        return accumulate(*args)

    monkeypatch.setattr(trainer, "_accumulate", counted)
    with writing.stop_on(stop), pytest.raises(WriteStopped, match="before a training step"):
        stopped.add_turns("npc", FACTS[:5])
    assert len(steps) == 3 + 2 and stopped.stats("npc").chunks_trained == 1
    with writing.stop_on(threading.Event(), budget=chunk):  # the same stream, its first chunk only
        whole.add_turns("npc", FACTS[:5])
    assert stopped.stats("npc").tokens_pending == whole.stats("npc").tokens_pending > chunk
    weights = [(a, b) for a, b in zip(stopped.bank.parameters("npc"), whole.bank.parameters("npc"), strict=True)]
    assert all(torch.equal(a, b) for a, b in weights)  # the stopped chunk's two steps left no trace
    for engine in (stopped, whole):  # and the optimizer state too: the rest trains alike
        engine.write_tokens("npc", [])
    assert stopped.stats("npc").chunks_trained == whole.stats("npc").chunks_trained > 1
    assert all(torch.equal(a, b) for a, b in weights)


def test_closing_commits_every_agent_it_can_and_names_the_ones_it_could_not(make_engine, tmp_path):
    engine = make_engine(store=tmp_path / "store")
    for agent_id in ("a", "b", "c"):
        engine.add_turns(agent_id, [user(f"I am {agent_id}.")])
    commit = engine.store.commit

    def failing(key, record, weights, purge=False):
        if key == store_key("b"):
            raise StoreError("the disk is full")
        commit(key, record, weights, purge)

    engine.store.commit = failing
    with pytest.raises(StoreError, match="'b'"):
        engine.close()
    assert engine.resident_ids() == ["b"]
    assert make_engine(store=tmp_path / "store").agent_ids() == ["a", "b", "c"]
