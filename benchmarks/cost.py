"""`python -m benchmarks cost`: latency and peak memory per reply, full history vs window + adapter (Table 4/5).

A LoCoMo conversation is streamed into one agent up to each history size (1K, 2K, 4K, 8K tokens); at each
size the next turn is answered with the full history in the prompt (no adapter) and with the window + the
agent's adapter. Replies have a fixed length (end-of-sequence is ignored) so that timings compare.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks import locomo_data as data
from templora_memory import AgentStats
from templora_memory.config import TempLoraConfig
from templora_memory.engine import MemoryEngine
from templora_memory.errors import InvalidInputError
from templora_memory.generation import Sampling
from templora_memory.message import Message

DEFAULT_DATA = common.LOCOMO_DEV
DEFAULT_HISTORIES = "1024,2048,4096,8192"
AGENT = "cost"
SETUPS = ("full", "window_adapter")
DEPLOYMENTS = {
    "cascaded": {},
    "cascaded+reuse": {"cache_reuse": True},
    "cascaded+reuse+sinks": {"cache_reuse": True, "attention_sinks": True},
    "parallel": {"deployment": "parallel"},
    "parallel+reuse+sinks": {"deployment": "parallel", "cache_reuse": True, "attention_sinks": True},
}
"""Deployments timed by --deployment-replies: paper §3.2 (cascaded, parallel) and §2 (cache reuse, attention sinks)."""


def add_parser(subparsers) -> None:
    """Register `cost`."""
    parser = subparsers.add_parser("cost", help="latency and peak memory per reply: full history vs window + adapter")
    common.add_common_options(parser, DEFAULT_DATA, "results/cost.json")
    parser.add_argument(
        "--histories",
        default=DEFAULT_HISTORIES,
        help=f"history sizes in tokens; empty to time only the deployments (default: {DEFAULT_HISTORIES})",
    )
    parser.add_argument("--replies", type=int, default=3, help="replies timed per setup and history size (default: 3)")
    parser.add_argument("--reply-tokens", type=int, default=32, help="tokens generated per reply (default: 32)")
    parser.add_argument(
        "--train-tokens",
        type=int,
        default=None,
        help="history tokens written into the adapter (default: all; see docs)",
    )
    parser.add_argument(
        "--deployment-replies",
        type=int,
        default=0,
        help="also time this many replies in each of --deployments (default: 0, skipped)",
    )
    parser.add_argument(
        "--deployments",
        default=",".join(DEPLOYMENTS),
        help=f"deployments timed by --deployment-replies, from {', '.join(DEPLOYMENTS)} (default: all)",
    )
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark from parsed options, write JSON and plot, print the table."""
    started = time.perf_counter()
    sizes = sorted({int(s) for s in args.histories.split(",") if s.strip()})
    item = data.load(args.data)[0]
    messages = [line.message for session in data.lines(item) for line in session]
    engine = common.engine_from_args(args)
    result = {"benchmark": "cost"}  # --histories "" times only the deployments
    if sizes:
        result = run(engine, messages, sizes, args.replies, args.reply_tokens, args.train_tokens, args.quiet)
    if args.deployment_replies:
        config = common.config_from_args(args)
        result["deployment"] = {
            name: deployment(
                MemoryEngine(args.model, TempLoraConfig(**{**config.model_dump(), **DEPLOYMENTS[name]})),
                messages,
                args.deployment_replies,
                args.reply_tokens,
                args.quiet,
            )
            for name in deployment_names(args.deployments)
        }
    result["run"] = common.run_info(engine, args, started)
    common.write_json(args.out, result)
    if sizes:
        plot(result, common.plot_path(args))
    print(table(result))
    return result


