"""`python -m benchmarks serve`: N concurrent HTTP clients over M agents, through the OpenAI-compatible server.

The server runs in this process on a free loopback port over the default model. Each client sends streamed
chat requests (a persona system message and one new user line; the agent's window supplies the rest) for the
agents in turn, so requests for one agent also arrive at the same time and the server must serialise them.
Prints requests/s, completion tokens/s, p50/p95 latency and time to first token, 429s (retried after
Retry-After) and 5xx; then checks every agent's memory: each line sent and each reply received is there exactly
once, each reply right after its line. Then, in the same run, the same load with 1, 2, 4, 8 clients each
talking to an agent of its own (`--concurrency`): aggregate completion tokens/s against one client's, as
replies running at once are decoded in one batch (the memory checked the same way). Last, the HTTP overhead
per reply: the same replies generated in-process (`engine.respond`) and over HTTP, alternating, on the idle
server; and, less noisy on a shared machine, each HTTP reply's time beyond the engine's own inside the same
request (the server's `Server-Timing` header). Bounded by --requests and --max-seconds; loopback only. The
clients are the standard library's `http.client`, so the figures are the server's, not a client library's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.client import HTTPConnection, HTTPResponse
from typing import Any
from urllib.parse import urlsplit

from benchmarks import common
from templora_memory.config import add_config_options
from templora_memory.engine import MemoryEngine
from templora_memory.errors import InvalidInputError
from templora_memory.generation import CHAT_REPETITION_PENALTY, Sampling
from templora_memory.message import fingerprint

PERSONA = "You are {name}, a villager of Oakridge. Answer the traveller in one short sentence."
LINES = [
    "Good morning! I'm a traveller called Ivo.",
    "What can you tell me about the old castle on the hill?",
    "I found a silver key near the well.",
    "Where can I buy bread around here?",
    "Do you remember my name?",
]


def add_parser(subparsers) -> None:
    """Register `serve`."""
    parser = subparsers.add_parser("serve", help="N HTTP clients over M agents: throughput, latency, memory intact")
    parser.add_argument("--out", default="results/serve.json", help="JSON results (default: results/serve.json)")
    parser.add_argument(
        "--model", default=None, help="base model: local dir, cached HF id or .gguf (default: embedded)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_config_options(parser, chunk_tokens=128, train_context_tokens=128, window_tokens=512)
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (default: 4)")
    parser.add_argument("--agents", type=int, default=3, help="agents the clients talk to (default: 3)")
    parser.add_argument("--requests", type=int, default=24, help="chat requests in all (default: 24)")
    parser.add_argument("--max-tokens", type=int, default=24, help="reply length cap (default: 24)")
    parser.add_argument("--max-seconds", type=float, default=600, help="stop sending after this long (default: 600)")
    parser.add_argument("--workers", type=int, default=8, help="the server's worker threads (default: 8)")
    parser.add_argument("--batch-rows", type=int, default=8, help="replies decoded in one batch at most (default: 8)")
    parser.add_argument(
        "--concurrency", default="1,2,4,8", help="clients (each with its own agent) of the sweep (default: 1,2,4,8)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="requests per agent in the sweep (default: 2)")
    parser.add_argument("--max-queue", type=int, default=64, help="the server's queue bound (default: 64)")
    parser.add_argument("--overhead-replies", type=int, default=6, help="replies timed each way (default: 6)")
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark from parsed options, write JSON, print the table."""
    from templora_memory.server import ServerSettings

    started = time.perf_counter()
    if min(args.clients, args.agents, args.requests, args.max_tokens, args.overhead_replies) < 1:
        raise InvalidInputError("--clients, --agents, --requests, --max-tokens and --overhead-replies must be >= 1")
    engine = common.engine_from_args(args)
    settings = ServerSettings(workers=args.workers, batch_rows=args.batch_rows, max_queue=args.max_queue)
    result = run(engine, settings, args.clients, args.agents, args.requests, args.max_tokens, args.max_seconds)
    counts = [int(n) for n in args.concurrency.split(",") if n.strip()]
    result["concurrency"] = sweep(engine, settings, counts, args.rounds, args.max_tokens, args.max_seconds)
    result["overhead"] = overhead(engine, settings, args.overhead_replies, args.max_tokens)
    result["run"] = common.run_info(engine, args, started)
    common.write_json(args.out, result)
    print(table(result))
    return result


