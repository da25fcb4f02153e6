"""`python -m benchmarks footprint`: bytes per agent on disk and in RAM, and a store of 10,000 agents, for the
default storage and the compact one side by side.

The default storage (adapter_dtype="fp32", store_optimizer=True) keeps the adapter as trained and AdamW's moments,
so training after a reload continues exactly; the compact one (adapter_dtype="bf16", store_optimizer=False) stores
half the adapter's bytes and no moments, and is opt-in because it changes training results at a recall cost not yet
measured. The benchmark sets these two fields itself; every other field comes from the options.

One agent of the model (default: the embedded one) receives a LoCoMo conversation under the default storage until
`--chunks` chunks are written (default 4). Its committed files are measured, and its RAM: the LoRA (fp32 while
resident, under either storage), the AdamW moments, the taught probes kept for replay. The agent is then exported
and imported by an engine with the compact storage, which commits it again in that form: file sizes follow from
shapes and dtypes, not from the trained values, so it is trained once. For each storage, `--agents` agents (default
10,000) are simulated in a store as hard links of that agent's files (the store's own layout, so they load as real
agents; the apparent size is what a store of that many agents holds), and `--sample` of them (default 200) are
loaded by the engine one after another (each taken, read, loaded, released): their mean load time is reported. The
files are in the page cache then, so this is the load time of a warm local disk, not of S3.

`--state-turns 1000,3000,10000` measures only the agent's state file instead (no model loaded, nothing trained): per
turn count, an agent that received that many turns (the conversation's turns cycled, numbered so each is new) is
built as the engine keeps it, chunks marked written and the turns that left the window let go of, without and with
the archive hybrid recall keeps; its committed state.json's bytes and the commit's seconds (record and write, the
median of `STATE_COMMITS`) are printed. The fingerprints and the archive are bounded, so both stay flat past the
bound (about 2,000 turns). Tokens are made up (one per 4 characters).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks import locomo_data as data
from templora_memory.agent import AgentState
from templora_memory.config import TempLoraConfig, config_from_args
from templora_memory.engine import MemoryEngine
from templora_memory.message import Turn, fingerprint
from templora_memory.store import CURRENT, FORMAT_VERSION, STATE, AgentStore, store_key
from templora_memory.window import window_start

DEFAULT_DATA = common.LOCOMO_DEV
AGENT = "footprint"
STORAGE = {
    "default": {"adapter_dtype": "fp32", "store_optimizer": True},
    "compact": {"adapter_dtype": "bf16", "store_optimizer": False},
}
"""The storage settings measured side by side: the defaults, and the opt-in compact form."""
MakeEngine = Callable[[Path, dict[str, Any]], MemoryEngine]
"""Builds an engine over the store at a local directory, with a storage's settings."""
STATE_COMMITS = 5
"""Commits timed per built state with `--state-turns` (the median is reported)."""


def add_parser(subparsers) -> None:
    """Register `footprint`."""
    parser = subparsers.add_parser(
        "footprint", help="bytes per agent on disk and in RAM, a 10,000-agent store; default and compact storage"
    )
    common.add_common_options(parser, DEFAULT_DATA, "results/footprint.json")
    parser.add_argument("--chunks", type=int, default=4, help="chunks written into the agent (default: 4)")
    parser.add_argument("--agents", type=int, default=10_000, help="agents in the simulated store (default: 10000)")
    parser.add_argument("--sample", type=int, default=200, help="agents loaded from it and timed (default: 200)")
    parser.add_argument(
        "--state-turns",
        default=None,
        help="comma-separated turn counts: measure only the committed state file of an agent built with that many "
        "turns (no model, no training), e.g. 1000,3000,10000",
    )
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train one agent, measure it under both storages, simulate the stores, time loads; one table and the JSON."""
    started = time.perf_counter()
    common.set_threads(args)
    config = config_from_args(args)
    messages = [line.message for session in data.lines(data.load(args.data)[0]) for line in session]
    if args.state_turns:
        return _state_main(args, config, messages, started)

    def make(store: Path, storage: dict[str, Any]) -> MemoryEngine:
        return MemoryEngine(args.model, config.model_copy(update=storage), store=store)

    with tempfile.TemporaryDirectory(prefix="templora-footprint-") as root:
        result = run(make, Path(root), messages, args.chunks, args.agents, args.sample)
    result.update(_run_info(config, args, started))
    print(table(result))
    common.write_json(args.out, result)
    return result


def run(make: MakeEngine, root: Path, messages: list[dict], chunks: int, agents: int, sample: int) -> dict:
    """The agent trained under the default storage and committed again under the compact one; both measured, each
    in its own store under `root` (a local directory). One engine at a time holds a model."""
    engine = make(root / "default", STORAGE["default"])
    written = _write_chunks(engine, messages, chunks)
    exported = engine.export(AGENT, root / "exported")
    measured = {"default": _measure(engine, root / "default", agents, sample)}
    model = engine.model_name
    del engine
    engine = make(root / "compact", STORAGE["compact"])
    engine.import_(exported, AGENT)
    engine.save(AGENT)  # its weights committed again, in the compact form
    measured["compact"] = _measure(engine, root / "compact", agents, sample)
    return {"model": model, "chunks_written": written, "storage": measured}


def _state_main(args: argparse.Namespace, config: TempLoraConfig, messages: list[dict], started: float) -> dict:
    """`--state-turns`: the state file's bytes and commit seconds per turn count; one table, the JSON beside --out."""
    counts = [int(n) for n in args.state_turns.split(",")]
    with tempfile.TemporaryDirectory(prefix="templora-state-") as root:
        result = {"rows": state_rows(config, messages, counts, Path(root))}
    result.update(_run_info(config, args, started))
    print(state_table(result))
    out = Path(args.out)
    common.write_json(out.with_name(f"{out.stem}-state{out.suffix}"), result)
    return result


