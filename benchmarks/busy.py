"""`python -m benchmarks busy`: one agent's ~100 KB request against another agent's replies, then SIGTERM (issue 23).

`templora-memory serve` runs in a subprocess over the default model and a store folder. Agent "quiet" first gets
`--replies` short replies on the idle server: its latency alone. Then agent "flood" sends one request whose
history is ~`--kib` KiB of turns; while that request writes synchronously (at most `sync_write_tokens`) and,
after its reply, while its backlog is written in the background, "quiet" asks again, one request after another:
the ratio of its median latency to the idle one is the figure (the issue asks for at most 2x). Then SIGTERM while
the backlog trains: seconds to exit against `--shutdown-timeout`. A server restarted on the same store counts the
turns each agent kept against those sent: none may be lost or doubled.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks import common
from templora_memory.errors import InvalidInputError

LINES = ["Good morning!", "Where can I buy bread?", "Is the mill open today?", "What is the weather like?"]


def add_parser(subparsers) -> None:
    """Register `busy`."""
    parser = subparsers.add_parser("busy", help="another agent's latency while a ~100 KB request writes; SIGTERM")
    parser.add_argument("--out", default="results/busy.json", help="JSON results (default: results/busy.json)")
    parser.add_argument("--model", default=None, help="base model (default: the embedded SmolLM2)")
    parser.add_argument("--threads", type=int, default=None, help="the server's torch threads (default: torch's)")
    parser.add_argument("--kib", type=int, default=100, help="size of the flood request's history (default: 100)")
    parser.add_argument("--replies", type=int, default=4, help="quiet replies per phase (default: 4)")
    parser.add_argument("--max-tokens", type=int, default=24, help="quiet reply length cap (default: 24)")
    parser.add_argument("--request-timeout", type=float, default=120.0, help="server request timeout (default: 120)")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0, help="server shutdown timeout (default: 30)")
    parser.add_argument("--deployment", default="cascaded", choices=["cascaded", "parallel"], help="(cascaded)")
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the phases against a server subprocess, write JSON, print the summary."""
    if min(args.kib, args.replies, args.max_tokens) < 1:
        raise InvalidInputError("--kib, --replies and --max-tokens must be >= 1")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="templora-busy-") as store:
        result = run(args, Path(store))
    result["run"] = {"options": vars(args) | {"run": None}, "seconds": round(time.perf_counter() - started, 1)}
    common.write_json(args.out, result)
    print(table(result))
    return result


def run(args: argparse.Namespace, store: Path) -> dict[str, Any]:
    """Idle replies, the flood beside replies, SIGTERM during its backlog, then a restart that counts turns."""
    server = Server(args, store)
    try:
        warm = chat(server.url, "quiet", "Hello!", args.max_tokens)  # not timed: the first reply loads caches
        if warm["status"] != 200:
            raise RuntimeError(f"the server refused a plain reply: {warm}")
        sent = {"quiet": 2, "flood": 0}
        idle = quiet_replies(server.url, args, sent, "idle")
        flood = flood_history(args.kib)
        outcome: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: outcome.update(chat(server.url, "flood", flood, 8, args)))
        thread.start()
        time.sleep(1.0)
        during = quiet_replies(server.url, args, sent, "during the flood request")
        thread.join()
        sent["flood"] = len(flood) + (outcome["status"] == 200)  # its turns are journaled first; its reply, if any
        written = server.stats("flood")["tokens_written"]
        backlog = quiet_replies(server.url, args, sent, "during its backlog")
        flood_stats = server.stats("flood")
        pending, written = flood_stats["tokens_pending"], flood_stats["tokens_written"] - written
        running = server.get("/health")["queue"]["running"]  # a background write under way: SIGTERM cuts it short
        stop = server.terminate() | {"jobs_running": running}
    finally:
        server.kill()
    counted = Server(args, store)
    try:
        kept = {agent: counted.stats(agent)["turns_seen"] for agent in sent}
    finally:
        counted.kill()
    return {
        "idle": idle,
        "during": during,
        "backlog": backlog,
        "ratio_during": _ratio(during, idle),
        "ratio_backlog": _ratio(backlog, idle),
        "flood": {
            "bytes": len(json.dumps(flood)),
            "messages": len(flood),
            **outcome,
            "pending_after": pending,
            "written_during_backlog": written,
        },
        "sigterm": stop,
        "turns": {"sent": sent, "kept": kept},
    }


def flood_history(kib: int) -> list[dict[str, str]]:
    """A history of about `kib` KiB: alternating user and assistant turns of ~400 bytes, ending with a user turn."""
    messages: list[dict[str, str]] = []
    while sum(len(m["content"]) for m in messages) < kib * 1024 or messages[-1]["role"] != "user":
        i = len(messages)
        text = (
            f"On day {i} of the harvest the miller counted {7 * i + 3} sacks of grain, and the baker asked for "
            f"{i % 13 + 2} of them before the market at noon. The river ran {('high', 'low', 'clear')[i % 3]} "
            f"that morning, so the wheel turned {i % 5 + 1} times a breath and the stones ground fine flour. "
            f"Remember the number {1000 + i}: it is the ledger entry for that day, written in the red book."
        )
        messages.append({"role": ("user", "assistant")[i % 2], "content": text})
    return messages


