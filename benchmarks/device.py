"""`python -m benchmarks device --device cuda|cpu|auto`: what Temp-Lora costs on a device, for models of real sizes.

Randomly initialised models built from the shapes in `benchmarks/shapes/` (SmolLM2-135M, a Llama-3.2-1B-shaped and a
Llama-2-7B-shaped model; shapes only, no weights, nothing downloaded) run the engine on the device. For each size:
seconds of training per 1K tokens written (a plain Temp-Lora update: the chunk, its L_T context and `epochs` steps;
probes and anchors off unless asked) against seconds per 1K tokens generated, as the paper's "training costs 7 % of
generation time" (§3.3, 7B on a GPU); decode tokens/s without and with an adapter; prefill tokens/s; and the memory
of one agent (LoRA and optimizer in device memory; what it stores with the configured storage, by default an fp32
adapter and the moments, and in the opt-in compact form, a bf16 adapter alone). One table; `--sizes` picks the models
(default: all three on a GPU, 135m on the CPU, where the 1B and 7B take too long). No dependency beyond the library.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from templora_memory.config import TempLoraConfig, add_config_options, config_from_args
from templora_memory.devices import resolve_device, weights_dtype
from templora_memory.engine import MemoryEngine
from templora_memory.generation import Sampling

SHAPES = Path(__file__).parent / "shapes"
SIZES = {"tiny": "tiny.json", "135m": "smollm2-135m.json", "1b": "llama-1b.json", "7b": "llama-7b.json"}
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
AGENT = "bench"


def add_parser(subparsers) -> None:
    """Register `device`."""
    parser = subparsers.add_parser("device", help="training vs generation cost, decode/prefill rates on a device")
    parser.add_argument("--sizes", default=None, help="comma-separated of tiny,135m,1b,7b (default: by device)")
    parser.add_argument("--chunks", type=int, default=3, help="chunks written per size, the first as warm-up")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per timed reply (default: 64)")
    parser.add_argument("--out", default="results/device.json", help="JSON results (default: results/device.json)")
    add_config_options(parser, chunk_tokens=1024, train_context_tokens=1024, window_tokens=1024, anchor_probes=0)
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every size on the device; print one table and write the JSON."""
    config = config_from_args(args)
    device = resolve_device(config.device)
    sizes = (args.sizes or ("135m,1b,7b" if device.type == "cuda" else "135m")).split(",")
    rows = [measure(size, config, device, args.chunks, args.new_tokens) for size in sizes]
    result = {"device": _device_name(device), "config": config.model_dump(), "rows": rows}
    print_table(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def measure(size: str, config: TempLoraConfig, device: torch.device, chunks: int, new_tokens: int) -> dict[str, Any]:
    """One size's row: training and generation seconds per 1K tokens, decode and prefill rates, memory per agent."""
    model_config = AutoConfig.for_model(**json.loads((SHAPES / SIZES[size]).read_text()))
    tokenizer = word_tokenizer(model_config.vocab_size)
    with torch.device(device):  # initialised in place: a 7B model never passes through host RAM
        model = AutoModelForCausalLM.from_config(model_config, dtype=weights_dtype(device))
    engine = MemoryEngine(config=config, loaded=(model.eval(), tokenizer, size))
    ids = random.Random(0).choices(range(16, model_config.vocab_size), k=config.chunk_tokens * (chunks + 1))
    engine.write_tokens(AGENT, ids[: config.chunk_tokens])  # warm-up: kernels, allocator, the optimizer
    before = engine.stats(AGENT)
    _sync(device)
    started = time.perf_counter()
    engine.write_tokens(AGENT, ids[config.chunk_tokens : config.chunk_tokens * chunks])
    _sync(device)
    train = (time.perf_counter() - started) / (engine.stats(AGENT).tokens_written - before.tokens_written)
    prompt = ids[-config.window_tokens :]
    decode = {who: _decode_seconds(engine, who, prompt, new_tokens, device) for who in (None, AGENT)}
    return {
        "size": size,
        "parameters": sum(p.numel() for name, p in model.named_parameters() if "lora_" not in name),  # the base
        "train_s_per_1k_written": round(1000 * train, 3),
        "generate_s_per_1k": round(1000 * decode[AGENT], 3),
        "train_vs_generate": round(train / decode[AGENT], 3),
        "decode_tok_s_base": round(1 / decode[None], 1),
        "decode_tok_s_adapter": round(1 / decode[AGENT], 1),
        "prefill_tok_s": round(_prefill_rate(engine, prompt, device), 1),
        **_agent_memory(engine),
        "peak_device_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `vocab_size` made-up words with ChatML specials (only ids matter here)."""
    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {word: i for i, word in enumerate([*specials, *(f"w{i}" for i in range(vocab_size - len(specials)))])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>")
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    tokenizer.chat_template = CHATML
    return tokenizer


def _decode_seconds(engine: MemoryEngine, agent: str | None, prompt: list[int], tokens: int, device) -> float:
    """Seconds per generated token after `prompt` (its prefill excluded), with the agent's adapter or none."""
    sampling = Sampling(max_new_tokens=tokens, ignore_eos=True)
    stream = engine.stream_completion(agent, prompt, sampling)
    next(stream)  # the prompt's prefill and the first token
    _sync(device)
    started = time.perf_counter()
    count = sum(1 for _ in stream)
    _sync(device)
    return (time.perf_counter() - started) / max(count, 1)


def _prefill_rate(engine: MemoryEngine, prompt: list[int], device) -> float:
    """Prompt tokens per second of one forward pass over the prompt (no adapter)."""
    engine.log_likelihood(None, prompt[:-1], prompt[-1:])  # warm-up
    _sync(device)
    started = time.perf_counter()
    engine.log_likelihood(None, prompt[:-1], prompt[-1:])
    _sync(device)
    return len(prompt) / (time.perf_counter() - started)


def _agent_memory(engine: MemoryEngine) -> dict[str, float]:
    """One agent's LoRA and AdamW moments in device memory, and the tensor bytes it stores as configured (the adapter
    in `adapter_dtype`, the moments with `store_optimizer`; by default fp32 and stored) and in the opt-in compact
    form (a bf16 adapter, no moments)."""
    parameters = engine.bank.parameters(AGENT)
    lora = sum(p.numel() * p.element_size() for p in parameters)
    adapter = sum(p.numel() for p in parameters) * (2 if engine.config.adapter_dtype == "bf16" else 4)
    stored = adapter + (2 * lora if engine.config.store_optimizer else 0)
    compact = sum(p.numel() for p in parameters) * 2
    return {"agent_lora_mb": round(lora / 1e6, 1), "agent_optimizer_mb": round(2 * lora / 1e6, 1),
            "agent_stored_mb": round(stored / 1e6, 1), "agent_stored_compact_mb": round(compact / 1e6, 1)}  # fmt: skip


def print_table(result: dict[str, Any]) -> None:
    """The rows as one aligned text table, the device named above it."""
    print(f"device: {result['device']}")
    columns = list(result["rows"][0])
    widths = [max(len(name), *(len(str(row[name])) for row in result["rows"])) + 2 for name in columns]
    print("".join(f"{name:>{width}}" for name, width in zip(columns, widths, strict=True)))
    for row in result["rows"]:
        print("".join(f"{str(row[name]):>{width}}" for name, width in zip(columns, widths, strict=True)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda, {weights_dtype(device)})"
    return f"{device.type} ({torch.get_num_threads()} threads, {weights_dtype(device)})"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device")
    add_parser(parser.add_subparsers(dest="bench", required=True))
    parsed = parser.parse_args(["device", *sys.argv[1:]])
    parsed.run(parsed)
