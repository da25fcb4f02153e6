"""`python -m benchmarks batch`: aggregate decode tokens/s with 1, 2, 4, 8 agents replying at once, each with its own
LoRA, decoded in one batch (`ReplyBatch`), next to the same replies one at a time, side by side in one run.

Each agent gets a seeded random LoRA on every linear layer (B non-zero, as after training: a reply costs the same
as with a trained one) and its own prompt, a slice of a PG19 book of a different length. Prompts are in the
agents' caches before timing (as for an agent that keeps talking), replies are greedy with end-of-sequence
ignored, and a batch of n agents (the engine's `ReplyBatch`) is read round-robin by one thread. Rows are
interleaved and repeated; medians are reported. Next to each: the single-stream rate (one agent alone, today's
path), whether every batched reply has the tokens of the same reply decoded alone, the mean rows per batched
step, and what a step costs: the base weights alone (every linear layer's matrix product at n rows, the part a
batch shares) and the rest per row (LoRA, attention, cache, picking, Python). Under the table, one step of 1 and of
n rows split by the profiler (`batch_split`): base weights, attention, LoRA, other ops, Python, and what a row adds.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

import torch

from benchmarks import batch_split, common
from templora_memory.config import TempLoraConfig
from templora_memory.engine import MemoryEngine
from templora_memory.generation import Sampling, generate_tokens
from templora_memory.kv_cache import PromptCache
from templora_memory.reply_batch import ReplyBatch

DEFAULT_DATA = str(common.SHARED_DATA / "pg19")
LORA_STD = 0.02
"""Spread of the random LoRA weights: the replies change, the model stays fluent enough to read."""


def add_parser(subparsers) -> None:
    """Register `batch`."""
    parser = subparsers.add_parser("batch", help="decode tokens/s with 1..8 agents batched, each with its own LoRA")
    common.add_common_options(parser, DEFAULT_DATA, "results/batch.json")
    parser.add_argument("--agents", default="1,2,4,8", help="concurrent agents per row (default: 1,2,4,8)")
    parser.add_argument("--prompt-tokens", type=int, default=256, help="longest agent's prompt (default: 256)")
    parser.add_argument("--reply-tokens", type=int, default=48, help="tokens generated per reply (default: 48)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (default: 3)")
    parser.add_argument("--weights", default="auto", help="decode_weights rows, comma-separated (default: auto)")
    parser.add_argument(
        "--write-tokens", type=int, default=None, help="tokens written beside the replies (default: one chunk; 0: none)"
    )
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Time every row, write the JSON, print the table."""
    started = time.perf_counter()
    common.set_threads(args)
    counts = sorted({int(n) for n in args.agents.split(",") if n.strip()})
    book = sorted(common.existing_data(args.data, "a folder of PG19 .txt books").glob("*.txt"))[0]
    config = common.config_from_args(args)
    result: dict[str, Any] = {"benchmark": "batch", "agents": counts, "weights": {}}
    engine = None
    for weights in [w.strip() for w in args.weights.split(",") if w.strip()]:
        engine = MemoryEngine(args.model, TempLoraConfig(**{**config.model_dump(), "decode_weights": weights}))
        text = engine.encode(book.read_text()[: 40 * args.prompt_tokens * max(counts)])
        prompts = agent_prompts(engine, text, max(counts), args.prompt_tokens)
        key = f"{weights} ({getattr(engine.decoder, 'weights', '-')})"
        result["weights"][key] = decode_rows(engine, prompts, counts, args.reply_tokens, args.repeats)
        if max(counts) > 1:
            result["weights"][key]["step_split"] = batch_split.step_split(engine, prompts, max(counts))
        if "beside_writes" not in result and (args.write_tokens or args.write_tokens is None):
            written = text[-(args.write_tokens or engine.config.chunk_tokens) :]
            result["beside_writes"] = beside_writes(engine, prompts, args.reply_tokens, written)
    result["run"] = common.run_info(engine, args, started)
    common.write_json(args.out, result)
    print(table(result))
    return result