def quiet_replies(url: str, args: argparse.Namespace, sent: dict[str, int], phase: str) -> dict[str, Any]:
    """`--replies` requests of the quiet agent, one after another: their latencies and statuses."""
    calls = [chat(url, "quiet", LINES[i % len(LINES)], args.max_tokens, args) for i in range(args.replies)]
    sent["quiet"] += 2 * sum(c["status"] == 200 for c in calls)  # a refused request's line may be kept or not
    seconds = [c["seconds"] for c in calls if c["status"] == 200]
    median = round(statistics.median(seconds), 2) if seconds else None
    return {"phase": phase, "p50_s": median, "seconds": seconds, "statuses": [c["status"] for c in calls]}


def chat(url: str, agent: str, content, max_tokens: int, args: argparse.Namespace | None = None) -> dict[str, Any]:
    """One non-streamed chat request (a line, or a whole history): status, seconds, and the error if any."""
    messages = content if isinstance(content, list) else [{"role": "user", "content": content}]
    body = json.dumps({"model": "default", "messages": messages, "max_tokens": max_tokens}).encode()
    address = urlsplit(url)
    timeout = (args.request_timeout if args else 600) + 60
    headers = {"Content-Type": "application/json", "X-Agent-Id": agent}
    http = HTTPConnection(address.hostname, address.port, timeout=timeout)
    began = time.perf_counter()
    try:
        http.request("POST", "/v1/chat/completions", body=body, headers=headers)
        response = http.getresponse()
        payload = json.loads(response.read() or b"{}")
    finally:
        http.close()
    seconds = round(time.perf_counter() - began, 2)
    return {"status": response.status, "seconds": seconds, "error": payload.get("error", {}).get("message")}


def _ratio(phase: dict[str, Any], idle: dict[str, Any]) -> float | None:
    return round(phase["p50_s"] / idle["p50_s"], 2) if phase["p50_s"] and idle["p50_s"] else None


class Server:
    """`templora-memory serve` in a subprocess on a free loopback port, its log drained in a thread."""

    def __init__(self, args: argparse.Namespace, store: Path) -> None:
        command = [sys.executable, "-c", "from templora_memory.cli import main; raise SystemExit(main())", "serve"]
        command += ["--port", "0", "--store", str(store), "--deployment", args.deployment]
        command += ["--request-timeout", str(args.request_timeout), "--shutdown-timeout", str(args.shutdown_timeout)]
        command += ["--model", args.model] if args.model else []
        command += ["--threads", str(args.threads)] if args.threads else []
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        threading.Thread(target=lambda: self.log.extend(self.process.stderr), daemon=True).start()
        deadline = time.monotonic() + 300
        while not (port := re.search(r"running on http://127\.0\.0\.1:(\d+)", "".join(self.log))):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("the server did not start:\n" + "".join(self.log)[-2000:])
            time.sleep(0.2)
        self.url = f"http://127.0.0.1:{port.group(1)}"

    def stats(self, agent: str) -> dict[str, Any]:
        """The agent's stats (GET /v1/agents/{id})."""
        return self.get(f"/v1/agents/{agent}")

    def get(self, path: str) -> dict[str, Any]:
        """A GET's JSON body."""
        address = urlsplit(self.url)
        http = HTTPConnection(address.hostname, address.port, timeout=60)
        try:
            http.request("GET", path)
            return json.loads(http.getresponse().read())
        finally:
            http.close()

    def terminate(self) -> dict[str, Any]:
        """SIGTERM, then the seconds until the process exited (killed past 3 minutes), its code and last log line."""
        began = time.perf_counter()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(180)
        except subprocess.TimeoutExpired:
            code = None
        seconds = round(time.perf_counter() - began, 1)
        shutdown = [line.strip() for line in self.log if "shut down" in line]
        return {"seconds": seconds, "exit_code": code, "log": shutdown[-1] if shutdown else None}

    def kill(self) -> None:
        """Kill the process if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def table(result: dict[str, Any]) -> str:
    """The printed summary."""
    flood, stop, turns = result["flood"], result["sigterm"], result["turns"]
    lines = [
        f"flood request: {flood['bytes']} bytes in {flood['messages']} messages -> {flood['status']} after "
        f"{flood['seconds']} s ({flood['error'] or 'no error'}); {flood['written_during_backlog']} of its tokens "
        f"written during the backlog phase, {flood['pending_after']} still pending after it",
        "| quiet agent's replies | p50 latency (s) | vs idle | statuses |",
        "| --- | --- | --- | --- |",
    ]
    for key, ratio in (("idle", 1.0), ("during", result["ratio_during"]), ("backlog", result["ratio_backlog"])):
        phase = result[key]
        lines.append(f"| {phase['phase']} | {phase['p50_s']} | {ratio}x | {phase['statuses']} |")
    lines.append(
        f"SIGTERM during the backlog ({stop['jobs_running']} job(s) running): exited in {stop['seconds']} s "
        f"(code {stop['exit_code']}): {stop['log']}"
    )
    lost = {agent: turns["sent"][agent] - turns["kept"][agent] for agent in turns["sent"]}
    lines.append(f"turns sent {turns['sent']}, kept after a restart {turns['kept']}, sent minus kept {lost}")
    return "\n".join(lines)
