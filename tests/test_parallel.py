"""Parallelized deployment (paper §3.2) on the tiny model: replies do not wait for training, results match."""

from __future__ import annotations

import threading

import torch

from templora_memory.generation import Sampling


def _turns(n: int, start: int = 0) -> list[dict]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": f"turn {i} about the lighthouse"} for i in range(start, start + n)]


def test_background_training_writes_exactly_what_cascaded_training_writes(make_engine):
    cascaded, parallel = make_engine(), make_engine(deployment="parallel")
    for start in range(0, 24, 3):
        cascaded.add_turns("keeper", _turns(3, start))
        parallel.add_turns("keeper", _turns(3, start))
    parallel.wait()
    timing = {"train_seconds", "prompt_tokens"}
    assert parallel.stats("keeper").model_dump(exclude=timing) == cascaded.stats("keeper").model_dump(exclude=timing)
    assert cascaded.stats("keeper").chunks_trained >= 4
    ours, theirs = parallel.bank.parameters("keeper"), cascaded.bank.parameters("keeper")
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_a_reply_comes_from_the_previous_adapter_while_a_chunk_trains(make_engine, monkeypatch):
    engine = make_engine(deployment="parallel", window_tokens=160)
    release = threading.Event()
    real_train = __import__("templora_memory.trainer", fromlist=["train_chunk"]).train_chunk

    def slow_train(*args, **kwargs):
        assert release.wait(timeout=60), "the test never released training"
        return real_train(*args, **kwargs)

    monkeypatch.setattr("templora_memory.trainer.train_chunk", slow_train)
    engine.add_turns("keeper", _turns(4))  # just over one chunk: a job starts and blocks
    assert engine.agent("keeper").stats.training
    before = [p.detach().clone() for p in engine.bank.parameters("keeper")]

    reply = "".join(engine.respond("keeper", [{"role": "user", "content": "still there?"}], Sampling(max_new_tokens=4)))
    assert isinstance(reply, str)
    assert engine.stats("keeper").chunks_trained == 0  # the reply did not wait
    assert all(torch.equal(a, b) for a, b in zip(before, engine.bank.parameters("keeper"), strict=True))

    release.set()
    engine.wait("keeper")
    assert engine.stats("keeper").chunks_trained >= 1
    assert not all(torch.equal(a, b) for a, b in zip(before, engine.bank.parameters("keeper"), strict=True))