def run(
    engine, messages: list[Message], sizes: list[int], replies: int, reply_tokens: int, train_tokens=None, quiet=False
):
    """Grow one agent's history through `sizes`; time replies and training at each size.

    With `train_tokens`, only the history's first `train_tokens` tokens are written into the adapter: the
    adapter's cost at inference does not depend on what it learned, so latency and memory stay comparable.
    """
    turn_sizes = engine.turn_tokens(messages)
    if not sizes or common.prefix_within(turn_sizes, max(sizes)) + replies > len(messages):
        raise InvalidInputError(f"the conversation has {sum(turn_sizes)} tokens: too short for these sizes")
    system = [{"role": "system", "content": "Continue the conversation."}]
    _timed_reply(engine, None, engine.render_prompt(system, messages[:2]), 2)  # warm-up: lazy initialisation
    trained = common.prefix_within(turn_sizes, train_tokens)
    rows, sent = [], 0
    for size in common.progress(sizes, quiet, desc="history sizes", unit="size"):
        count = common.prefix_within(turn_sizes, size)
        started = time.perf_counter()
        engine.add_turns(AGENT, system + messages[sent : min(count, trained)])  # also writes what left the window
        write_seconds, sent = time.perf_counter() - started, min(count, trained)
        asks = [{"role": "user", "content": m["content"]} for m in messages[count : count + replies]]
        window = messages[engine.window_start(system, messages[:count]) : count]
        row = {
            "history_tokens": sum(turn_sizes[:count]),
            "turns": count,
            "write_seconds": round(write_seconds, 2),
        }
        row["full"] = measure(
            engine, None, [engine.render_prompt(system, messages[:count] + [a]) for a in asks], reply_tokens
        )
        row["window_adapter"] = measure(
            engine, AGENT, [engine.render_prompt(system, window + [a]) for a in asks], reply_tokens
        )
        for key in ("ttft_s", "reply_s", "peak_mib"):
            row[f"{key}_change_pct"] = common.relative_change(row["full"][key], row["window_adapter"][key])
        rows.append(row)
    return {"benchmark": "cost", "histories": rows, "training": training(engine), "generation": generation(rows)}


def deployment_names(text: str) -> list[str]:
    """'cascaded,parallel' → the names, each checked against `DEPLOYMENTS`."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in DEPLOYMENTS]
    if unknown or not names:
        raise InvalidInputError(f"--deployments {text!r}: choose from {', '.join(DEPLOYMENTS)}")
    return names


def deployment(engine: MemoryEngine, messages: list[Message], replies: int, reply_tokens: int, quiet=False):
    """Reply latency through a conversation that fills chunks, in the engine's deployment (paper §3.2, §2).

    Each user line of the conversation gets a reply of at most `reply_tokens`; a reply is marked `training`
    when a chunk was being trained during it (cascaded: before it; parallel: in the background).
    `computed_tokens` counts the tokens run through the model for the reply, what cache reuse saves (without a
    cache: the prompt and reply tokens).
    """
    agent, sampling, rows = "deployment", Sampling(max_new_tokens=reply_tokens), []
    for message in common.progress(messages[:replies], quiet, desc=engine.config.deployment, unit="reply"):
        chunks_before = engine.stats(agent).chunks_trained if engine.exists(agent) else 0
        started, first = time.perf_counter(), None
        stream = engine.respond(agent, [{"role": "user", "content": message["content"]}], sampling)
        for _ in stream:
            first = first if first is not None else time.perf_counter() - started
        seconds, reply, stats = time.perf_counter() - started, stream.reply, engine.stats(agent)
        computed = stats.computed_tokens
        computed = computed - sum(r["computed_tokens"] for r in rows) if computed is not None else None
        rows.append(
            {
                "reply_s": round(seconds, 3),
                "ttft_s": round(first or seconds, 3),
                "training": stats.training or stats.chunks_trained > chunks_before,
                "prompt_tokens": reply.prompt_tokens,
                "computed_tokens": computed if computed is not None else reply.prompt_tokens + reply.completion_tokens,
            }
        )
    engine.wait()
    return _deployment_summary(engine, engine.stats(agent), rows)


def _deployment_summary(engine: MemoryEngine, stats: AgentStats, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and max reply latency (also while a chunk trains), tokens computed, KV cache size, chunks trained."""
    during = [r["reply_s"] for r in rows if r["training"]]
    kv_bytes = stats.kv_cache_bytes
    return {
        "config": {key: getattr(engine.config, key) for key in ("deployment", "cache_reuse", "attention_sinks")},
        "replies": rows,
        "mean_reply_s": round(statistics.mean(r["reply_s"] for r in rows), 3),
        "max_reply_s": max(r["reply_s"] for r in rows),
        "mean_ttft_s": round(statistics.mean(r["ttft_s"] for r in rows), 3),
        "mean_reply_s_while_training": round(statistics.mean(during), 3) if during else None,
        "computed_tokens": sum(r["computed_tokens"] for r in rows),
        "kv_cache_mib": round(kv_bytes / 2**20, 1) if kv_bytes is not None else None,
        "chunks_trained": stats.chunks_trained,
    }