def state_rows(config: TempLoraConfig, messages: list[dict], counts: list[int], root: Path) -> list[dict]:
    """Per turn count, the committed state of an agent built with that many turns, without and with the archive."""
    rows = []
    for turns in counts:
        row: dict[str, Any] = {"turns": turns}
        for name, archive in (("plain", False), ("archive", True)):
            state = built_state(config, messages, turns, archive)
            row[name] = _committed_state(state, config, root / f"{name}-{turns}")
        rows.append(row)
    return rows


def built_state(config: TempLoraConfig, messages: list[dict], turns: int, archive: bool) -> AgentState:
    """An agent that received `turns` turns, kept as the engine keeps them (full chunks marked written, the turns
    that left the window let go of, into the archive with `archive`), built without a model: its state's size."""
    state = AgentState(AGENT)
    talk = state.conversation
    for i in range(turns):
        source = messages[i % len(messages)]
        message = {**source, "content": f"{source['content']} ({i})"}
        talk.append(Turn(message, _made_up_tokens(message["content"]), fingerprint(message)))
        while len(talk.pending) >= config.chunk_tokens:
            talk.mark_written(config.chunk_tokens, config.train_context_tokens)
        talk.drop_before(window_start(talk.sizes, config.window_tokens), archive=archive)
    return state


def _made_up_tokens(text: str) -> tuple[int, ...]:
    """One token per 4 characters, with ids spread over a 32K vocabulary (so the record prints them as a real one)."""
    return tuple(1000 + (7919 * k) % 31000 for k in range(max(1, len(text) // 4)))


def _committed_state(state: AgentState, config: TempLoraConfig, folder: Path) -> dict[str, Any]:
    """Commit `state` (no weights) to a new store `STATE_COMMITS` times: its state file's bytes, the median seconds
    of a commit (the record built and written, as the engine commits after each write)."""
    store, key = AgentStore(folder), store_key(AGENT)
    store.acquire(key)
    header = {"format_version": FORMAT_VERSION, "model": "none", "config": config.model_dump()}
    seconds = []
    for _ in range(STATE_COMMITS):
        started = time.perf_counter()
        store.commit(key, {**header, **state.record()}, None)
        seconds.append(time.perf_counter() - started)
    store.release(key)
    return {"bytes": _disk_bytes(folder, AGENT)[STATE], "commit_s": round(statistics.median(seconds), 4)}


def state_table(result: dict[str, Any]) -> str:
    """The state file's bytes and a commit's seconds per turn count, without and with the archive, as text."""
    lines = [f"{'turns':>8}{'state.json bytes':>18}{'commit s':>10}{'with archive: bytes':>22}{'commit s':>10}"]
    for row in result["rows"]:
        plain, archive = row["plain"], row["archive"]
        lines.append(
            f"{row['turns']:>8,}{plain['bytes']:>18,}{plain['commit_s']:>10.4f}"
            f"{archive['bytes']:>22,}{archive['commit_s']:>10.4f}"
        )
    return "\n".join(lines)


def _measure(engine: MemoryEngine, store: Path, agents: int, sample: int) -> dict[str, Any]:
    """The agent's files and RAM under `engine`'s storage settings, then a simulated store of `agents` and loads."""
    disk = _disk_bytes(store, AGENT)
    per_agent = {"disk": disk, "ram": _ram_bytes(engine, AGENT, disk)}
    engine.close()
    simulated = _simulate(store, agents)
    return {
        "settings": {name: getattr(engine.config, name) for name in STORAGE["default"]},
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


def _run_info(config: TempLoraConfig, args: argparse.Namespace, started: float) -> dict[str, Any]:
    """What produced the result: the config (its two storage fields set per storage), options, machine, duration."""
    options = {k: v for k, v in vars(args).items() if k not in TempLoraConfig.model_fields and not callable(v)}
    return {
        "config": config.model_dump(exclude=set(STORAGE["default"])),
        "options": options,
        "seconds": _since(started),
        **common.machine_info(),
    }


def table(result: dict[str, Any]) -> str:
    """Bytes per agent (disk files, RAM parts) and the simulated store under each storage, side by side, as text."""
    storage = result["storage"]
    names = list(storage)
    width = 12

    def row(label: str, values: list[str]) -> str:
        return f"{label:<34}" + "".join(f"{value:>{width}}" for value in values)

    def sizes(part: str) -> list[str]:
        keys = sorted({key for s in storage.values() for key in s["bytes_per_agent"][part]} - {"total"})
        lines = []
        for key in [*keys, "total"]:
            values = [s["bytes_per_agent"][part].get(key) for s in storage.values()]
            lines.append(row(f"{'disk' if part == 'disk' else 'RAM'} {key}", [_mb(v) for v in values]))
        return lines

    settings = [", ".join(f"{k}={v}" for k, v in s["settings"].items()) for s in storage.values()]
    lines = [f"{result['chunks_written']} chunks written"]
    lines += [f"{name}: {text}" for name, text in zip(names, settings, strict=True)]
    lines += [row("per agent, MB", names), *sizes("disk"), *sizes("ram")]
    agents = next(iter(storage.values()))["store"]["agents"]
    lines.append(row(f"store of {agents:,} agents, GB", [str(s["store"]["gb"]) for s in storage.values()]))
    lines.append(row("load, ms mean (warm local disk)", [str(s["store"]["load_ms"]["mean"]) for s in storage.values()]))
    lines.append(row("load, ms median", [str(s["store"]["load_ms"]["p50"]) for s in storage.values()]))
    return "\n".join(lines)


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.2f}"