def run(
    engine: MemoryEngine,
    settings,
    clients: int,
    agents: int,
    requests: int,
    max_tokens: int,
    max_seconds: float,
    prefix: str = "villager",
) -> dict[str, Any]:
    """The load: `requests` streamed requests from `clients` threads over `agents` agents (named `prefix`-i); then
    the memory check."""
    from templora_memory.server import BackgroundServer

    plan = [(f"{prefix}-{i % agents}", f"{LINES[(i // agents) % len(LINES)]} (line {i})") for i in range(requests)]
    calls: list[dict[str, Any]] = []
    with BackgroundServer(engine, settings) as server:
        pending, lock = list(reversed(plan)), threading.Lock()
        deadline = time.monotonic() + max_seconds
        began = time.perf_counter()
        threads = [
            threading.Thread(target=_client, args=(server.url, pending, lock, calls, max_tokens, deadline))
            for _ in range(clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
    done = [c for c in calls if c["status"] == 200]
    statuses = Counter(c["status"] for c in calls)
    return {
        "clients": clients,
        "agents": agents,
        "requests_planned": requests,
        "requests_done": len(done),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(done) / elapsed, 3),
        "completion_tokens": sum(c["tokens"] for c in done),
        "tokens_per_s": round(sum(c["tokens"] for c in done) / elapsed, 2),
        "chunks_written": sum(engine.stats(a).chunks_trained for a in {c["agent"] for c in done}),
        "latency_s": _quantiles([c["seconds"] for c in done]),
        "ttft_s": _quantiles([c["ttft"] for c in done if c["ttft"] is not None]),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "http_429": sum(c["retries"] for c in calls),
        "http_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "memory": check_memory(engine, done),
    }


def _client(url: str, pending: list, lock: threading.Lock, calls: list, max_tokens: int, deadline: float) -> None:
    """One client: take the next planned request until none is left or time is up."""
    while time.monotonic() < deadline:
        with lock:
            if not pending:
                return
            agent_id, line = pending.pop()
        calls.append(_chat(url, agent_id, line, max_tokens, deadline))


def _chat(url: str, agent_id: str, line: str, max_tokens: int, deadline: float) -> dict[str, Any]:
    """One streamed request (retried after Retry-After while the queue is full): status, timings, the reply."""
    body = {
        "model": "default",
        "messages": [{"role": "system", "content": PERSONA.format(name=agent_id)}, {"role": "user", "content": line}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    retries = 0
    while True:
        begun, ttft, pieces, failed, tokens = time.perf_counter(), None, [], False, 0
        with _posted(url, body, agent_id) as response:
            if response.status == 429 and time.monotonic() < deadline:
                retries += 1
                time.sleep(float(response.getheader("Retry-After", "1")))
                continue
            for raw in response:  # server-sent events, one line each, as they arrive
                event = raw.decode().strip()
                if not event.startswith("data: {"):
                    continue
                chunk = json.loads(event.removeprefix("data: "))
                failed |= "error" in chunk
                tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
                piece = chunk["choices"][0]["delta"].get("content") if chunk.get("choices") else None
                if piece:
                    ttft = ttft if ttft is not None else time.perf_counter() - begun
                    pieces.append(piece)
            status = 500 if failed else response.status
        reply = "".join(pieces) if status == 200 else None
        return {**_call(agent_id, line, status, begun, ttft, reply, retries), "tokens": tokens}


@contextlib.contextmanager
def _posted(url: str, body: dict[str, Any], agent_id: str) -> Iterator[HTTPResponse]:
    """POST a chat request for the agent on a connection of its own (a game's requests are minutes apart: no
    keep-alive lasts that long); the response is read inside the block, the connection closed after it."""
    address = urlsplit(url)
    http = HTTPConnection(address.hostname, address.port, timeout=600)
    try:
        headers = {"Content-Type": "application/json", "X-Agent-Id": agent_id}
        http.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(), headers=headers)
        yield http.getresponse()
    finally:
        http.close()


def sweep(
    engine: MemoryEngine, settings, counts: list[int], rounds: int, max_tokens: int, max_seconds: float
) -> dict[str, Any]:
    """The load with n clients for each n in `counts`, each client talking to an agent of its own (new agents for
    every n, created before timing: a game's NPCs exist before they talk), `rounds` requests each: aggregate
    completion tokens/s, against one client's, latency, and the mean replies per batched decoding step."""
    rows = {}
    for n in counts:
        for i in range(n):
            engine.agent(f"sweep{n}-{i}")
        steps, stepped = engine.replies.steps, engine.replies.rows_stepped
        load = run(engine, settings, n, n, n * rounds, max_tokens, max_seconds, prefix=f"sweep{n}")
        rows[str(n)] = {key: load[key] for key in ("tokens_per_s", "latency_s", "chunks_written", "memory")}
        batched_steps = engine.replies.steps - steps  # none: every reply ran alone, one row a step
        rows[str(n)]["rows_per_step"] = (
            round((engine.replies.rows_stepped - stepped) / batched_steps, 2) if batched_steps else 1.0
        )
    single = rows[str(min(counts))]["tokens_per_s"] if counts else 0
    for row in rows.values():
        row["times_one_client"] = round(row["tokens_per_s"] / single, 2) if single else None
    return rows


def _call(agent_id, line, status, begun, ttft, reply, retries) -> dict[str, Any]:
    """What one request gave: its agent and line, status, latency, time to first token, reply and 429 retries."""
    call = {"agent": agent_id, "line": line, "status": status, "seconds": time.perf_counter() - begun}
    return {**call, "ttft": ttft, "reply": reply, "retries": retries}


def check_memory(engine: MemoryEngine, done: list[dict[str, Any]]) -> dict[str, int]:
    """Each answered line and its reply in the agent's memory exactly once, each reply right after its line.

    Turns are compared as multisets of fingerprints (two replies may read the same); `extra` counts turns in
    memory that no answered request sent (a refused request may have written its line first).
    """
    expected = lost = duplicated = extra = out_of_order = 0
    for agent_id in sorted({c["agent"] for c in done}):
        kept = list(engine.agent(agent_id).fingerprints)
        pairs = [
            (
                fingerprint({"role": "user", "content": c["line"]}),
                fingerprint({"role": "assistant", "content": c["reply"]}),
            )
            for c in done
            if c["agent"] == agent_id
        ]
        wanted, have = Counter(turn for pair in pairs for turn in pair), Counter(kept)
        expected += sum(wanted.values())
        lost += sum((wanted - have).values())
        duplicated += sum(max(0, have[turn] - n) for turn, n in wanted.items())
        extra += sum(n for turn, n in have.items() if turn not in wanted)
        out_of_order += sum(
            asked in kept and kept[kept.index(asked) + 1 :][:1] != [answered] for asked, answered in pairs
        )
    return {
        "turns_expected": expected,
        "lost": lost,
        "duplicated": duplicated,
        "extra": extra,
        "out_of_order": out_of_order,
    }


def overhead(engine: MemoryEngine, settings, replies: int, max_tokens: int) -> dict[str, Any]:
    """The same reply in-process and over HTTP, in alternating order (a fresh agent each, so the prompt and the
    greedy reply are equal); also each HTTP reply's time beyond the engine's own, from its Server-Timing header."""
    from templora_memory.server import BackgroundServer

    messages = [{"role": "system", "content": PERSONA.format(name="Tilda")}, {"role": "user", "content": LINES[1]}]
    sampling = Sampling(max_new_tokens=max_tokens, repetition_penalty=CHAT_REPETITION_PENALTY)
    direct, over_http, beyond_engine, same = [], [], [], True
    with BackgroundServer(engine, settings) as server:
        for i in range(replies):
            for way in ("direct", "http") if i % 2 == 0 else ("http", "direct"):
                begun = time.perf_counter()
                if way == "direct":
                    text = engine.respond(f"overhead-direct-{i}", messages, sampling).result().content
                    direct.append(time.perf_counter() - begun)
                    continue
                body = {"messages": messages, "max_tokens": max_tokens}
                with _posted(server.url, body, f"overhead-http-{i}") as response:
                    answer, timing = json.loads(response.read()), response.getheader("Server-Timing")
                over_http.append(time.perf_counter() - begun)
                beyond_engine.append(over_http[-1] - _engine_seconds(timing))
                content = answer["choices"][0]["message"]["content"]
            same &= content == text
    for i in range(replies):
        engine.forget(f"overhead-direct-{i}")
        engine.forget(f"overhead-http-{i}")
    in_process, paired = (
        statistics.median(direct),
        statistics.median(h - d for h, d in zip(over_http, direct, strict=True)),
    )
    http_layer = statistics.median(beyond_engine)
    return {
        "replies": replies,
        "same_replies": same,
        "in_process_s": round(in_process, 4),
        "http_s": round(statistics.median(over_http), 4),
        "paired_overhead_ms": round(1000 * paired, 1),
        "paired_overhead_pct": round(100 * paired / in_process, 2),
        "http_layer_ms": round(1000 * http_layer, 2),
        "http_layer_pct": round(100 * http_layer / in_process, 3),
    }


def _engine_seconds(server_timing: str) -> float:
    """The engine's part of a request, from `Server-Timing: queue;dur=..., engine;dur=...` (milliseconds)."""
    parts = dict(part.strip().split(";dur=") for part in server_timing.split(","))
    return float(parts["engine"]) / 1000


def _quantiles(values: list[float]) -> dict[str, float | None]:
    """Median and 95th percentile, rounded to milliseconds."""
    if not values:
        return {"p50": None, "p95": None}
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 3), "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 3)}


def table(result: dict[str, Any]) -> str:
    """The figures as a markdown table."""
    memory, cost = result["memory"], result["overhead"]
    latency, ttft = result["latency_s"], result["ttft_s"]
    rows = [
        ("clients x agents", f"{result['clients']} x {result['agents']}"),
        ("requests done / planned", f"{result['requests_done']} / {result['requests_planned']}"),
        ("requests/s", result["requests_per_s"]),
        ("completion tokens/s (chunks written)", f"{result['tokens_per_s']} ({result['chunks_written']})"),
        ("latency p50 / p95 (s)", f"{latency['p50']} / {latency['p95']}"),
        ("time to first token p50 / p95 (s)", f"{ttft['p50']} / {ttft['p95']}"),
        ("429 (retried) / 5xx", f"{result['http_429']} / {result['http_5xx']}"),
        (
            "turns lost / duplicated / extra / out of order",
            "{lost} / {duplicated} / {extra} / {out_of_order}".format(**memory),
        ),
        ("reply in-process / over HTTP (s)", f"{cost['in_process_s']} / {cost['http_s']}"),
        ("same reply both ways", cost["same_replies"]),
        ("HTTP overhead per reply, paired", f"{cost['paired_overhead_ms']} ms ({cost['paired_overhead_pct']} %)"),
        ("HTTP layer per reply (beyond the engine)", f"{cost['http_layer_ms']} ms ({cost['http_layer_pct']} %)"),
    ]
    for n, row in result.get("concurrency", {}).items():
        memory = row["memory"]
        rows.append(
            (
                f"{n} client(s), an agent each: tokens/s (× one client), p50 (s), rows/step, chunks, lost/doubled",
                f"{row['tokens_per_s']} ({row['times_one_client']}×), {row['latency_s']['p50']}, "
                f"{row['rows_per_step']}, {row['chunks_written']}, {memory['lost']}/{memory['duplicated']}",
            )
        )
    return "\n".join(["| measure | value |", "| --- | --- |", *(f"| {name} | {value} |" for name, value in rows)])
