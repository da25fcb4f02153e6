"""`python -m benchmarks write`: seconds per 1K tokens written, per recipe and write-side lever, side by side.

Each round writes the same seeded recall conversation (user statements, so the probe recipes have facts to
teach) into a fresh agent under every (recipe, lever) pair in turn, so that a noisy shared machine slows
all of them alike; then times a fixed-length reply at the default window with that agent's adapter (the
tokens after the first: decoding, the prompt already read), so each row also reads as the write cost
relative to generation (the speed issue's ≤ 10 % target). The floor columns divide the FLOPs a pair's
write performs by the matrix-product throughput measured on this machine: no implementation of that
recipe could write faster here.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import common
from benchmarks.recall_scenarios import Scenario, build_scenario
from templora_memory import precision
from templora_memory.config import TempLoraConfig, config_from_args
from templora_memory.engine import MemoryEngine
from templora_memory.generation import Sampling

RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "next-token": {"probe_questions": 0, "replay_probes": 0, "anchor_probes": 0},
    "probes8+replay64": {"probe_questions": 8, "replay_probes": 64, "anchor_probes": 0},
}
"""Write recipes: the shipped one (probes, replay, anchors) and, without them, the next-token loss alone."""
PAPER = {"train_precision": "fp32", "context_gradients": True, "lora_dropout": 0.05, "epochs": 2}
"""The write passes as the paper runs them: fp32, gradients through the L_T context, LoRA dropout 0.05, 2 epochs."""
LEVERS: dict[str, dict[str, Any]] = {
    "fp32": PAPER,
    "bf16": {**PAPER, "train_precision": "bf16"},
    "no-grad-context": {**PAPER, "context_gradients": False},
    "no-dropout": {**PAPER, "lora_dropout": 0.0},
    "defaults": {},
    "defaults+1-epoch": {"epochs": 1},
}
"""Each lever alone on the paper's passes, then the shipped defaults (bf16 where native, no-grad context, no
dropout) and those with one epoch."""
FLOOR_SHAPE = (512, 576, 1536)
"""(rows, in, out) of the matrix product whose measured throughput sets the floor: a chunk through an MLP layer."""


def add_parser(subparsers) -> None:
    """Register `write`."""
    parser = subparsers.add_parser("write", help="seconds per 1K tokens written per recipe and lever, side by side")
    common.add_common_options(parser, "-", "results/write.json")
    parser.add_argument("--recipes", default="default,next-token", help=f"of {', '.join(RECIPES)}")
    parser.add_argument("--levers", default=",".join(LEVERS), help=f"of {', '.join(LEVERS)}")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default: 2)")
    parser.add_argument("--distances", default="1,4", help="chunks back of the scenario's facts (default: 1,4)")
    parser.add_argument("--reply-tokens", type=int, default=64, help="tokens generated per timed reply (default: 64)")
    parser.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also count each pair's FLOPs in one more (untimed) write and divide by the machine's measured matrix "
        "product throughput: the least the write could cost here (default: on)",
    )
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
            samples[(recipe, lever)].append(time_pair(args, _config(base, recipe, lever), round_index))
            gc.collect()  # the pair's engine (a model copy) is gone before the next one loads
    floors = {pair: floor(args, _config(base, *pair)) for pair in pairs} if args.floor else {}
    rows = [_row(recipe, lever, runs, floors.get((recipe, lever))) for (recipe, lever), runs in samples.items()]
    result = {"benchmark": "write", "rows": rows, "run": _run_info(args, started)}
    common.write_json(args.out, result)
    print(table(result))
    return result


def _config(base: dict[str, Any], recipe: str, lever: str) -> TempLoraConfig:
    return TempLoraConfig(**{**base, **RECIPES[recipe], **LEVERS[lever]})


def time_pair(args: argparse.Namespace, config: TempLoraConfig, round_index: int) -> dict[str, float]:
    """Write one scenario into a fresh engine's agent, then time a reply: seconds per 1K written and generated."""
    engine = MemoryEngine(model=args.model, config=config)
    scenario = _write(engine, args, round_index)
    stats = engine.stats("writer")
    prompt = engine.render_prompt([scenario.system], engine.window("writer"))
    sampling = Sampling(max_new_tokens=args.reply_tokens, ignore_eos=True)
    began, pieces = time.perf_counter(), []
    for piece in engine.stream_completion("writer", prompt, sampling):
        pieces.append((piece, time.perf_counter()))
    first, last = pieces[0][1], pieces[-1][1]  # after the first piece: decoding alone, the prompt read
    decoded = len(engine.encode("".join(piece for piece, _ in pieces[1:])))
    return {
        "write_s_per_1k": 1000 * stats.train_seconds / stats.tokens_written,
        "generate_s_per_1k": 1000 * (last - first) / max(decoded, 1),
        "first_token_s": first - began,
        "tokens_written": stats.tokens_written,
        "final_loss": stats.last_loss,
    }


