"""Each example runs briefly on the real default model (the session's engine, so the model loads once)."""

from __future__ import annotations

import pytest

from examples import agent_chain, assistant_session, npc_dialogue, npc_server

pytestmark = pytest.mark.real_model


@pytest.fixture
def engine(real_engine):
    """The shared engine with the examples' agents forgotten afterwards (state isolated per test)."""
    yield real_engine
    for agent_id in real_engine.agent_ids():
        if agent_id in {"bakery-assistant", "assistant", *npc_dialogue.NPCS}:
            real_engine.forget(agent_id)


def test_agent_chain(engine, capsys):
    stats = agent_chain.main(["--turns", "2", "--max-tokens", "6"], engine=engine)
    assert stats.turns_seen == 4 and "agent:" in capsys.readouterr().out


def test_npc_dialogue_npcs_share_one_model(engine):
    stats = npc_dialogue.main(["--turns", "2", "--max-tokens", "6"], engine=engine)
    assert set(stats) == set(npc_dialogue.NPCS) and all(s.turns_seen == 4 for s in stats.values())
    assert set(npc_dialogue.NPCS) <= set(engine.resident_ids())  # three adapters over the one shared base model


def test_npc_server_plays_the_npcs_over_http(engine, capsys):
    pytest.importorskip("fastapi")
    stats = npc_server.main(["--turns", "1", "--max-tokens", "6"], engine=engine)
    assert set(stats) == set(npc_dialogue.NPCS) and all(s["turns_seen"] == 2 for s in stats.values())
    assert all(engine.stats(npc).turns_seen == 2 for npc in npc_dialogue.NPCS)  # the server wrote into the engine
    assert "player: " in capsys.readouterr().out


def test_assistant_session_moves_turns_into_the_adapter(engine):
    stats = assistant_session.main(["--turns", "6", "--max-tokens", "6"], engine=engine)
    assert stats.turns_seen == 12 and stats.tokens_written > 0  # 6 exchanges outgrow one 128-token chunk


def test_examples_parse_turns_from_the_command_line(capsys):
    for module in (agent_chain, npc_dialogue, assistant_session, npc_server):  # in-process: a subprocess takes ~8 s
        with pytest.raises(SystemExit) as exit_:
            module.main(["--help"])
        assert exit_.value.code == 0 and "--turns" in capsys.readouterr().out
