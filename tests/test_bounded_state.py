"""An agent's saved state stays bounded however many turns it receives (issue 23, finding 12): only the newest
fingerprints and archived turns are kept, cut in batches, while a count keeps how many turns were seen."""

from __future__ import annotations

import json

import pytest

from templora_memory import conversation
from templora_memory.agent import AgentState
from templora_memory.conversation import ARCHIVE_KEPT, FINGERPRINTS_KEPT, Conversation
from templora_memory.message import Turn, fingerprint
from templora_memory.recall import BM25Index, synced
from templora_memory.store import CURRENT, FORMAT_VERSION, STATE, AgentStore, store_key
from templora_memory.window import window_start

WINDOW, CHUNK = 256, 64  # tokens: a window of a few turns, chunks written as an engine writes them


def _history(n: int, start: int = 0) -> list[dict]:
    return [
        {"role": ("user", "assistant")[i % 2], "content": f"turn {i} about the mill and the river"}
        for i in range(start, start + n)
    ]


def _receive(talk: Conversation, messages: list[dict], archive: bool = True) -> None:
    """What an engine does with each turn, without a model: keep it, write full chunks, let go of what left the
    window (archived for hybrid recall with `archive`). A turn is 8 made-up tokens."""
    for message in messages:
        talk.append(Turn(message, tuple(range(100, 108)), fingerprint(message)))
        while len(talk.pending) >= CHUNK:
            talk.mark_written(CHUNK, CHUNK)
        talk.drop_before(window_start(talk.sizes, WINDOW), archive=archive)


@pytest.fixture(scope="module")
def long_talk() -> tuple[Conversation, list[dict]]:
    """A conversation fed 10,000 turns, and those turns."""
    history, talk = _history(10_000), Conversation()
    _receive(talk, history)
    return talk, history


def test_ten_thousand_turns_keep_a_bounded_tail_and_count_them_all(long_talk):
    talk, _ = long_talk
    assert talk.seen == 10_000
    assert FINGERPRINTS_KEPT <= len(talk.fingerprints) <= FINGERPRINTS_KEPT + FINGERPRINTS_KEPT // 4
    assert ARCHIVE_KEPT <= len(talk.archive) <= ARCHIVE_KEPT + ARCHIVE_KEPT // 4
    assert talk.archive_cut + len(talk.archive) + len(talk.turns) == 10_000  # every turn archived, cut or in reach
    assert talk.fingerprints == [
        fingerprint(m) for m in _history(len(talk.fingerprints), 10_000 - len(talk.fingerprints))
    ]


def test_a_resent_history_longer_than_the_kept_tail_is_recognised(long_talk):
    talk, history = long_talk
    new = _history(2, start=10_000)
    assert talk.unseen(history) == []
    assert talk.unseen([*history, *new]) == new  # a client resending its whole history every call
    assert talk.unseen([*history[-50:], *new]) == new  # a client that trims its history
    assert talk.unseen(new) == new
    assert talk.unseen([*history[:-1], *new]) == [*history[:-1], *new]  # not the end of what was seen: all new


def test_a_history_within_the_kept_tail_is_compared_exactly():
    talk = Conversation()
    _receive(talk, _history(6))
    history = _history(6)
    assert talk.unseen([*history[2:], *_history(1, 6)]) == _history(1, 6)
    assert talk.unseen([history[0], *history[2:]]) == [history[0], *history[2:]]  # a gap: nothing repeats the end


def test_the_index_is_rebuilt_once_per_archive_cut_and_matches_a_fresh_one(monkeypatch):
    built, init = [], BM25Index.__init__
    monkeypatch.setattr(
        BM25Index, "__init__", lambda self, texts=(), cut=0: built.append(cut) or init(self, texts, cut)
    )
    talk, index, cuts = Conversation(), None, set()
    for message in _history(6_000):
        _receive(talk, [message])
        index = synced(index, talk.archive, talk.archive_cut)
        cuts.add(talk.archive_cut)
    assert len(cuts) > 2 and built == sorted(cuts)  # one index per batch cut (and the first), never more
    assert len(built) <= 2 + 6_000 // (ARCHIVE_KEPT // 4)
    fresh = BM25Index([m["content"] for m in talk.archive])
    assert len(index) == len(fresh) and index.first == fresh.first and index.lengths == fresh.lengths
    for query in ("turn 5999 about the mill", "turn 4000", "river 3500"):
        assert index.top(query, 4) == fresh.top(query, 4)


def test_a_cut_is_noticed_when_the_new_first_turn_reads_like_the_old_one():
    ok, key = {"role": "assistant", "content": "ok"}, {"role": "user", "content": "the key is under the stone"}
    index = synced(None, [ok, key], 0)
    later = [ok, *_history(3)]  # two turns cut, then more archived: it starts with an "ok" again and is longer
    again = synced(index, later, 2)
    assert again is not index and len(again) == 4 and again.top("where is the key stone", 4) == []


def test_the_record_keeps_the_count_and_an_old_record_without_it_loads(long_talk):
    talk, _ = long_talk
    record = json.loads(json.dumps(AgentState("npc", conversation=talk).record()))
    again = AgentState.from_record("npc", record).conversation
    assert (again.seen, again.fingerprints, again.archive, again.archive_cut) == (
        10_000,
        talk.fingerprints,
        talk.archive,
        talk.archive_cut,
    )
    del record["turns_seen"], record["archive_cut"]  # as written before the bound
    old = AgentState.from_record("npc", record)
    assert old.conversation.seen == len(talk.fingerprints) == old.stats().turns_seen
    assert old.conversation.archive_cut == 0


