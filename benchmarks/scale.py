"""`python -m benchmarks scale`: many agents on one base model — disk per agent, RSS, switch latency, throughput.

N agents (default 1,000) each receive T turns (default 10) from a LoCoMo conversation, interleaved
round-robin, with at most R adapters resident (default 100), so nearly every call brings its agent back
from the store and sends another one out. One extra agent absorbs a chunk of text, to show what a
trained adapter costs on disk (weights and optimizer state).

Δ and L_X default to 2,048 here so that no chunk trains during the conversations: this benchmark
measures switching and persistence; `python -m benchmarks cost` measures training. `--ray` measures the
Ray Serve deployment and switching from an object store instead (`benchmarks/scale_ray.py`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common, scale_ray
from benchmarks import locomo_data as data
from templora_memory.blobs import LocalBlobs
from templora_memory.engine import MemoryEngine
from templora_memory.store import store_key

DEFAULT_DATA = common.LOCOMO_DEV


def add_parser(subparsers) -> None:
    """Register `scale`."""
    parser = subparsers.add_parser("scale", help="1,000 agents on one base model: disk, RSS, switch latency")
    common.add_common_options(parser, DEFAULT_DATA, "results/scale.json", chunk_tokens=2048, window_tokens=2048)
    parser.add_argument("--agents", type=int, default=1000, help="agents created (default: 1000)")
    parser.add_argument("--turns", type=int, default=10, help="turns per agent (default: 10)")
    parser.add_argument("--resident", type=int, default=100, help="max_resident adapters in RAM (default: 100)")
    parser.add_argument("--store", default=None, help="store directory or s3:// URL (default: a temporary one)")
    scale_ray.add_options(parser)
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark from parsed options, write JSON and plot, print the table."""
    started = time.perf_counter()
    item = data.load(args.data)[0]
    messages = [line.message for session in data.lines(item) for line in session]
    if args.ray:
        result = scale_ray.main(args, messages)
        result["seconds"] = round(time.perf_counter() - started, 1)
        common.write_json(args.out, result)
        print(scale_ray.table(result))
        return result
    with tempfile.TemporaryDirectory(prefix="templora-scale-") as scratch:
        store = args.store or scratch
        engine = MemoryEngine(
            model=args.model, config=common.config_from_args(args), store=store, max_resident=args.resident
        )
        result = run(engine, messages, args.agents, args.turns, args.quiet)
        result["run"] = common.run_info(engine, args, started)
    common.write_json(args.out, result)
    plot(result, common.plot_path(args))
    print(table(result))
    return result


def run(engine: MemoryEngine, messages: list[dict], agents: int, turns: int, quiet: bool) -> dict[str, Any]:
    """Interleave the conversations, timing every call; then measure resident hits, disk and RSS."""
    ids = [f"agent-{i:05d}" for i in range(agents)]
    rss_start = common.rss_mib()
    calls: list[float] = []
    misses: list[float] = []
    started = time.perf_counter()
    for turn in common.progress(range(turns), quiet, desc="rounds", unit="round"):
        for index, agent in enumerate(ids):
            message = messages[(index + turn) % len(messages)]
            resident = agent in engine.resident_ids()
            begin = time.perf_counter()
            engine.add_turns(agent, [message])
            calls.append(time.perf_counter() - begin)
            if not resident:
                misses.append(calls[-1])
    elapsed = time.perf_counter() - started
    rss_end = common.rss_mib()
    hits = _resident_hits(engine, messages, turns)
    after_conversation = _disk_mib(engine, ids[0])
    chunks = engine.stats(ids[0]).chunks_trained
    text = engine.encode(" ".join(m["content"] for m in messages))
    engine.write_tokens("trained-agent", text[: min(512, engine.config.chunk_tokens)])  # one (short) trained chunk
    return {
        "agents": agents,
        "turns_per_agent": turns,
        "max_resident": engine.max_resident,
        "resident_after": len(engine.resident_ids()),
        "calls": len(calls),
        "calls_per_second": round(len(calls) / elapsed, 2),
        "call_ms": _percentiles(calls),
        "switch_ms": _percentiles(misses),
        "resident_call_ms": _percentiles(hits),
        "disk_mib_per_agent": {
            "after_conversation": after_conversation,
            "chunks_trained_in_conversation": chunks,
            "after_one_chunk": _disk_mib(engine, "trained-agent"),
        },
        "store_mib": _disk_mib(engine, None),
        "rss_mib": {"start": rss_start, "end": rss_end},
    }


