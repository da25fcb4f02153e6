"""`python -m benchmarks scale --ray`: the Ray Serve deployment on this machine, with the store in an object store.

Two measures. First, agent switch latency from the object store: the in-process `scale` run (every call brings
its agent back from S3 and sends another one out, `--resident` adapters in RAM). Then, for each replica count
in `--replicas`, a local Ray instance serves the app (router + model replicas, the machine's CPUs split
between them) and `--clients` HTTP clients send `--requests` chat requests over `--agents` agents; requests/s
and latency p50 / p95 are printed per replica count, side by side in one run. Without `--store`, the object
store is a local S3 server (moto in server mode, the `test` extra) on a free loopback port.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import statistics
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from benchmarks import common
from templora_memory.config import config_from_args
from templora_memory.engine import MemoryEngine
from templora_memory.errors import TemploraError


def add_options(parser: argparse.ArgumentParser) -> None:
    """The `--ray` options of `scale`."""
    parser.add_argument("--ray", action="store_true", help="measure the Ray Serve deployment over an object store")
    parser.add_argument("--replicas", default="1,2", help="replica counts to compare with --ray (default: 1,2)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients with --ray (default: 4)")
    parser.add_argument("--requests", type=int, default=32, help="chat requests per replica count (default: 32)")
    parser.add_argument("--max-tokens", type=int, default=8, help="reply length cap with --ray (default: 8)")


def main(args: argparse.Namespace, messages: list[dict]) -> dict[str, Any]:
    """Switch latency from the object store, then the Ray rows; returns the results."""
    from benchmarks import scale

    with _object_store(args.store) as (store, env):
        config = config_from_args(args)
        engine = MemoryEngine(model=args.model, config=config, store=f"{store}/switch", max_resident=args.resident)
        switch = scale.run(engine, messages, args.agents, args.turns, args.quiet)
        engine.close()
        rows = [_ray_row(args, messages, f"{store}/ray-{n}", env, n) for n in _counts(args.replicas)]
    return {"store": "local S3 server (moto)" if args.store is None else args.store, "switch": switch, "ray": rows}


def table(result: dict[str, Any]) -> str:
    """Both measures as one Markdown table."""
    switch = result["switch"]
    rows = [
        ("object store", result["store"]),
        ("switch from the object store p50 / p95 (ms)", f"{switch['switch_ms']['p50']} / {switch['switch_ms']['p95']}"),
        ("resident call p50 / p95 (ms)", f"{switch['resident_call_ms']['p50']} / {switch['resident_call_ms']['p95']}"),
    ]
    for row in result["ray"]:
        rows.append((f"Ray, {row['replicas']} replica(s): requests/s", row["requests_per_second"]))
        rows.append((f"Ray, {row['replicas']} replica(s): latency p50 / p95 (s)", f"{row['p50_s']} / {row['p95_s']}"))
        rows.append((f"Ray, {row['replicas']} replica(s): errors, agents per replica", _spread(row)))
    return "\n".join(["| measure | value |", "| --- | --- |", *(f"| {name} | {value} |" for name, value in rows)])


def _spread(row: dict[str, Any]) -> str:
    return f"{row['errors']}, {sorted(row['agents_per_replica'].values())}"


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise TemploraError(f"--replicas {text!r}: give replica counts separated by commas, e.g. 1,2")
    return counts


def _ray_row(args: argparse.Namespace, messages: list[dict], store: str, env: dict[str, str], replicas: int) -> dict:
    """Serve on a fresh local Ray instance with `replicas` replicas and time the clients' requests."""
    try:
        import ray
        from ray import serve

        from templora_memory.server.ray_app import EngineSpec, application
    except ImportError as exc:
        raise TemploraError(str(exc) if "pip install" in str(exc) else f'{exc}: pip install -e ".[ray]"') from None
    cpus = os.cpu_count() or 2
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        spec = EngineSpec(store, args.resident, args.model, config_from_args(args))
        serve.run(application(spec, args.resident, replicas=replicas, replica_cpus=cpus / replicas), route_prefix="/")
        return {"replicas": replicas, "cpus": cpus, **_load(args, messages, f"http://127.0.0.1:{port}")}
    finally:
        serve.shutdown()
        ray.shutdown()


def _load(args: argparse.Namespace, messages: list[dict], url: str) -> dict[str, Any]:
    """One warm-up request per agent, then `--requests` requests from `--clients` threads, agents in turn."""
    agents = [f"agent-{i:03d}" for i in range(args.agents)]
    with httpx.Client(base_url=url, timeout=600) as client:
        homes = {agent: _chat(client, agent, messages[0], args.max_tokens)[1] for agent in agents}

        def one(index: int) -> tuple[float, str]:
            return _chat(client, agents[index % len(agents)], messages[index % len(messages)], args.max_tokens)

        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(one, range(args.requests)))
        elapsed = time.perf_counter() - started
    seconds = sorted(s for s, status in results if status != "error")
    per_replica: dict[str, int] = {}
    for home in homes.values():
        per_replica[home] = per_replica.get(home, 0) + 1
    return {
        "requests": args.requests,
        "clients": args.clients,
        "requests_per_second": round(len(seconds) / elapsed, 2),
        "p50_s": round(statistics.median(seconds), 2) if seconds else None,
        "p95_s": round(statistics.quantiles(seconds, n=20)[18], 2) if len(seconds) > 1 else None,
        "errors": sum(status == "error" for _, status in results),
        "agents_per_replica": per_replica,
    }


def _chat(client: httpx.Client, agent: str, message: dict, max_tokens: int) -> tuple[float, str]:
    """One chat request; its seconds and the replica that answered ("error" if it failed)."""
    body = {"model": "m", "messages": [{"role": "user", "content": message["content"]}], "max_tokens": max_tokens}
    began = time.perf_counter()
    response = client.post("/v1/chat/completions", json=body, headers={"X-Agent-Id": agent})
    replica = response.headers.get("x-templora-replica", "?") if response.status_code == 200 else "error"
    return time.perf_counter() - began, replica


@contextlib.contextmanager
def _object_store(store: str | None) -> Iterator[tuple[str, dict[str, str]]]:
    """The store URL (a fresh prefix) and the environment replicas need; a local S3 server if none was given."""
    env = {"PYTHONPATH": str(common.REPO), "TEMPLORA_CACHE_DIR": os.environ.get("TEMPLORA_CACHE_DIR", "")}
    env = {name: value for name, value in env.items() if value}
    if store is not None:
        yield f"{store.rstrip('/')}/{uuid.uuid4().hex[:8]}", env
        return
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise TemploraError('without --store the benchmark runs a local S3 server: pip install -e ".[test]"') from None
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the S3 server's request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    s3["AWS_ENDPOINT_URL_S3"] = f"http://{host}:{port}"
    saved = {name: os.environ.get(name) for name in s3}
    os.environ.update(s3)
    try:
        import s3fs

        s3fs.S3FileSystem(skip_instance_cache=True).call_s3("create_bucket", Bucket="templora-bench")
        yield "s3://templora-bench", {**env, **s3}
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
        server.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