def agent_prompts(engine: MemoryEngine, tokens: list[int], agents: int, longest: int) -> dict[str, list[int]]:
    """`agents` agents, each with a random LoRA and its own prompt: slices of `tokens`, from `longest` tokens down
    by a sixteenth each (different cache lengths in one batch)."""
    generator = torch.Generator().manual_seed(0)
    prompts = {}
    for i in range(agents):
        agent = f"batch-{i}"
        engine.agent(agent)
        with torch.no_grad():
            for parameter in engine.bank.parameters(agent):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * LORA_STD)
        length = max(8, longest - i * longest // 16)
        prompts[agent] = tokens[i * longest : i * longest + length]
    return prompts


def decode_rows(
    engine: MemoryEngine, prompts: dict[str, list[int]], counts: list[int], reply_tokens: int, repeats: int
) -> dict[str, Any]:
    """Per agent count: one-at-a-time and batched tokens/s (medians over `repeats`, rows interleaved), the batched
    replies' agreement with the replies decoded alone, mean rows per step, and the step's cost split."""
    batch = engine.replies
    batch.max_rows = max(counts)
    caches = {agent: PromptCache() for agent in prompts}
    for agent, prompt in prompts.items():  # the prompts into the caches, untimed
        _alone(engine, agent, prompt, 1, caches[agent])
    samples: dict[int, dict[str, list]] = {n: {"alone": [], "batched": [], "rows": []} for n in counts}
    agreement = {}
    for _ in range(repeats):
        for n in counts:
            chosen = dict(list(prompts.items())[:n])
            alone_s, alone_tokens = _time(
                lambda c=chosen: [_alone(engine, a, p, reply_tokens, caches[a]) for a, p in c.items()]
            )
            steps, rows = batch.steps, batch.rows_stepped
            batched_s, batched_tokens = _time(lambda c=chosen: _batched(batch, engine, c, reply_tokens, caches))
            samples[n]["alone"].append(n * reply_tokens / alone_s)
            samples[n]["batched"].append(n * reply_tokens / batched_s)
            stepped = batch.steps - steps
            samples[n]["rows"].append((batch.rows_stepped - rows) / stepped if stepped else 1.0)  # alone: one row
            agreement[n] = sum(a == b for a, b in zip(alone_tokens, batched_tokens, strict=True))
    single = statistics.median(samples[min(counts)]["alone"]) if counts else 1.0
    rows = {}
    for n in counts:
        batched = statistics.median(samples[n]["batched"])
        step_ms = 1000 * n / batched
        weights_ms = base_weights_ms(engine, n)
        rows[str(n)] = {
            "one_at_a_time_tokens_per_s": round(statistics.median(samples[n]["alone"]), 1),
            "batched_tokens_per_s": round(batched, 1),
            "times_single_stream": round(batched / single, 2),
            "same_tokens_as_alone": f"{agreement[n]}/{n}",
            "rows_per_step": round(statistics.median(samples[n]["rows"]), 2),
            "step_ms": round(step_ms, 1),
            "base_weights_ms": round(weights_ms, 1),
            "rest_per_row_ms": round((step_ms - weights_ms) / n, 2),
        }
    return {"single_stream_tokens_per_s": round(single, 1), "rows": rows}


def beside_writes(
    engine: MemoryEngine, prompts: dict[str, list[int]], reply_tokens: int, tokens: list[int]
) -> dict[str, Any]:
    """Writes beside replies: `tokens` written into a fresh agent on a thread of its own while every agent's reply
    is decoded in batch, round after round until the write ends; against each alone. Replies take no lock that
    training holds (but the copy of a joining reply's LoRA), so both go on, sharing the CPU."""
    caches = {agent: PromptCache() for agent in prompts}
    for agent, prompt in prompts.items():  # the prompts into the caches, untimed
        _alone(engine, agent, prompt, 1, caches[agent])
    write_alone, _ = _time(lambda: engine.write_tokens("batch-writer-alone", tokens))
    decode_alone, _ = _time(lambda: _batched(engine.replies, engine, prompts, reply_tokens, caches))
    written = threading.Event()
    timing: dict[str, float] = {}

    def write() -> None:
        try:
            timing["write"], _ = _time(lambda: engine.write_tokens("batch-writer-beside", tokens))
        finally:
            written.set()

    thread = threading.Thread(target=write)
    thread.start()
    began, rounds = time.perf_counter(), 0
    while not rounds or not written.is_set():
        _batched(engine.replies, engine, prompts, reply_tokens, caches)
        rounds += 1
    decode_beside = (time.perf_counter() - began) / rounds
    thread.join()
    tokens_per_round = len(prompts) * reply_tokens
    return {
        "agents": len(prompts),
        "tokens_written": len(tokens),
        "write_s_alone": round(write_alone, 1),
        "write_s_beside_replies": round(timing["write"], 1),
        "decode_tokens_per_s_alone": round(tokens_per_round / decode_alone, 1),
        "decode_tokens_per_s_beside_write": round(tokens_per_round / decode_beside, 1),
        "decode_rounds_beside_write": rounds,
    }


def _alone(engine: MemoryEngine, agent: str, prompt: list[int], n: int, cache: PromptCache) -> list[int]:
    """One reply of `n` greedy tokens on today's single path (the agent's LoRA on the decode model)."""
    sampling = Sampling(max_new_tokens=n, ignore_eos=True)
    with engine.decoder.active(engine.bank, agent) as model:
        return list(generate_tokens(model, prompt, sampling, set(), cache))


def _batched(
    batch: ReplyBatch, engine: MemoryEngine, prompts: dict[str, list[int]], n: int, caches: dict[str, PromptCache]
) -> list[list[int]]:
    """The agents' replies of `n` greedy tokens decoded in one batch, read round-robin by this thread."""
    sampling = Sampling(max_new_tokens=n, ignore_eos=True)
    streams = [batch.tokens(agent, prompt, sampling, set(), caches[agent]) for agent, prompt in prompts.items()]
    replies: list[list[int]] = [[] for _ in streams]
    live = list(range(len(streams)))
    while live:
        for i in list(live):
            token = next(streams[i], None)
            if token is None:
                live.remove(i)
            else:
                replies[i].append(token)
    return replies


def _time(run) -> tuple[float, Any]:
    started = time.perf_counter()
    out = run()
    return time.perf_counter() - started, out


@torch.no_grad()
def base_weights_ms(engine: MemoryEngine, rows: int, repeats: int = 5) -> float:
    """Milliseconds of one pass through every linear layer of the decode model (output head included) with its base
    weights alone, for `rows` rows of one token: what a batched step shares."""
    layers = list(engine.decoder.layers.values())
    inputs = [torch.randn(rows, 1, layer.weight.shape[1]) for layer in layers]
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for layer, x in zip(layers, inputs, strict=True):
            layer(x)
        timings.append(time.perf_counter() - started)
    return 1000 * statistics.median(timings)


def table(result: dict[str, Any]) -> str:
    """The printed summary: one block per decode_weights row."""
    lines = []
    for weights, block in result["weights"].items():
        lines.append(
            f"decode_weights={weights}: single stream {block['single_stream_tokens_per_s']} tokens/s "
            f"(torch threads {result['run']['torch_threads']}, load average {result['run']['machine']['load_average']})"
        )
        lines.append(
            f"{'agents':>6} {'one at a time':>14} {'batched':>9} {'× single':>9} {'same tokens':>12} "
            f"{'rows/step':>10} {'step ms':>8} {'base weights ms':>16} {'rest ms/row':>12}"
        )
        for n, row in block["rows"].items():
            lines.append(
                f"{n:>6} {row['one_at_a_time_tokens_per_s']:>14} {row['batched_tokens_per_s']:>9} "
                f"{row['times_single_stream']:>9} {row['same_tokens_as_alone']:>12} {row['rows_per_step']:>10} "
                f"{row['step_ms']:>8} {row['base_weights_ms']:>16} {row['rest_per_row_ms']:>12}"
            )
        if "step_split" in block:
            lines.extend(batch_split.split_lines(block["step_split"]))
    if beside := result.get("beside_writes"):
        lines.append(
            f"writes beside replies ({beside['agents']} agents decoding, {beside['tokens_written']} tokens written): "
            f"write {beside['write_s_alone']} s alone, {beside['write_s_beside_replies']} s beside replies; decode "
            f"{beside['decode_tokens_per_s_alone']} tokens/s alone, {beside['decode_tokens_per_s_beside_write']} "
            f"beside the write ({beside['decode_rounds_beside_write']} rounds)"
        )
    return "\n".join(lines)