def _committed_state_bytes(folder, turns: int) -> int:
    """Bytes of the state file committed for an agent that received `turns` turns (archive kept)."""
    talk = Conversation()
    _receive(talk, _history(turns))
    store, key = AgentStore(folder), store_key("npc")
    store.acquire(key)
    record = {"format_version": FORMAT_VERSION, "model": "none", "config": {}}
    store.commit(key, {**record, **AgentState("npc", conversation=talk).record()}, None)
    store.release(key)
    version = json.loads((folder / "agents" / key / CURRENT).read_text())["version"]
    return (folder / "agents" / key / version / STATE).stat().st_size


def test_the_committed_state_is_flat_once_the_bound_is_reached(tmp_path):
    small, bound, large = (_committed_state_bytes(tmp_path / str(n), n) for n in (300, 3_000, 10_000))
    assert large < 1.5 * bound  # 10,000 turns: no larger than 3,000 beyond the batch the tails may hold
    assert bound > 3 * small  # the bound is not reached with 300 turns: the state grew until it was


@pytest.fixture
def small_bounds(monkeypatch):
    """Bounds of 16 turns, so a conversation on the tiny model passes them in a few dozen turns."""
    monkeypatch.setattr(conversation, "FINGERPRINTS_KEPT", 16)
    monkeypatch.setattr(conversation, "ARCHIVE_KEPT", 16)


def test_an_engine_past_the_bound_commits_and_reloads_its_count(make_engine, tmp_path, small_bounds):
    first, history = make_engine(store=tmp_path, probe_questions=0), _history(60)
    for end in range(10, 61, 10):  # the whole history resent every call, as LangChain does
        assert first.add_turns("npc", history[:end]) == history[end - 10 : end]
    assert first.stats("npc").turns_seen == 60 and len(first.agent("npc").fingerprints) <= 20
    first.close()
    assert AgentStore(tmp_path).record(store_key("npc"))["turns_seen"] == 60

    second, new = make_engine(store=tmp_path, probe_questions=0), _history(2, start=60)
    assert second.stats("npc").turns_seen == 60
    assert second.add_turns("npc", [*history, *new]) == new
    assert second.stats("npc").turns_seen == 62
    second.close()


def test_the_journal_past_the_bound_replays_only_turns_after_the_count(make_engine, tmp_path, small_bounds):
    first = make_engine(store=tmp_path, probe_questions=0)
    first.add_turns("npc", _history(40))
    first.close()
    store, key = AgentStore(tmp_path), store_key("npc")
    store.acquire(key)  # as a process that journaled three turns and died before its commit
    stale = {"role": "user", "content": "journaled before the last commit: already in it"}
    for seq, message in [(39, stale), (40, _history(1, 40)[0]), (41, _history(1, 41)[0])]:
        store.journal(key, seq, message)
    store.release(key)

    second = make_engine(store=tmp_path, probe_questions=0)
    window = second.window("npc")  # loads the agent: its last commit, then the journal after it
    assert window[-2:] == _history(2, start=40) and stale not in window
    assert second.stats("npc").turns_seen == 42
    second.close()


def test_an_old_record_without_the_count_loads_in_an_engine(make_engine, tmp_path):
    first = make_engine(store=tmp_path, probe_questions=0)
    first.add_turns("npc", _history(12))
    first.close()
    store, key = AgentStore(tmp_path), store_key("npc")
    stored = store.acquire(key)
    old = {name: value for name, value in stored.record.items() if name not in ("turns_seen", "archive_cut")}
    store.commit(key, old, None)  # its weights are kept from the previous version
    store.release(key)

    second = make_engine(store=tmp_path, probe_questions=0)
    assert second.stats("npc").turns_seen == 12
    assert second.add_turns("npc", _history(14)) == _history(2, start=12)
    assert second.stats("npc").turns_seen == 14
    second.close()


def test_turns_past_the_bound_are_journaled_by_their_count(make_engine, tmp_path, small_bounds, monkeypatch):
    engine = make_engine(store=tmp_path, probe_questions=0)
    engine.add_turns("npc", _history(40))

    def crash(*args, **kwargs):
        raise OSError("the disk went away")

    monkeypatch.setattr(AgentStore, "commit", crash)  # the turns stay journaled, as after a crash
    with pytest.raises(OSError):
        engine.add_turns("npc", _history(42))
    journal = tmp_path / "agents" / store_key("npc") / "journal"
    assert sorted(int(path.name[:8]) for path in journal.iterdir()) == [40, 41]


def test_an_agent_fed_only_by_add_turns_lets_go_of_the_turns_no_window_holds(make_engine):
    engine = make_engine(probe_questions=0, anchor_probes=0, kl_weight=0.0)  # the plain update: trimming is tested
    for message in _history(40):
        engine.add_turns("fed", [message])
        held = engine.agent("fed")
        sizes = [len(turn.tokens) for turn in held.turns]
        # what is kept: the widest window's turns, and those whose tokens are still pending (written later)
        assert sum(sizes) <= engine.config.window_tokens + len(held.pending) + max(sizes)
    assert held.stats.turns_seen == 40 and len(held.turns) < 20