def _write(engine: MemoryEngine, args: argparse.Namespace, round_index: int) -> Scenario:
    """Write the round's seeded scenario into the engine's agent "writer" and wait for its training."""
    config = engine.config
    count = lambda messages: sum(engine.turn_tokens(messages))  # noqa: E731
    distances = sorted(int(d) for d in args.distances.split(","))
    scenario = build_scenario(round_index, 0, distances, config.chunk_tokens, config.window_tokens, count)
    engine.add_turns("writer", [scenario.system, *scenario.messages])
    engine.wait("writer")
    return scenario


def floor(args: argparse.Namespace, config: TempLoraConfig) -> dict[str, float]:
    """FLOPs of writing round 0's scenario (counted by torch's FlopCounterMode) over the throughput this machine
    measured for a chunk-sized matrix product in the pair's precision: seconds per 1K tokens at that peak."""
    engine = MemoryEngine(model=args.model, config=config)
    with FlopCounterMode(display=False) as counter:
        _write(engine, args, 0)
    per_1k = 1000 * counter.get_total_flops() / engine.stats("writer").tokens_written
    peak = matmul_flops_per_second(precision.resolve(config.train_precision))
    return {
        "gflop_per_1k": round(per_1k / 1e9, 1),
        "peak_gflops": round(peak / 1e9, 1),
        "floor_s_per_1k": per_1k / peak,
    }


def matmul_flops_per_second(dtype: torch.dtype, repeats: int = 20) -> float:
    """Best of `repeats` timings of a FLOOR_SHAPE matrix product in `dtype` with the current torch threads."""
    rows, inner, out = FLOOR_SHAPE
    a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, out, dtype=dtype)
    best = math.inf
    for _ in range(repeats):
        began = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - began)
    return 2 * rows * inner * out / best


def _row(recipe: str, lever: str, runs: list[dict[str, float]], floor: dict[str, float] | None) -> dict[str, Any]:
    write = statistics.median(r["write_s_per_1k"] for r in runs)
    generate = statistics.median(r["generate_s_per_1k"] for r in runs)
    row = {
        "recipe": recipe,
        "lever": lever,
        "write_s_per_1k": round(write, 1),
        "generate_s_per_1k": round(generate, 1),
        "write_share_of_generation": round(write / generate, 3),
        "runs": runs,
    }
    if floor:
        row |= {**floor, "floor_s_per_1k": round(floor["floor_s_per_1k"], 2)}
        row["floor_share_of_generation"] = round(floor["floor_s_per_1k"] / generate, 3)
    return row


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per (recipe, lever), write cost absolute, against fp32, and against generation."""
    rows = result["rows"]
    reference = {r["recipe"]: r["write_s_per_1k"] for r in rows if r["lever"] == "fp32"}
    lines = [
        "| recipe | lever | write s / 1K | speed-up vs fp32 | generate s / 1K | write / generate "
        "| GFLOP / 1K | floor s / 1K | floor / generate |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        fp32 = reference.get(r["recipe"])
        speedup = f"{fp32 / r['write_s_per_1k']:.2f}x" if fp32 else "-"
        floor = (
            f"{r['gflop_per_1k']} | {r['floor_s_per_1k']} ({r['peak_gflops']} GFLOP/s) "
            f"| {100 * r['floor_share_of_generation']:.1f} %"
            if "gflop_per_1k" in r
            else "- | - | -"
        )
        lines.append(
            f"| {r['recipe']} | {r['lever']} | {r['write_s_per_1k']} | {speedup} | {r['generate_s_per_1k']} "
            f"| {100 * r['write_share_of_generation']:.0f} % | {floor} |"
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
