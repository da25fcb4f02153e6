"""`python -m benchmarks footprint`: bytes per agent on disk and in RAM, and a store of 10,000 agents.

One agent of the model (default: the embedded one, default config) receives a LoCoMo conversation until
`--chunks` chunks are written (default 4). Its committed files are measured, and its RAM: the LoRA (fp32 while
resident), the AdamW moments, the taught probes kept for replay. Then `--agents` agents (default 10,000) are
simulated in a store as hard links of that agent's files (the store's own layout, so they load as real agents;
the apparent size is what a store of that many agents holds), and `--sample` of them (default 200) are loaded by
an engine one after another (each taken, read, loaded, released): their mean load time is reported. The files
are in the page cache then, so this is the load time of a warm local disk, not of S3.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks import locomo_data as data
from templora_memory.config import config_from_args
from templora_memory.engine import MemoryEngine
from templora_memory.store import CURRENT, store_key

DEFAULT_DATA = common.LOCOMO_DEV
AGENT = "footprint"


def add_parser(subparsers) -> None:
    """Register `footprint`."""
    parser = subparsers.add_parser("footprint", help="bytes per agent on disk and in RAM; a 10,000-agent store")
    common.add_common_options(parser, DEFAULT_DATA, "results/footprint.json")
    parser.add_argument("--chunks", type=int, default=4, help="chunks written into the agent (default: 4)")
    parser.add_argument("--agents", type=int, default=10_000, help="agents in the simulated store (default: 10000)")
    parser.add_argument("--sample", type=int, default=200, help="agents loaded from it and timed (default: 200)")
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train one agent, measure it, simulate the store, time loads; print one table and write the JSON."""
    started = time.perf_counter()
    common.set_threads(args)
    messages = [line.message for session in data.lines(data.load(args.data)[0]) for line in session]
    with tempfile.TemporaryDirectory(prefix="templora-footprint-") as root:
        engine = MemoryEngine(args.model, config_from_args(args), store=Path(root))
        result = run(engine, Path(root), messages, args.chunks, args.agents, args.sample)
    result.update(common.run_info(engine, args, started))
    print(table(result))
    common.write_json(args.out, result)
    return result


def run(engine: MemoryEngine, store: Path, messages: list[dict], chunks: int, agents: int, sample: int) -> dict:
    """The measurements over `engine`, whose store is the local directory `store`."""
    written = _write_chunks(engine, messages, chunks)
    disk = _disk_bytes(store, AGENT)
    per_agent = {"disk": disk, "ram": _ram_bytes(engine, AGENT, disk)}
    engine.close()
    simulated = _simulate(store, agents)
    return {
        "chunks_written": written,
        "bytes_per_agent": per_agent,
        "store": {**simulated, "load_ms": _time_loads(engine, agents, sample)},
    }


def _write_chunks(engine: MemoryEngine, messages: list[dict], chunks: int) -> int:
    """Add the conversation's turns until `chunks` chunks are written; returns the chunks written."""
    for start in range(0, len(messages), 4):
        engine.add_turns(AGENT, messages[start : start + 4])
        if engine.stats(AGENT).chunks_trained >= chunks:
            break
    return engine.stats(AGENT).chunks_trained


def _disk_bytes(store: Path, agent_id: str) -> dict[str, int]:
    """Bytes of each file of the agent's committed version, and their total."""
    folder = store / "agents" / store_key(agent_id)
    version = json.loads((folder / CURRENT).read_text())["version"]
    files = {path.name: path.stat().st_size for path in sorted((folder / version).iterdir())}
    return {**files, "total": sum(files.values())}


def _ram_bytes(engine: MemoryEngine, agent_id: str, disk: dict[str, int]) -> dict[str, int]:
    """Bytes an agent holds in RAM while resident: its LoRA (fp32), AdamW's two moments (fp32, shaped as the LoRA),
    and the probes kept for replay (as many bytes as their file holds)."""
    lora = sum(p.numel() * p.element_size() for p in engine.bank.parameters(agent_id))
    replay = disk.get("replay.pt", 0)
    return {"lora": lora, "optimizer": 2 * lora, "replay": replay, "total": 3 * lora + replay}


def _simulate(store: Path, agents: int) -> dict[str, Any]:
    """`agents` copies of the trained agent as hard links in the store's layout; their apparent size."""
    source = store / "agents" / store_key(AGENT)
    version = json.loads((source / CURRENT).read_text())["version"]
    files = sorted((source / version).iterdir())
    started = time.perf_counter()
    for i in range(agents):
        folder = store / "agents" / store_key(f"npc-{i}")
        (folder / version).mkdir(parents=True)
        for path in files:
            os.link(path, folder / version / path.name)
        (folder / CURRENT).write_text(json.dumps({"version": version, "writer": None}))
    size = agents * (sum(p.stat().st_size for p in files) + len((source / CURRENT).read_bytes()))
    return {"agents": agents, "bytes": size, "gb": round(size / 1e9, 2), "seconds_to_link": _since(started)}


def _time_loads(engine: MemoryEngine, agents: int, sample: int) -> dict[str, float]:
    """Load `sample` of the simulated agents one by one (lease, read, load weights, release); ms per load."""
    times = []
    for i in random.Random(0).sample(range(agents), min(sample, agents)):
        started = time.perf_counter()
        engine.agent(f"npc-{i}")
        times.append(time.perf_counter() - started)
        engine.release(f"npc-{i}")
    times.sort()
    return {"mean": round(1000 * sum(times) / len(times), 1), "p50": round(1000 * times[len(times) // 2], 1)}


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 1)


def table(result: dict[str, Any]) -> str:
    """Bytes per agent (disk files, RAM parts) and the simulated store, as text."""
    disk, ram, store = result["bytes_per_agent"]["disk"], result["bytes_per_agent"]["ram"], result["store"]
    lines = [f"{result['chunks_written']} chunks written", f"{'per agent':<32}{'MB':>10}"]
    lines += [f"{'disk ' + name:<32}{size / 1e6:>10.2f}" for name, size in disk.items()]
    lines += [f"{'RAM ' + name:<32}{size / 1e6:>10.2f}" for name, size in ram.items()]
    loads = store["load_ms"]
    lines.append(
        f"store of {store['agents']:,} agents: {store['gb']} GB; an agent loads in {loads['mean']} ms mean, "
        f"{loads['p50']} ms median (warm local disk)"
    )
    return "\n".join(lines)
