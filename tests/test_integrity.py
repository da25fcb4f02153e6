"""A store that detects damage (issue 23, findings 3 and 9): every committed file is checked against the sha256
its version recorded; a damaged newest version falls back to the previous one (with a warning), two damaged ones
are a `DamagedAgentError` naming the agent, and partial version folders are removed when the agent is taken."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from templora_memory import DamagedAgentError
from templora_memory.adapter_files import WEIGHT_FILES
from templora_memory.agent import AgentState
from templora_memory.generation import Sampling
from templora_memory.store import CURRENT, STATE, store_key
from templora_memory.versions import DIGESTS

pytestmark = pytest.mark.usefixtures("one_thread")


def _turns(n: int, start: int = 0) -> list[dict]:
    return [{"role": ("user", "assistant")[i % 2], "content": f"turn {i} at the mill"} for i in range(start, start + n)]


def _pointer(root, agent_id: str) -> dict:
    return json.loads((root / "agents" / store_key(agent_id) / CURRENT).read_text())


def _flip(path, offset: int | None = None) -> None:
    """Flip one byte of the file (the middle one unless told)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _two_commits(make_engine, root):
    """An agent whose newest version's files are its own (`save` writes the weights afresh; unchanged weights are
    otherwise hard-linked from the version before, and damage to one such file is damage to both), left as a
    killed process leaves it; returns the previous version's stats and the adapter's weights."""
    engine = make_engine(store=root)
    engine.add_turns("npc", _turns(14))
    engine.save("npc")
    weights = [p.detach().clone() for p in engine.bank.parameters("npc")]
    engine.store.close()  # the lease is given back; nothing more is committed
    pointer = _pointer(root, "npc")
    assert pointer["previous"] and pointer["previous"] != pointer["version"]
    record = json.loads((root / "agents" / store_key("npc") / pointer["previous"] / STATE).read_text())
    return AgentState.from_record("npc", record).stats(), weights


@pytest.mark.parametrize("name", [STATE, *WEIGHT_FILES[:3]])
def test_a_flipped_byte_in_any_committed_file_falls_back_to_the_previous_version(make_engine, tmp_path, name, caplog):
    root = tmp_path / "store"
    older, weights = _two_commits(make_engine, root)
    folder = root / "agents" / store_key("npc") / _pointer(root, "npc")["version"]
    _flip(folder / name)
    with caplog.at_level(logging.WARNING, logger="templora_memory.store"):
        restarted = make_engine(store=root)
        assert restarted.stats("npc") == older  # read without loading: the older version's record
        restarted.add_turns("npc", [])  # loaded under its lease: the older version's files
    assert restarted.stats("npc").chunks_trained == older.chunks_trained
    assert all(torch.equal(a, b) for a, b in zip(restarted.bank.parameters("npc"), weights, strict=True))
    assert any("damaged" in r.message and name in r.message for r in caplog.records), caplog.text
    restarted.add_turns("npc", _turns(2, start=14))  # it goes on from there (replayed turns and new ones)
    restarted.close()
    assert not folder.exists()  # the damaged version is gone
    assert make_engine(store=root).stats("npc").turns_seen == 16


@pytest.mark.parametrize("name", [STATE, "adapter_model.safetensors", DIGESTS])
def test_two_damaged_versions_are_a_clear_error_naming_the_agent_never_a_reply(make_engine, tmp_path, name):
    root = tmp_path / "store"
    _two_commits(make_engine, root)
    pointer = _pointer(root, "npc")
    for version in (pointer["version"], pointer["previous"]):
        _flip(root / "agents" / store_key("npc") / version / name, offset=2)
    restarted = make_engine(store=root)
    with pytest.raises(DamagedAgentError, match=r"'npc'.*does not match its recorded sha256|'npc'.*damaged"):
        restarted.add_turns("npc", [])
    with pytest.raises(DamagedAgentError, match="npc"):
        list(restarted.respond("npc", [{"role": "user", "content": "Hi"}], Sampling(max_new_tokens=4)))
    restarted.add_turns("other", _turns(2))  # other agents are unaffected


def test_a_partial_version_folder_is_removed_when_the_agent_is_taken(make_engine, tmp_path):
    root = tmp_path / "store"
    engine = make_engine(store=root)
    engine.add_turns("npc", _turns(8))
    engine.close()
    folder = root / "agents" / store_key("npc")
    partial = folder / "v00000099-deadbeef"  # what SIGKILL mid-commit leaves: weights, no state, no digests
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"half")
    make_engine(store=root).add_turns("npc", _turns(1, start=8))
    assert not partial.exists()
    versions = sorted(p.name for p in folder.iterdir() if p.name.startswith("v"))
    assert len(versions) <= 2 and all((folder / v / DIGESTS).exists() for v in versions)
