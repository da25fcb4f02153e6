"""The routes that inspect and correct an agent's memory (issue 27), on the tiny model through plain `httpx`: the
ledger paged, turns forgotten one by one and by text, a turn corrected, the recall readout; the API key guards them
all."""

from __future__ import annotations

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from tests.rebuild_worker import SECRET, talk  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
KEY = {"authorization": "Bearer s3cret"}


def test_the_ledger_routes_page_forget_and_read_out_behind_the_key(make_engine, start_server, tmp_path):
    engine = make_engine(store=tmp_path / "store")
    engine.add_turns("npc", [{"role": "user", "content": "My daughter is called Mira."}, *talk(1, 24, secret_at=6)])
    engine.wait("npc")
    server = start_server(engine, api_key="s3cret")
    agent = f"{server.url}/v1/agents/npc"

    assert httpx.get(f"{agent}/turns").status_code == 401
    assert httpx.delete(f"{agent}/turns/1").status_code == 401
    assert httpx.get(f"{agent}/recalls").status_code == 401
    page = httpx.get(f"{agent}/turns", params={"limit": 10}, headers=KEY).json()
    assert [t["id"] for t in page["data"]] == list(range(1, 11)) and page["has_more"] and page["last_id"] == 10
    rest = httpx.get(f"{agent}/turns", params={"after": 10, "limit": 100}, headers=KEY).json()
    assert rest["data"][0]["id"] == 11 and not rest["has_more"] and rest["data"][0]["object"] == "agent.turn"

    recalls = httpx.get(f"{agent}/recalls", headers=KEY, timeout=60).json()
    assert [r["span"] for r in recalls["data"]] == ["Mira", "6", "4471"]  # the secret's turn states two things
    assert {r["status"] for r in recalls["data"]} <= {"answered", "likely", "lost"} and not recalls["rebuilding"]

    one = httpx.delete(f"{agent}/turns/1", headers=KEY, timeout=60)
    assert one.status_code == 200 and one.json()["deleted"] is True and one.json()["rebuilding"] is True
    assert httpx.get(agent, headers=KEY).json()["rebuilding"] in (True, False)  # the stats say so
    gone = httpx.delete(f"{agent}/turns/1", headers=KEY, timeout=60)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "turn_not_found"
    matched = httpx.delete(f"{agent}/turns", params={"matching": SECRET}, headers=KEY, timeout=60).json()
    assert matched["deleted"] == [7] and matched["object"] == "agent.turns.deleted"
    listed = httpx.get(f"{agent}/turns", headers=KEY).json()["data"]
    assert [t["id"] for t in listed] == [i for i in range(2, 25) if i != 7]
    assert httpx.delete(f"{agent}/turns", params={"matching": "nothing like it"}, headers=KEY).json()["deleted"] == []

    assert httpx.patch(f"{agent}/turns/2", json={"content": "It was turn one."}).status_code == 401
    fixed = httpx.patch(f"{agent}/turns/2", json={"content": "It was turn one."}, headers=KEY, timeout=60).json()
    assert fixed["object"] == "agent.turn.corrected" and fixed["deleted"] == [2] and fixed["added"] == 25
    newest = httpx.get(f"{agent}/turns", params={"after": 24}, headers=KEY).json()["data"]
    assert [(t["id"], t["role"], t["content"]) for t in newest] == [(25, "assistant", "It was turn one.")]


@pytest.mark.parametrize(
    ("method", "path", "params", "status", "param"),
    [
        ("get", "/v1/agents/npc/turns", {"limit": "0"}, 400, "limit"),
        ("get", "/v1/agents/npc/turns", {"limit": "many"}, 400, "limit"),
        ("get", "/v1/agents/npc/turns", {"after": "-1"}, 400, "after"),
        ("delete", "/v1/agents/npc/turns/first", {}, 400, "turn_id"),
        ("delete", "/v1/agents/npc/turns", {}, 400, "matching"),
        ("delete", "/v1/agents/npc/turns", {"matching": "  "}, 400, "matching"),
        ("get", "/v1/agents/npc/recalls", {"limit": "9999"}, 400, "limit"),
        ("get", "/v1/agents/ghost/turns", {}, 404, "agent_id"),
        ("delete", "/v1/agents/ghost/turns/1", {}, 404, "agent_id"),
        ("get", "/v1/agents/ghost/recalls", {}, 404, "agent_id"),
        ("delete", "/v1/agents/npc/turns/99", {}, 404, "turn_id"),
        ("patch", "/v1/agents/npc/turns/99", {"content": "new"}, 404, "turn_id"),
        ("patch", "/v1/agents/npc/turns/x", {"content": "new"}, 400, "turn_id"),
        ("patch", "/v1/agents/npc/turns/1", {"content": ""}, 400, "content"),
        ("patch", "/v1/agents/npc/turns/1", {"content": 5}, 400, "content"),
        ("patch", "/v1/agents/npc/turns/1", {"text": "new"}, 400, "content"),
        ("patch", "/v1/agents/ghost/turns/1", {"content": "new"}, 404, "agent_id"),
    ],
)
def test_bad_requests_name_what_was_wrong(make_engine, start_server, method, path, params, status, param):
    engine = make_engine()
    engine.add_turns("npc", talk(0, 2))
    server = start_server(engine)
    body = {"json": params} if method == "patch" else {"params": params}
    response = httpx.request(method, f"{server.url}{path}", **body, timeout=60)
    assert response.status_code == status and response.json()["error"]["param"] == param, response.text
