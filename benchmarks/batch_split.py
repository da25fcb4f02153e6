"""Where a batched decode step's time goes (`python -m benchmarks batch` prints it under its table): one step of 1 and
of n rows, each row an agent with its own LoRA and its prompt in its cache, timed, then run under torch's profiler,
which splits the ops' own time into the base weights' matrix products (shared by the rows), attention (one SDPA per
row and layer), the rows' LoRA products and every other op (norms, rotary, cache appends, conversions, ...); what
the ops leave of the wall time is Python. The difference between n rows and 1, over n - 1, is what a row adds.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from templora_memory.batched_decoding import LoraSlots, batched_logits
from templora_memory.engine import MemoryEngine
from templora_memory.generation import torch_step
from templora_memory.kv_cache import PromptCache

PARTS = {
    "base_weights": {"aten::_weight_int4pack_mm_for_cpu", "aten::_weight_int8pack_mm", "aten::mm", "aten::addmm"},
    "attention": {"aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math"},
    "lora": {"aten::bmm", "aten::baddbmm_"},
}
"""Ops by part of the step (by their own time); every other op counts as "other_ops"."""


def step_split(engine: MemoryEngine, prompts: dict[str, list[int]], rows: int, steps: int = 10) -> dict[str, Any]:
    """Milliseconds per batched step of 1 and of `rows` rows by part, and what each row adds (difference / (n - 1))."""
    split = {n: _split(engine, dict(list(prompts.items())[:n]), steps) for n in (1, rows)}
    per_row = {part: round((split[rows][part] - split[1][part]) / (rows - 1), 2) for part in split[1]}
    return {"rows": rows, "one_row_ms": split[1], "n_rows_ms": split[rows], "per_added_row_ms": per_row}


@torch.no_grad()
def _split(engine: MemoryEngine, prompts: dict[str, list[int]], steps: int) -> dict[str, float]:
    """One step of these agents' rows (each prompt in its own fresh cache first): wall ms and ms per part."""
    slots, caches, model = LoraSlots(engine.decoder), [], engine.decoder.model
    for slot, (agent, prompt) in enumerate(prompts.items()):
        slots.load(slot, engine.bank, agent)
        cache = PromptCache()
        with slots.rows(slot, slot + 1):
            torch_step(model, cache)(cache.align(prompt[:-1]))
        caches.append(cache)
    tokens = [prompt[-1] for prompt in prompts.values()]
    with slots.rows(0, len(caches)):
        timings = []
        for _ in range(steps + 3):  # 3 to warm up
            started = time.perf_counter()
            batched_logits(model, tokens, caches)
            timings.append(time.perf_counter() - started)
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            for _ in range(steps):
                batched_logits(model, tokens, caches)
    own = {part: 0.0 for part in [*PARTS, "other_ops"]}
    for event in profiler.key_averages():
        part = next((p for p, names in PARTS.items() if event.key in names), "other_ops")
        own[part] += event.self_cpu_time_total / 1000 / steps
    wall = 1000 * statistics.median(timings[3:])
    return {
        "step": round(wall, 1),
        **{p: round(ms, 1) for p, ms in own.items()},
        "python": round(wall - sum(own.values()), 1),
    }


def split_lines(split: dict[str, Any]) -> list[str]:
    """The printed lines: ms per step at 1 and n rows, and per added row, by part."""
    parts = list(split["one_row_ms"])
    lines = [f"step split (ms; profiler, {split['rows']} rows): " + " ".join(f"{p:>12}" for p in parts)]
    for label, key in [
        ("1 row", "one_row_ms"),
        (f"{split['rows']} rows", "n_rows_ms"),
        ("per added row", "per_added_row_ms"),
    ]:
        lines.append(f"{label:>38}: " + " ".join(f"{split[key][p]:>12}" for p in parts))
    return lines
