"""A store that goes away (issue 23, findings 2 and 6): requests get a 503 with a code and Retry-After, lease
renewal lives through the outage, an agent whose lease could not be renewed is not served, and once the store is
back one process, never two, serves the agent. Runs on its own S3 server (moto), stopped and restarted."""

from __future__ import annotations

import logging
import time
import uuid

import pytest

from templora_memory import StoreUnavailableError
from templora_memory.message import fingerprint
from tests.race_worker import message
from tests.test_lease import _finish, _start, _stored_turns, _wait_for

httpx = pytest.importorskip("httpx")
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.timeout(400)]
BUCKET = "templora-outage"


class Outage:
    """An S3 server (moto) on a fixed loopback port that can be stopped and started again with its objects."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        self.host, self.port = self._server.get_host_and_port()
        self.endpoint = f"http://{self.host}:{self.port}"
        self.up = True

    def stop(self) -> None:
        self._server.stop()
        self.up = False

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        self.up = True


@pytest.fixture
def outage(monkeypatch):
    """Its own S3 server (the shared one must stay up), boto pointed at it, failing fast (one attempt)."""
    import s3fs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = Outage()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": server.endpoint,
        "AWS_MAX_ATTEMPTS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem(skip_instance_cache=True).call_s3("create_bucket", Bucket=BUCKET)
    server.url = f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"
    yield server
    if server.up:
        server.stop()


def test_an_unreachable_store_is_a_503_with_retry_after_and_serving_resumes(make_engine, start_server, outage):
    engine = make_engine(store=outage.url)
    server = start_server(engine)
    body = {"messages": [{"role": "user", "content": "Hello"}]}
    assert httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"x-agent-id": "a"}).status_code == 200
    outage.stop()
    for response in (
        httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"x-agent-id": "b"}, timeout=60),
        httpx.get(f"{server.url}/v1/agents", timeout=60),
        httpx.get(f"{server.url}/v1/agents/b", timeout=60),
    ):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "store_unavailable" and int(response.headers["retry-after"]) > 0
        assert outage.endpoint not in response.text and outage.url not in response.text
    outage.start()
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"x-agent-id": "b"}, timeout=60)
    assert reply.status_code == 200 and engine.stats("b").turns_seen == 2
    engine.close()  # while the store is up: leases given back


def test_lease_renewal_survives_an_outage_and_an_unrenewed_agent_is_not_served(make_engine, outage, caplog):
    from templora_memory import AgentStore

    engine = make_engine(store=AgentStore(outage.url, lease_seconds=2.0))
    engine.add_turns("npc", [{"role": "user", "content": "turn 0"}])
    outage.stop()
    with caplog.at_level(logging.WARNING, logger="templora_memory.lease"):
        time.sleep(2.5)  # past the lease: renewal failed all along
        with pytest.raises(StoreUnavailableError, match="could not renew its lease"):
            engine.add_turns("npc", [{"role": "user", "content": "turn 1"}])
    renewals = [r for r in caplog.records if "could not renew the lease" in r.getMessage()]
    assert len(renewals) >= 2 and "EndpointConnectionError" in renewals[-1].getMessage()
    outage.start()
    deadline = time.monotonic() + 30
    while True:  # the renewal thread is alive: it renews, and the agent is served again
        try:
            engine.add_turns("npc", [{"role": "user", "content": "turn 1"}])
            break
        except StoreUnavailableError:
            assert time.monotonic() < deadline, "renewal never resumed"
            time.sleep(0.2)
    assert engine.stats("npc").turns_seen == 2
    engine.close()


def test_after_an_outage_one_process_serves_the_agent_never_two(make_engine, outage, tmp_path):
    steps = ["take", "write:2", "signal:A-holds", "await:down", "write:1", "signal:A-refused", "await:B-done"]
    first = _start(tmp_path, outage.url, "A", [*steps, "write:1", "close"], lease_seconds=2.0)
    _wait_for(tmp_path / "A-holds", first)
    outage.stop()
    time.sleep(2.5)  # A's lease runs out while the store is down
    (tmp_path / "down").touch()
    _wait_for(tmp_path / "A-refused", first)
    outage.start()
    second = _start(tmp_path, outage.url, "B", ["take", "write:1", "close", "signal:B-done"], lease_wait=4.0)
    b, a = _finish(tmp_path, second, "B"), _finish(tmp_path, first, "A")

    assert [w[1] for w in a["writes"][:3]] == ["ok", "ok", "StoreUnavailableError"]  # not served while lapsed
    a_after, b_after = [w for w in a["writes"][3:] if w[1] == "ok"], [w for w in b["writes"] if w[1] == "ok"]
    assert bool(a_after) != bool(b_after), (a, b)  # after the outage: A renewed in time or B took over, not both
    expected = [message("A", i) for i in range(2)]
    expected += [message("A", i) for i, _ in a_after] + [message("B", i) for i, _ in b_after]
    assert _stored_turns(make_engine, outage.url) == [fingerprint(m) for m in expected]
