"""Memory people can inspect and correct (issue 27), on the tiny model: the ledger of every turn an agent was told,
turns forgotten from everything that held them (the store's bytes included), the adapter rebuilt without them and
never used until then, and the readout of what the adapter recalls."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from templora_memory import InvalidInputError, ParametricMemory, UnknownAgentError, UnknownTurnError
from templora_memory.generation import Sampling
from templora_memory.rebuild import Rebuilder
from tests.rebuild_worker import CHUNKS_BEFORE_THE_KILL, CONFIG, SECRET, talk

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


def store_bytes_with(store: Path, text: str) -> list[Path]:
    """Every file under the store holding `text` (as UTF-8 bytes)."""
    return [path for path in store.rglob("*") if path.is_file() and text.encode() in path.read_bytes()]


def weights(engine, agent_id: str = "npc") -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in engine.bank.parameters(agent_id)]


def same(first: list[torch.Tensor], second: list[torch.Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.fixture
def no_background(monkeypatch):
    """Rebuilds run only when a caller finishes them (`wait`), so a test sees the agent mid-rebuild."""
    monkeypatch.setattr(Rebuilder, "schedule", lambda self, agent_id: None)


def test_the_ledger_lists_every_turn_and_text_with_ids_and_survives_a_restart(make_engine, tmp_path):
    engine = make_engine(store=tmp_path / "store")
    engine.add_turns("npc", [{"role": "system", "content": "You are Bram."}, *talk(0, 6)])
    engine.absorb("npc", "The mill was built in 1820 by the Grey river.", progress=False)
    engine.add_turns("npc", talk(6, 8))
    listed = engine.turns("npc")
    assert [t.role for t in listed] == ["user", "assistant"] * 3 + ["text", "user", "assistant"]  # no system turn
    assert [t.id for t in listed] == list(range(1, 10)) and listed[6].content.endswith("by the Grey river.")
    assert listed[0].time <= listed[-1].time and all(t.tokens > 0 for t in listed)
    assert listed[6].written and not listed[-1].written  # the absorbed text is trained at once, the newest turn waits
    assert [t.id for t in engine.turns("npc", after=3, limit=2)] == [4, 5]
    engine.close()

    restarted = make_engine(store=tmp_path / "store")
    assert restarted.turns("npc") == listed
    exported = restarted.export("npc", tmp_path / "exported")
    entries = json.loads((exported / "state.json").read_text())["ledger"]["entries"]
    assert [entry["id"] for entry in entries] == list(range(1, 10))


def test_the_ledger_is_bounded_compacted_and_keeps_its_ids(make_engine):
    engine = make_engine(ledger_turns=16)
    for start in range(0, 60, 4):
        engine.add_turns("npc", talk(start, start + 4))
    ids = [t.id for t in engine.turns("npc")]
    assert 16 <= len(ids) <= 20 and ids == list(range(61 - len(ids), 61))  # the newest, their ids unchanged
    with pytest.raises(UnknownTurnError, match="no turn 3 .*turns\\(\\) lists"):
        engine.forget_turns("npc", [3])


def test_forgetting_removes_the_turn_from_window_archive_ledger_pending_and_store_files(make_engine, tmp_path):
    store = tmp_path / "store"
    engine = make_engine(store=store, recall_tokens=48, snapshot_tokens=64)
    engine.add_turns("npc", talk(0, 30, secret_at=4))
    engine.add_turns("npc", talk(30, 32, secret_at=31))  # a second telling, still pending in the window
    engine.wait("npc")
    with engine._residency.locked("npc") as state:
        assert any(SECRET in m["content"] for m in state.conversation.archive)
    assert store_bytes_with(store, SECRET) and any(SECRET in m["content"] for m in engine.window("npc"))
    pending_before = engine.stats("npc").tokens_pending

    forgotten = engine.forget_turns("npc", matching=SECRET.lower())
    assert forgotten.deleted == [5, 32] and forgotten.rebuilding and forgotten.rebuilt_from.startswith("s")
    assert not store_bytes_with(store, SECRET)  # gone from the store before the rebuild even starts
    assert [t.id for t in engine.turns("npc")] == [i for i in range(1, 33) if i not in (5, 32)]
    assert all(SECRET not in m["content"] for m in engine.window("npc"))
    assert SECRET not in engine.tokenizer.decode(engine.prompt_ids("npc"))
    with engine._residency.locked("npc") as state:
        assert all(SECRET not in m["content"] for m in state.conversation.archive)
    assert engine.stats("npc").tokens_pending < pending_before
    engine.wait("npc")
    assert not engine.stats("npc").rebuilding and not store_bytes_with(store, SECRET)
    stats = engine.stats("npc")  # the ledger holds the whole stream: what was written, then what is pending
    assert stats.tokens_written + stats.tokens_pending == sum(t.tokens for t in engine.turns("npc"))


def test_the_old_adapter_is_never_used_after_a_deletion(make_engine, no_background, monkeypatch, tokenizer):
    engine = make_engine(snapshot_tokens=64)
    engine.add_turns("npc", talk(0, 30, secret_at=20))
    engine.wait("npc")
    old = weights(engine)
    adapters = []
    tokens = type(engine.replies).tokens  # every reply and completion, batched or alone, reads its adapter here
    monkeypatch.setattr(
        type(engine.replies), "tokens", lambda self, a, *args, **kw: adapters.append(a) or tokens(self, a, *args, **kw)
    )
    prompt, answer = engine.encode("The gate code is"), engine.encode(f" {SECRET}")

    engine.forget_turns("npc", [21])
    assert engine.stats("npc").rebuilding and engine.stats("npc").rebuild_tokens_left > 0
    assert not same(weights(engine), old)  # the slot holds the snapshot now, not the adapter that heard the turn
    engine.respond("npc", [{"role": "user", "content": "What is the gate code?"}], Sampling(4)).result()
    "".join(engine.stream_completion("npc", prompt, Sampling(2)))
    assert engine.log_likelihood("npc", prompt, answer) == engine.log_likelihood(None, prompt, answer)
    assert adapters == [None, None]  # replies and completions read no adapter while it is rebuilt

    engine.wait("npc")
    assert not engine.stats("npc").rebuilding and not same(weights(engine), old)
    engine.respond("npc", [{"role": "user", "content": "And now?"}], Sampling(4)).result()
    assert adapters[-1] == "npc"


def test_a_rebuild_from_a_snapshot_trains_what_a_rebuild_from_the_start_trains(make_engine):
    rebuilt = {}
    for every in (64, 0):
        engine = make_engine(snapshot_tokens=every)
        engine.add_turns("npc", talk(0, 30, secret_at=20))
        engine.wait("npc")
        forgotten = engine.forget_turns("npc", matching=SECRET)
        engine.wait("npc")
        rebuilt[every] = (forgotten, weights(engine), engine.stats("npc").tokens_written)
    (from_snapshot, snapshot_weights, written), (from_start, start_weights, written_again) = rebuilt[64], rebuilt[0]
    assert from_start.rebuilt_from == "origin" and from_snapshot.rebuilt_from != "origin"
    assert from_snapshot.rebuild_tokens < from_start.rebuild_tokens and written == written_again
    assert same(snapshot_weights, start_weights)


def test_forgetting_a_turn_still_pending_needs_no_rebuild(make_engine):
    engine = make_engine()
    engine.add_turns("npc", talk(0, 20))
    engine.wait("npc")
    newest, before = engine.turns("npc")[-1], weights(engine)
    assert not newest.written
    forgotten = engine.forget_turns("npc", [newest.id])
    assert not forgotten.rebuilding and forgotten.rebuild_tokens == 0 and same(weights(engine), before)
    assert engine.window("npc")[-1] == talk(18, 19)[0]


def test_an_absorbed_text_and_a_parallel_deployment_are_forgotten_too(make_engine):
    engine = make_engine(deployment="parallel")
    engine.absorb("npc", f"Notes of the mill. The gate code is {SECRET}. " * 3, progress=False)
    engine.add_turns("npc", talk(0, 20))
    text = next(t for t in engine.turns("npc") if t.role == "text")
    assert engine.forget_turns("npc", matching=SECRET).deleted == [text.id]
    engine.wait("npc")
    assert not engine.stats("npc").rebuilding and all(t.role != "text" for t in engine.turns("npc"))


def test_a_turn_before_every_snapshot_is_refused_and_nothing_changes(make_engine):
    engine = make_engine(ledger_turns=16, snapshot_tokens=0)
    for start in range(0, 40, 4):
        engine.add_turns("npc", talk(start, start + 4))
    engine.wait("npc")
    oldest, before = engine.turns("npc")[0], weights(engine)
    with pytest.raises(InvalidInputError, match="no snapshot lies before it.*forget\\(\\) the agent"):
        engine.forget_turns("npc", [oldest.id])
    assert engine.turns("npc")[0] == oldest and same(weights(engine), before)


def test_a_corrected_turn_is_told_anew_and_the_old_text_leaves_everything(make_engine, tmp_path):
    store = tmp_path / "store"
    engine = make_engine(store=store, snapshot_tokens=64)
    engine.add_turns("npc", talk(0, 30, secret_at=20))
    engine.wait("npc")
    corrected = engine.correct_turn("npc", 21, "turn 20 about the mill. The gate code is OTTER-1234.")
    assert corrected.deleted == [21] and corrected.added == 31 and corrected.rebuilding
    assert not store_bytes_with(store, SECRET) and store_bytes_with(store, "OTTER-1234")
    listed = engine.turns("npc")
    assert [t.id for t in listed] == [i for i in range(1, 32) if i != 21]
    assert listed[-1].role == "user" and listed[-1].content.endswith("OTTER-1234.") and not listed[-1].written
    assert engine.window("npc")[-1]["content"].endswith("OTTER-1234.")
    engine.wait("npc")
    assert not engine.stats("npc").rebuilding and not store_bytes_with(store, SECRET)
    listed = engine.turns("npc")
    engine.close()
    restarted = make_engine(store=store)
    assert restarted.turns("npc") == listed
    stats = restarted.stats("npc")
    assert stats.tokens_written + stats.tokens_pending == sum(t.tokens for t in restarted.turns("npc"))


def test_a_correction_that_cannot_be_made_changes_nothing(make_engine):
    engine = make_engine(ledger_turns=16, snapshot_tokens=0)
    for start in range(0, 40, 4):
        engine.add_turns("npc", talk(start, start + 4))
    engine.wait("npc")
    engine.absorb("npc", "The mill was built in 1820.", progress=False)
    before, oldest, text = engine.turns("npc"), engine.turns("npc")[0], engine.turns("npc")[-1]
    with pytest.raises(InvalidInputError, match="no snapshot lies before it"):
        engine.correct_turn("npc", oldest.id, "turn 0, corrected")
    with pytest.raises(InvalidInputError, match="only user and assistant turns can be corrected"):
        engine.correct_turn("npc", text.id, "built in 1821")
    with pytest.raises(InvalidInputError, match="content must be the corrected turn's text"):
        engine.correct_turn("npc", before[-2].id, "  ")
    with pytest.raises(UnknownTurnError, match="no turn 999"):
        engine.correct_turn("npc", 999, "anything")
    assert engine.turns("npc") == before


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda e: e.forget_turns("ghost", [1]), UnknownAgentError, "has no memory"),
        (lambda e: e.turns("ghost"), UnknownAgentError, "has no memory"),
        (lambda e: e.recalls("ghost"), UnknownAgentError, "has no memory"),
        (lambda e: e.forget_turns("npc", [99]), UnknownTurnError, "no turn 99"),
        (lambda e: e.forget_turns("npc"), InvalidInputError, "name the turns to forget"),
        (lambda e: e.forget_turns("npc", "3"), InvalidInputError, "must be a list of turn ids"),
        (lambda e: e.forget_turns("npc", [1.5]), InvalidInputError, "turn ids are integers"),
        (lambda e: e.forget_turns("npc", matching="  "), InvalidInputError, "matching must be a non-blank"),
        (lambda e: e.turns("npc", limit=0), InvalidInputError, "limit must be a positive integer"),
        (lambda e: e.turns("npc", after="x"), InvalidInputError, "after must be a turn id"),
        (lambda e: e.recalls("npc", limit=0), InvalidInputError, "limit must be an integer from 1"),
    ],
)
def test_bad_input_is_refused_saying_what_to_do(make_engine, call, error, message):
    engine = make_engine()
    engine.add_turns("npc", talk(0, 2))
    with pytest.raises(error, match=message):
        call(engine)


def test_recalls_asks_each_stated_fact_of_the_adapter_alone(make_engine):
    memory = ParametricMemory(engine=make_engine())
    memory.engine.add_turns("npc", [{"role": "user", "content": "My daughter is called Mira. I have seven sheep."}])
    memory.engine.add_turns("npc", talk(1, 12))
    recalls = memory.recalls("npc")
    assert [(r.turn_id, r.span, r.question) for r in recalls] == [
        (1, "Mira", "Remind me: your daughter is called what?"),
        (1, "seven sheep", "Remind me: you have what?"),
    ]
    assert all(r.status in ("answered", "likely", "lost") and r.nll > 0 and r.base_nll > 0 for r in recalls)
    assert memory.turns("npc")[0].content.startswith("My daughter") and memory.forget_turns("npc", [1]).deleted == [1]
    assert memory.recalls("npc") == []


def test_a_rebuild_killed_midway_resumes_on_the_next_load(make_engine, tmp_path):
    store, marker = tmp_path / "store", tmp_path / "rebuilding"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.rebuild_worker", str(store), str(marker)], cwd=REPO, env=env
    )
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert worker.poll() is None, f"the worker exited ({worker.returncode}) before its rebuild's third chunk"
        assert time.monotonic() < deadline, "the worker never reached its rebuild's third chunk"
        time.sleep(0.1)
    worker.send_signal(signal.SIGKILL)
    worker.wait()

    expected = make_engine(**CONFIG)  # the same, never killed
    expected.add_turns("npc", talk(0, 30, secret_at=20))
    expected.wait("npc")
    total = expected.forget_turns("npc", matching=SECRET).rebuild_tokens
    expected.wait("npc")
    assert not store_bytes_with(store, SECRET)
    left = make_engine(store=store, **CONFIG).stats("npc")  # read from the store, nothing loaded
    assert left.rebuilding and left.rebuild_tokens_left == total - CHUNKS_BEFORE_THE_KILL * CONFIG["chunk_tokens"]

    restarted = make_engine(store=store, **CONFIG)
    restarted.wait("npc")  # loads the agent, which resumes its rebuild
    assert not restarted.stats("npc").rebuilding and same(weights(restarted), weights(expected))
    listed = [turn.model_dump(exclude={"time"}) for engine in (restarted, expected) for turn in engine.turns("npc")]
    assert listed[: len(listed) // 2] == listed[len(listed) // 2 :]