def _resident_hits(engine: MemoryEngine, messages: list[dict], turns: int) -> list[float]:
    """Latency of calls to agents already in RAM (no switch), for comparison."""
    timings = []
    for index, agent in enumerate(engine.resident_ids()):
        begin = time.perf_counter()
        engine.add_turns(agent, [messages[(index + turns) % len(messages)]])
        timings.append(time.perf_counter() - begin)
    return timings


def _percentiles(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"p50": None, "p95": None, "n": 0}
    cut = statistics.quantiles(seconds, n=20) if len(seconds) > 1 else [seconds[0]] * 19
    return {"p50": round(statistics.median(seconds) * 1000, 2), "p95": round(cut[18] * 1000, 2), "n": len(seconds)}


def _disk_mib(engine: MemoryEngine, agent: str | None) -> float | None:
    """MiB of one agent's files (or the whole store's, for None) in a local store; None for an object store."""
    if not isinstance(engine.store.blobs, LocalBlobs):
        return None
    root = engine.store.blobs.root
    return round(_tree_bytes(root if agent is None else root / "agents" / store_key(agent)) / 2**20, 3)


def _tree_bytes(root: Path) -> int:
    return sum(os.path.getsize(Path(folder) / name) for folder, _, names in os.walk(root) for name in names)


def table(result: dict[str, Any]) -> str:
    """The result as a Markdown table."""
    rows = [
        ("agents x turns", f"{result['agents']} x {result['turns_per_agent']} (max_resident {result['max_resident']})"),
        ("interleaved calls per second", result["calls_per_second"]),
        ("call latency p50 / p95 (ms)", f"{result['call_ms']['p50']} / {result['call_ms']['p95']}"),
        ("switch (agent not resident) p50 / p95 (ms)", f"{result['switch_ms']['p50']} / {result['switch_ms']['p95']}"),
        ("resident call p50 / p95 (ms)", f"{result['resident_call_ms']['p50']} / {result['resident_call_ms']['p95']}"),
        ("disk per agent after its turns (MiB)", _disk_row(result["disk_mib_per_agent"])),
        ("disk of an agent after one trained chunk (MiB)", result["disk_mib_per_agent"]["after_one_chunk"]),
        ("store total (MiB)", result["store_mib"]),
        ("RSS before / after the conversations (MiB)", f"{result['rss_mib']['start']} / {result['rss_mib']['end']}"),
    ]
    lines = ["| measure | value |", "| --- | --- |", *(f"| {name} | {value} |" for name, value in rows)]
    return "\n".join(lines)


def _disk_row(disk: dict[str, Any]) -> str:
    return f"{disk['after_conversation']} ({disk['chunks_trained_in_conversation']} chunks trained)"


def plot(result: dict[str, Any], path: Path) -> Path:
    """Bar chart of the latency percentiles: switching agents vs calling a resident one."""
    fig, (ax,) = common.figure(1)
    labels, p50, p95 = [], [], []
    for key, label in (("switch_ms", "switch"), ("resident_call_ms", "resident")):
        labels.append(label)
        p50.append(result[key]["p50"] or 0)
        p95.append(result[key]["p95"] or 0)
    positions = range(len(labels))
    ax.bar([p - 0.2 for p in positions], p50, width=0.4, label="p50")
    ax.bar([p + 0.2 for p in positions], p95, width=0.4, label="p95")
    ax.set_xticks(list(positions), labels)
    ax.set_ylabel("ms per call")
    ax.set_title(f"{result['agents']} agents, {result['max_resident']} resident")
    ax.legend()
    return common.save_figure(fig, path)
