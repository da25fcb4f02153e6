"""One writer per agent: real processes racing for one agent on a shared store, local and on the S3 server.

The second process waits for the lease (or, past its wait, gets `AgentBusyError`); a writer paused past its
lease is taken over and its late commit refused (`LeaseLostError`); no turn is lost or written twice.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time

import pytest

from templora_memory import AgentStore, StoreError
from templora_memory.errors import AgentBusyError
from templora_memory.lease import HOST
from templora_memory.message import fingerprint
from templora_memory.store import LEASE, store_key
from tests import race_worker
from tests.race_worker import AGENT, message

pytestmark = pytest.mark.timeout(400)
SPAWN = multiprocessing.get_context("spawn")


def _start(tmp_path, store_url, name, steps, lease_seconds=30.0, lease_wait=40.0):
    process = SPAWN.Process(
        target=race_worker.run, args=(store_url, name, lease_seconds, lease_wait, str(tmp_path), steps)
    )
    process.start()
    return process


def _wait_for(path, process, timeout=240.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.is_alive(), f"the worker exited ({process.exitcode}) before {path.name}"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def _finish(tmp_path, process, name) -> dict:
    process.join(240)
    assert process.exitcode == 0, f"worker {name} exited with {process.exitcode}"
    return json.loads((tmp_path / f"{name}.json").read_text())


def _step(report: dict, step: str) -> dict:
    return next(s for s in report["steps"] if s["step"] == step)


def _stored_turns(make_engine, store_url) -> list[str]:
    """Fingerprints of the agent's turns as a fresh process would load them."""
    return list(make_engine(store=store_url).agent(AGENT).fingerprints)


def test_a_second_process_waits_for_the_lease_and_no_turn_is_lost(make_engine, store_url, tmp_path):
    first = _start(tmp_path, store_url, "A", ["take", "signal:A-holds", "await:B-asks", "write:12", "close"])
    _wait_for(tmp_path / "A-holds", first)
    second = _start(tmp_path, store_url, "B", ["signal:B-asks", "take", "write:12", "close"])
    a, b = _finish(tmp_path, first, "A"), _finish(tmp_path, second, "B")

    assert [w[1] for w in a["writes"] + b["writes"]] == ["ok"] * 24
    assert _step(b, "take")["began"] < _step(a, "close")["ended"] <= _step(b, "take")["ended"]  # B waited for A
    sent = [message(name, i) for name in "AB" for i in range(12)]
    assert _stored_turns(make_engine, store_url) == [fingerprint(m) for m in sent]  # A's 12, then B's 12


def test_a_process_that_waits_too_long_gets_the_documented_error(make_engine, store_url, tmp_path):
    first = _start(tmp_path, store_url, "A", ["take", "write:2", "signal:A-holds", "await:B-done", "close"])
    _wait_for(tmp_path / "A-holds", first)
    second = _start(tmp_path, store_url, "B", ["take", "write:1", "signal:B-done"], lease_wait=1.0)
    b, a = _finish(tmp_path, second, "B"), _finish(tmp_path, first, "A")

    kind, text = _step(b, "take")["error"]
    assert kind == "AgentBusyError" and f"is being written by {HOST}:" in text and "Retry later" in text
    assert b["writes"] == [[0, "AgentBusyError"]] and [w[1] for w in a["writes"]] == ["ok", "ok"]
    assert _stored_turns(make_engine, store_url) == [fingerprint(message("A", i)) for i in range(2)]


def test_a_paused_writer_is_taken_over_and_its_late_commit_refused(make_engine, store_url, tmp_path):
    steps = ["take", "write:3", "signal:A-holds", "await:go", "write:2", "close"]
    stale = _start(tmp_path, store_url, "A", steps, lease_seconds=2.0)
    _wait_for(tmp_path / "A-holds", stale)
    os.kill(stale.pid, signal.SIGSTOP)  # A stops renewing: its lease runs out while it still holds the agent
    try:
        time.sleep(3.0)
        rival = _start(tmp_path, store_url, "B", ["take", "write:3", "close"], lease_wait=60.0)
        b = _finish(tmp_path, rival, "B")
    finally:
        os.kill(stale.pid, signal.SIGCONT)
    (tmp_path / "go").touch()
    a = _finish(tmp_path, stale, "A")

    take = _step(b, "take")
    assert take["error"] is None and take["ended"] - take["began"] < 30  # the expired lease, taken over at once
    assert a["writes"] == [[0, "ok"], [1, "ok"], [2, "ok"], [3, "LeaseLostError"], [4, "ok"]]
    expected = [message("A", i) for i in range(3)] + [message("B", i) for i in range(3)] + [message("A", 4)]
    assert _stored_turns(make_engine, store_url) == [fingerprint(m) for m in expected]  # A's refused turn 3: absent


def test_an_expired_lease_of_another_machine_is_taken_over_after_its_expiry(store_url):
    store = AgentStore(store_url, lease_wait=10.0)
    key = store_key("npc")
    foreign = {"owner": "another-host:4242", "token": "f" * 32, "expires": time.time() + 1.5}
    store.blobs.write(f"agents/{key}/{LEASE}", json.dumps(foreign).encode())

    began = time.monotonic()
    assert store.acquire(key) is None  # a new agent, once the other machine's lease ran out
    assert 1.0 < time.monotonic() - began < 8.0
    held = json.loads(store.blobs.read(f"agents/{key}/{LEASE}"))
    assert held["owner"] == f"{HOST}:{os.getpid()}" and held["expires"] > time.time() + 20
    store.release(key)
    assert json.loads(store.blobs.read(f"agents/{key}/{LEASE}"))["expires"] == 0  # given back: free at once


def test_a_store_refuses_writes_to_an_agent_it_does_not_hold(store_url):
    store = AgentStore(store_url, lease_wait=0.2)
    with pytest.raises(StoreError, match="acquire it before writing"):
        store.commit(store_key("npc"), {}, None)
    store.acquire(store_key("npc"))
    rival = AgentStore(store_url, lease_wait=0.2)
    with pytest.raises(AgentBusyError, match="waited 0.2 s"):
        rival.acquire(store_key("npc"))
    store.close()
    assert rival.acquire(store_key("npc")) is None
