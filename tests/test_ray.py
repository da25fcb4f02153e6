"""Ray Serve on this machine: a local Ray instance, 2 model replicas, the store on the local S3 server (moto).

Requests for 6 agents spread over both replicas and each agent's requests land where its adapter is; an agent
whose replica is killed continues on the other one from its last commit with bit-identical log-probabilities;
no turn is lost or duplicated. Bounded for CI: one Ray instance for the module, about a minute and a half.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from pathlib import Path

import httpx
import pytest

from templora_memory.errors import AgentBusyError
from templora_memory.message import fingerprint
from templora_memory.store import AgentStore, store_key

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
from templora_memory.server.ray_app import RETRIES  # noqa: E402  (needs ray)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]
REPO = Path(__file__).resolve().parents[1]
AGENTS = [f"npc-{i}" for i in range(6)]
ROUNDS = 3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    """Ray (2 CPUs, no dashboard) serving the app with 2 replicas over an S3 store; shut down after the module."""
    from ray import serve

    from templora_memory.server import ray_app
    from tests.ray_engine import tiny_engine

    env = {
        "PYTHONPATH": str(REPO),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
        "OMP_NUM_THREADS": "1",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        url = f"s3://templora-ray/{os.getpid()}"
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        if not fs.exists("templora-ray"):
            fs.call_s3("create_bucket", Bucket="templora-ray")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
        port = _free_port()
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            factory = functools.partial(tiny_engine, url, 4)
            serve.run(ray_app.application(factory, max_resident=4, replicas=2, replica_cpus=1), route_prefix="/")
            yield {
                "url": f"http://127.0.0.1:{port}",
                "store": url,
                "handle": serve.get_deployment_handle("AgentReplica", app_name="default"),
            }
        finally:
            serve.shutdown()
            ray.shutdown()


def _chat(client: httpx.Client, agent: str, text: str) -> httpx.Response:
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    response = client.post("/v1/chat/completions", json=body, headers={"X-Agent-Id": agent})
    assert response.status_code == 200, response.text
    return response


def _user_turns(store_url: str, agent: str) -> list[str]:
    """Fingerprints of the user turns of the agent's last commit (every other turn: each call adds a reply),
    read from the store directly."""
    fingerprints = AgentStore(store_url).record(store_key(agent))["fingerprints"]
    return fingerprints[0::2]


def _said(*texts: str) -> list[str]:
    return [fingerprint({"role": "user", "content": text}) for text in texts]


def _inspect(cluster, agent: str, continuation: list[int]) -> dict:
    """The replica's view of the agent. A handle learns where an agent lives from Ray's controller, a moment after
    it loads, so a call may first reach the other replica, which refuses it (the lease): retried as the router does."""
    handle = cluster["handle"].options(multiplexed_model_id=agent)
    for attempt in range(RETRIES - 1):
        try:
            return handle.inspect.remote(continuation).result(timeout_s=120)
        except AgentBusyError:
            time.sleep(0.25 * (attempt + 1))
    return handle.inspect.remote(continuation).result(timeout_s=120)


def test_agents_spread_over_replicas_and_a_moved_agent_continues_exactly(cluster):
    client = httpx.Client(base_url=cluster["url"], timeout=120)
    where: dict[str, set[str]] = {agent: set() for agent in AGENTS}
    for turn in range(ROUNDS):
        for agent in AGENTS:
            response = _chat(client, agent, f"{agent} round {turn}")
            where[agent].add(response.headers["x-templora-replica"])
    assert all(len(replicas) == 1 for replicas in where.values()), where  # each agent stays where its adapter is
    assert len(set().union(*where.values())) == 2, where  # and the agents spread over both replicas
    for agent in AGENTS:  # no turn lost, none duplicated, in order
        assert _user_turns(cluster["store"], agent) == _said(*(f"{agent} round {t}" for t in range(ROUNDS)))
        assert client.get(f"/v1/agents/{agent}").json()["turns_seen"] == 2 * ROUNDS

    moved = AGENTS[0]
    continuation = list(range(5, 25))
    before = _inspect(cluster, moved, continuation)
    assert before["replica"] == next(iter(where[moved]))
    from ray.util import list_named_actors

    victim = next(
        a for a in list_named_actors(all_namespaces=True) if a["name"].endswith(f"AgentReplica#{before['replica']}")
    )
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)

    after = _inspect(cluster, moved, continuation)  # loads on a live replica from the last commit in the store
    assert after["replica"] != before["replica"]
    assert after["logprobs"] == before["logprobs"]  # bit-identical: the same floats
    assert after["stats"] == before["stats"]
    response = _chat(client, moved, f"{moved} after the move")
    assert response.headers["x-templora-replica"] == after["replica"]
    expected = _said(*(f"{moved} round {t}" for t in range(ROUNDS)), f"{moved} after the move")
    assert _user_turns(cluster["store"], moved) == expected
    assert client.get(f"/v1/agents/{moved}").json()["turns_seen"] == 2 * ROUNDS + 2


def test_the_router_reads_the_agent_as_the_server_does():
    from templora_memory.server.ray_app import agent_of

    def call(path, headers=(), body=b"", raw=None):
        raw_path = (raw or path).encode()
        return {
            "path": path,
            "raw_path": raw_path,
            "headers": [(k.encode(), v.encode()) for k, v in headers],
            "body": body,
        }

    assert agent_of(call("/v1/chat/completions", [("X-Agent-Id", "npc%207")])) == "npc 7"
    assert agent_of(call("/v1/chat/completions", body=b'{"user": "bard", "messages": []}')) == "bard"
    assert agent_of(call("/v1/agents/npc 7/absorb", raw="/v1/agents/npc%207/absorb")) == "npc 7"
    assert agent_of(call("/v1/models")) is None and agent_of(call("/v1/agents")) is None
    assert agent_of(call("/v1/chat/completions", [("X-Agent-Id", "..%2Fetc")])) is None  # the replica answers 400


def test_serve_ray_needs_a_shared_store_and_a_bound(capsys):
    from templora_memory import cli

    assert cli.main(["serve", "--ray", "--max-resident", "4"]) == 2
    assert "--ray needs --store" in capsys.readouterr().err


def test_serve_ray_gives_each_replica_the_gpus_asked_for(monkeypatch, tmp_path):
    from templora_memory import cli
    from templora_memory.server import ray_app

    started = {}
    monkeypatch.setattr(ray_app, "run", lambda spec, settings, replicas, **options: started.update(options))
    argv = ["serve", "--ray", "--store", str(tmp_path), "--max-resident", "4", "--gpus-per-replica", "0.5"]
    cli.main([*argv, "--device", "cuda"])
    assert started["gpus"] == 0.5
    app = ray_app.application(lambda: None, max_resident=4, replicas=2, replica_gpus=0.5)
    replica = app._bound_deployment.init_args[0]  # the router is bound over the replica deployment
    assert replica._bound_deployment.ray_actor_options == {"num_cpus": 1.0, "num_gpus": 0.5}
