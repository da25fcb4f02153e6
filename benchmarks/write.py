"""`python -m benchmarks write`: seconds per 1K tokens written, per recipe and write-side lever, side by side.

Each round writes the same seeded recall conversation (user statements, so the probe recipes have facts to
teach) into a fresh agent under every (recipe, lever) pair in turn, so that a noisy shared machine slows
all of them alike; then times a fixed-length reply at the default window with that agent's adapter, so
each row also reads as the write cost relative to generation (the speed issue's ≤ 10 % target).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from typing import Any

from benchmarks import common
from benchmarks.recall_scenarios import build_scenario
from templora_memory.config import TempLoraConfig, config_from_args
from templora_memory.engine import MemoryEngine
from templora_memory.generation import Sampling

RECIPES: dict[str, dict[str, Any]] = {
    "shipped": {},
    "probes4+replay32": {"probe_questions": 4, "replay_probes": 32},
    "probes8+replay64": {"probe_questions": 8, "replay_probes": 64},
    "probes8+replay64+anchors8": {"probe_questions": 8, "replay_probes": 64, "anchor_probes": 8},
}
LEVERS: dict[str, dict[str, Any]] = {
    "fp32": {"train_precision": "fp32"},
    "bf16": {"train_precision": "bf16"},
    "no-grad-context": {"context_gradients": False},
    "bf16+no-grad-context": {"train_precision": "bf16", "context_gradients": False},
    "bf16+no-grad-context+1-epoch": {"train_precision": "bf16", "context_gradients": False, "epochs": 1},
}


def add_parser(subparsers) -> None:
    """Register `write`."""
    parser = subparsers.add_parser("write", help="seconds per 1K tokens written per recipe and lever, side by side")
    common.add_common_options(parser, "-", "results/write.json")
    parser.add_argument("--recipes", default="shipped,probes4+replay32", help=f"of {', '.join(RECIPES)}")
    parser.add_argument("--levers", default=",".join(LEVERS), help=f"of {', '.join(LEVERS)}")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default: 2)")
    parser.add_argument("--distances", default="1,4", help="chunks back of the scenario's facts (default: 1,4)")
    parser.add_argument("--reply-tokens", type=int, default=64, help="tokens generated per timed reply (default: 64)")
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Time every pair for --rounds rounds, print the table, write the JSON."""
    started = time.perf_counter()
    recipes, levers = _names(args.recipes, RECIPES, "--recipes"), _names(args.levers, LEVERS, "--levers")
    pairs = [(recipe, lever) for recipe in recipes for lever in levers]
    base = config_from_args(args).model_dump()
    common.set_threads(args)
    samples: dict[tuple[str, str], list[dict[str, float]]] = {pair: [] for pair in pairs}
    for round_index in common.progress(range(args.rounds), args.quiet, desc="rounds", unit="round"):
        for recipe, lever in pairs:
            config = TempLoraConfig(**{**base, **RECIPES[recipe], **LEVERS[lever]})
            samples[(recipe, lever)].append(time_pair(args, config, round_index))
            gc.collect()  # the pair's engine (a model copy) is gone before the next one loads
    rows = [_row(recipe, lever, runs) for (recipe, lever), runs in samples.items()]
    result = {"benchmark": "write", "rows": rows, "run": _run_info(args, started)}
    common.write_json(args.out, result)
    print(table(result))
    return result


def time_pair(args: argparse.Namespace, config: TempLoraConfig, round_index: int) -> dict[str, float]:
    """Write one scenario into a fresh engine's agent, then time a reply: seconds per 1K written and generated."""
    engine = MemoryEngine(model=args.model, config=config)
    count = lambda messages: sum(engine.turn_tokens(messages))  # noqa: E731
    distances = sorted(int(d) for d in args.distances.split(","))
    scenario = build_scenario(round_index, 0, distances, config.chunk_tokens, config.window_tokens, count)
    engine.add_turns("writer", [scenario.system, *scenario.messages])
    engine.wait("writer")
    stats = engine.stats("writer")
    prompt = engine.render_prompt([scenario.system], engine.window("writer"))
    sampling = Sampling(max_new_tokens=args.reply_tokens, ignore_eos=True)
    began = time.perf_counter()
    generated = len(engine.encode("".join(engine.stream_completion("writer", prompt, sampling))))
    generate_seconds = time.perf_counter() - began
    return {
        "write_s_per_1k": 1000 * stats.train_seconds / stats.tokens_written,
        "generate_s_per_1k": 1000 * generate_seconds / max(generated, 1),
        "tokens_written": stats.tokens_written,
        "final_loss": stats.last_loss,
    }


def _row(recipe: str, lever: str, runs: list[dict[str, float]]) -> dict[str, Any]:
    write = statistics.median(r["write_s_per_1k"] for r in runs)
    generate = statistics.median(r["generate_s_per_1k"] for r in runs)
    return {
        "recipe": recipe,
        "lever": lever,
        "write_s_per_1k": round(write, 1),
        "generate_s_per_1k": round(generate, 1),
        "write_share_of_generation": round(write / generate, 3),
        "runs": runs,
    }


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per (recipe, lever), write cost absolute, against fp32, and against generation."""
    rows = result["rows"]
    reference = {r["recipe"]: r["write_s_per_1k"] for r in rows if r["lever"] == "fp32"}
    lines = [
        "| recipe | lever | write s / 1K | speed-up vs fp32 | generate s / 1K | write / generate |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        fp32 = reference.get(r["recipe"])
        speedup = f"{fp32 / r['write_s_per_1k']:.2f}x" if fp32 else "-"
        lines.append(
            f"| {r['recipe']} | {r['lever']} | {r['write_s_per_1k']} | {speedup} | {r['generate_s_per_1k']} "
            f"| {100 * r['write_share_of_generation']:.0f} % |"
        )
    return "\n".join(lines)


def _names(text: str, known: dict[str, Any], option: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise common.InvalidInputError(f"{option} {unknown} unknown; choose from {', '.join(known)}")
    return names


def _run_info(args: argparse.Namespace, started: float) -> dict[str, Any]:
    options = {k: v for k, v in vars(args).items() if k not in TempLoraConfig.model_fields and not callable(v)}
    return {"options": options, "seconds": round(time.perf_counter() - started, 1), **common.machine_info()}