def measure(engine: MemoryEngine, agent: str | None, prompts: list[list[int]], reply_tokens: int) -> dict[str, Any]:
    """Median time to first token and per reply, decoding rate, and the largest peak memory over the replies."""
    ttfts, totals, peaks = [], [], []
    for prompt in prompts:
        with common.PeakRSS() as memory:
            ttft, total = _timed_reply(engine, agent, prompt, reply_tokens)
        ttfts.append(ttft)
        totals.append(total)
        peaks.append(memory.peak_mib)
    decode = [(t - f) / max(1, reply_tokens - 1) * 1000 for f, t in zip(ttfts, totals, strict=True)]
    return {
        "prompt_tokens": round(statistics.fmean(len(p) for p in prompts)),
        "ttft_s": round(statistics.median(ttfts), 3),
        "reply_s": round(statistics.median(totals), 3),
        "decode_s_per_1k": round(statistics.median(decode), 2),
        "peak_mib": max(peaks) if None not in peaks else None,
        "replies": len(prompts),
    }


def _timed_reply(engine: MemoryEngine, agent: str | None, prompt: list[int], reply_tokens: int) -> tuple[float, float]:
    """Seconds to the first token and to the whole fixed-length greedy reply (nothing is remembered)."""
    started, first = time.perf_counter(), None
    for _ in engine.stream_completion(agent, prompt, Sampling(max_new_tokens=reply_tokens, ignore_eos=True)):
        first = first if first is not None else time.perf_counter() - started
    return first or 0.0, time.perf_counter() - started


def training(engine: MemoryEngine) -> dict[str, Any]:
    """Seconds spent training the agent's adapter per 1K tokens written (Δ chunks, n epochs each)."""
    stats = engine.stats(AGENT)
    per_1k = stats.train_seconds / stats.tokens_written * 1000 if stats.tokens_written else None
    return {
        "tokens_written": stats.tokens_written,
        "chunks": stats.chunks_trained,
        "train_seconds": stats.train_seconds,
        "train_s_per_1k": round(per_1k, 2) if per_1k is not None else None,
    }


def generation(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median decoding seconds per 1K generated tokens of each setup, over history sizes."""
    return {
        f"{setup}_decode_s_per_1k": round(statistics.median(r[setup]["decode_s_per_1k"] for r in rows), 2)
        for setup in SETUPS
    }


def table(result: dict[str, Any]) -> str:
    """Latency and memory per history size, full vs window + adapter, and training vs generation per 1K."""
    lines = [f"{'history':>8} {'setup':<15} {'prompt':>7} {'ttft_s':>8} {'reply_s':>8} {'peak_MiB':>9}"]
    if "histories" not in result:
        lines = []
    for row in result.get("histories", []):
        for setup in SETUPS:
            s = row[setup]
            lines.append(
                f"{row['history_tokens']:>8} {setup:<15} {s['prompt_tokens']:>7} "
                f"{s['ttft_s']:>8.3f} {s['reply_s']:>8.3f} {s['peak_mib']!s:>9}"
            )
        lines.append(
            f"{'':>8} {'change':<15} {'':>7} {_pct(row['ttft_s_change_pct']):>8} "
            f"{_pct(row['reply_s_change_pct']):>8} {_pct(row['peak_mib_change_pct']):>9}"
        )
    if "training" in result:
        t, g = result["training"], result["generation"]
        lines.append(
            f"training: {t['train_s_per_1k']} s per 1K tokens written "
            f"({t['tokens_written']} tokens, {t['chunks']} chunks)"
        )
        lines.append(
            f"generation: {g['window_adapter_decode_s_per_1k']} s per 1K tokens (window + adapter), "
            f"{g['full_decode_s_per_1k']} (full)"
        )
    for name, d in result.get("deployment", {}).items():
        lines.append(
            f"deployment {name}: mean reply {d['mean_reply_s']} s (first text {d['mean_ttft_s']} s), "
            f"max {d['max_reply_s']} s, while a chunk trains {d['mean_reply_s_while_training']} s, "
            f"{d['computed_tokens']} tokens computed ({d['chunks_trained']} chunks)"
        )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}%"


def plot(result: dict[str, Any], path: Path) -> Path:
    """Time to first token, time per reply and peak memory against history size, for both setups."""
    fig, axes = common.figure(3, width=4.5)
    x = [row["history_tokens"] for row in result["histories"]]
    for axis, key, label in zip(
        axes,
        ("ttft_s", "reply_s", "peak_mib"),
        ("time to first token (s)", "time per reply (s)", "peak RSS (MiB)"),
        strict=True,
    ):
        for setup, color in zip(SETUPS, ("grey", "tab:red"), strict=True):
            axis.plot(x, [row[setup][key] or 0 for row in result["histories"]], marker="o", color=color, label=setup)
        axis.set(xlabel="history (tokens)", ylabel=label, title=label)
        axis.set_xscale("log", base=2)
        axis.minorticks_off()
        axis.set_xticks(x, [f"{v / 1024:.0f}K" for v in x])
        axis.legend()
    return common.save_figure(fig, path)
