"""`python -m benchmarks speed`: decode tokens/s and time to first token, side by side, on one PG19 text.

Rows (same prompt, same reply length, end-of-sequence ignored, greedy): the engine with a trained adapter
under each `decode_weights` lever, the engine on the base model, plain `transformers` `generate` on the
fp32 model, and, when `llama-cpp-python` (the `llamacpp` extra) is installed, llama.cpp on the same GGUF file
and the engine with the adapter on the llama.cpp backend (`decode_backend="llama.cpp"`), whose greedy tokens
and logits are also compared with the torch path's for the same adapter. Rows are interleaved and repeated;
medians are reported. Also: time to first token when a caller-kept cache already holds the window (cache
reuse), seconds per 1K tokens written per write recipe next to seconds per 1K generated, each lever's quality
(its reply vs the fp32 lever's; perplexity of PG19 text fed token by token through the decode path) and peak
memory (one fresh process per lever).
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

from benchmarks import common
from templora_memory.config import TempLoraConfig
from templora_memory.engine import MemoryEngine
from templora_memory.generation import Sampling, continuation_logits, generate_tokens
from templora_memory.kv_cache import PromptCache, common_prefix, growing_cache
from templora_memory.loading import default_gguf_path, load_model

DEFAULT_DATA = str(common.SHARED_DATA / "pg19")
LEVERS = ("fp32", "bf16", "int8", "int4")
"""`decode_weights` values timed as rows (the default, "auto", resolves to one of them)."""
WRITE_RECIPES: dict[str, dict[str, Any]] = {"shipped": {}}
"""Write-cost rows: `TempLoraConfig` overrides per recipe, on top of the command's config ("shipped": none)."""
AGENT = "speed"
LLAMA_MISSING = "llama-cpp-python is not installed (extra: llamacpp)"
BACKEND_ROW = "engine adapter, llama.cpp backend"
NEW_TURN_TOKENS = 32


def add_parser(subparsers) -> None:
    """Register `speed`."""
    parser = subparsers.add_parser("speed", help="decode tokens/s, time to first token, write cost, memory per lever")
    common.add_common_options(parser, DEFAULT_DATA, "results/speed.json")
    parser.add_argument("--windows", default="256,1024,4096", help="prompt sizes in tokens (default: 256,1024,4096)")
    parser.add_argument("--reply-tokens", type=int, default=96, help="tokens generated per reply (default: 96)")
    parser.add_argument("--repeats", type=int, default=2, help="timed replies per row and window (default: 2)")
    parser.add_argument("--levers", default=",".join(LEVERS), help=f"decode_weights rows (default: {','.join(LEVERS)})")
    parser.add_argument("--write-tokens", type=int, default=1024, help="tokens written per recipe (default: 1024)")
    parser.add_argument("--quality-tokens", type=int, default=256, help="PG19 tokens scored per lever (default: 256)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-lever memory processes")
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run every part, write the JSON, print the tables."""
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = common.config_from_args(args)
    windows = sorted(int(w) for w in args.windows.split(",") if w.strip())
    levers = [lever.strip() for lever in args.levers.split(",") if lever.strip()]
    book = sorted(common.existing_data(args.data, "a folder of PG19 .txt books").glob("*.txt"))[0]
    store = tempfile.TemporaryDirectory(prefix="speed-store-")  # lever engines read the trained agent from it
    engine = MemoryEngine(args.model, config, store=store.name)
    text = book.read_text()
    tokens = engine.encode(text[: 60 * (max(windows) + args.write_tokens + args.quality_tokens)])
    result: dict[str, Any] = {"benchmark": "speed", "default_decode_weights": getattr(engine.decoder, "weights", "-")}
    written = tokens[: args.write_tokens]
    result["write"] = {
        name: write_cost(_with(config, overrides), written, args.model, None if overrides else engine)
        for name, overrides in WRITE_RECIPES.items()
    }
    engines = {
        f"adapter, {lever}": MemoryEngine(args.model, _with(config, {"decode_weights": lever}), store=store.name)
        for lever in levers
    }
    backend = llama_backend_engine(args.model, config, store.name)
    owners = [engine, *engines.values(), *([backend] if backend is not None else [])]  # take turns holding AGENT
    result["speed"] = speed_rows(engine, engines, tokens[args.write_tokens :], windows, args, backend)
    result["llama_cpp_backend"] = (
        backend_agreement(engine, backend, tokens[args.write_tokens :][: min(windows)], args.reply_tokens, owners)
        if backend is not None
        else {"skipped": LLAMA_MISSING}
    )
    generated = result["speed"]["engine default, adapter"].get(str(min(windows, key=lambda w: abs(w - 1024))), {})
    result["generate_seconds_per_1k"] = round(1000 / generated["tokens_per_s"], 1) if generated else None
    result["cache_reuse_ttft_s"] = {str(w): cache_reuse_ttft(_take(engine, owners), tokens, w) for w in windows}
    quality_text = tokens[-args.quality_tokens :]
    result["quality"] = {name: decode_quality(_take(each, owners), quality_text) for name, each in engines.items()}
    if not args.no_memory:
        result["memory"] = {lever: memory_in_fresh_process(args.model, lever, args.threads) for lever in levers}
    result["run"] = common.run_info(engine, args, started)
    common.write_json(args.out, result)
    print(table(result))
    return result


# ----- rows ---------------------------------------------------------------------------------


def speed_rows(
    engine: MemoryEngine, engines: dict[str, MemoryEngine], tokens, windows, args, backend: MemoryEngine | None
) -> dict[str, Any]:
    """Median decode tokens/s and time to first token per row and window, rows interleaved `repeats` times."""
    owners = [engine, *engines.values(), *([backend] if backend is not None else [])]
    rows = {"engine default, adapter": _timer(engine, owners)}
    rows["engine default, base model"] = lambda p, n: engine_timing(engine, None, p, n)
    rows.update({f"engine {name}": _timer(each, owners) for name, each in engines.items()})
    hf_model, _, _ = load_model(args.model)
    rows["transformers generate (fp32)"] = lambda p, n: transformers_timing(hf_model, p, n)
    context = max(windows) + args.reply_tokens + 8
    llama = llama_cpp_model(context, torch.get_num_threads()) if args.model is None else None
    if llama is not None:
        rows["llama.cpp (GGUF Q4_1/Q8_0)"] = lambda p, n: llama_cpp_timing(llama, p, n)
    if backend is not None:
        rows[BACKEND_ROW] = _timer(backend, owners)
    samples: dict[str, dict[str, list[dict]]] = {name: {} for name in rows}
    for window in common.progress(windows, args.quiet, desc="windows"):
        for _ in range(args.repeats):
            for name, timed in rows.items():
                samples[name].setdefault(str(window), []).append(timed(tokens[:window], args.reply_tokens))
    summary = {name: {w: _median(runs) for w, runs in by_window.items()} for name, by_window in samples.items()}
    if llama is None:
        summary["llama.cpp (GGUF Q4_1/Q8_0)"] = {"skipped": LLAMA_MISSING}
    if backend is None:
        summary[BACKEND_ROW] = {"skipped": LLAMA_MISSING}
    return summary


def llama_backend_engine(model: str | None, config: TempLoraConfig, store: str) -> MemoryEngine | None:
    """An engine on the llama.cpp backend reading the trained agent from `store`; None without llama-cpp-python."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    return MemoryEngine(model, _with(config, {"decode_backend": "llama.cpp"}), store=store)


def backend_agreement(
    engine: MemoryEngine, backend: MemoryEngine, prompt: list[int], n: int, owners: list[MemoryEngine]
) -> dict[str, Any]:
    """The llama.cpp backend next to the torch path with the same trained adapter: how many of the first `n` greedy
    tokens agree, and on the torch path's greedy tokens (teacher-forced) the largest logit difference from the
    exact fp32 adapter model and the share of positions with the same top token; the base model's figures show
    llama.cpp's own quantisation noise (Q8 activations) without any adapter."""
    sampling = Sampling(max_new_tokens=n, ignore_eos=True)
    with torch.no_grad(), _take(engine, owners).decoder.active(engine.bank, AGENT) as model:
        ours = list(generate_tokens(model, prompt, sampling, set()))
    exact = {}
    for agent in (AGENT, None):
        with torch.no_grad(), engine.decoder.active(engine.bank, agent) as model:
            exact[agent] = continuation_logits(model, prompt, ours)  # (n, V): one call of > 8 rows runs in fp32
    with _take(backend, owners).decoder.active(backend.bank, AGENT) as source:
        theirs = list(generate_tokens(source, prompt, sampling, set()))
    leading = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), n)
    result = {"greedy_tokens_compared": n, "leading_tokens_equal": leading}
    result["tokens_equal"] = sum(a == b for a, b in zip(ours, theirs, strict=True))
    for agent, label in ((AGENT, "adapter"), (None, "base")):
        with backend.decoder.active(backend.bank, agent) as source:
            got = torch.stack([source.next_logits(list(prompt)), *(source.next_logits([t]) for t in ours[:-1])])
        result[f"{label}_max_abs_logit_diff"] = round(float((got - exact[agent]).abs().max()), 3)
        result[f"{label}_top1_agreement"] = round(float((got.argmax(-1) == exact[agent].argmax(-1)).float().mean()), 3)
    result["adapter_effect_max_abs_logit"] = round(float((exact[AGENT] - exact[None]).abs().max()), 3)
    return result


def engine_timing(engine: MemoryEngine, agent: str | None, prompt: list[int], n: int) -> dict[str, Any]:
    """Time one greedy reply of `n` tokens through the engine's public `stream_completion`."""
    started = time.perf_counter()
    stream = engine.stream_completion(agent, prompt, Sampling(max_new_tokens=n, ignore_eos=True))
    pieces, first = [], None
    for piece in stream:
        first = first or time.perf_counter()
        pieces.append(piece)
    ended = time.perf_counter()
    return _timing(first - started, stream.reply.completion_tokens, ended - first, "".join(pieces))


def transformers_timing(model, prompt: list[int], n: int) -> dict[str, Any]:
    """`generate` with 1 new token (time to first token), then with `n`; decode rate from the difference."""
    ids = torch.tensor([prompt])
    kwargs = {"do_sample": False, "attention_mask": torch.ones_like(ids), "pad_token_id": 0}
    started = time.perf_counter()
    model.generate(ids, max_new_tokens=1, **kwargs)
    first = time.perf_counter() - started
    started = time.perf_counter()
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
    return _timing(first, out.shape[1] - ids.shape[1], time.perf_counter() - started - first, "")


def llama_cpp_model(context: int, threads: int):
    """llama.cpp on the embedded GGUF file, or None when `llama-cpp-python` is not installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from llama_cpp import Llama

    return Llama(model_path=str(default_gguf_path()), n_ctx=context, n_threads=threads, verbose=False)


def llama_cpp_timing(llama, prompt: list[int], n: int) -> dict[str, Any]:
    """Greedy completion of `n` tokens from a reset context (end-of-sequence banned), streamed."""
    llama.reset()
    started = time.perf_counter()
    ban = {llama.token_eos(): -1e9}
    pieces, first, count = [], None, 0
    for chunk in llama.create_completion(prompt, max_tokens=n, temperature=0.0, stream=True, logit_bias=ban):
        first = first or time.perf_counter()
        pieces.append(chunk["choices"][0]["text"])
        count += 1
    return _timing(first - started, count, time.perf_counter() - first, "".join(pieces))


def cache_reuse_ttft(engine: MemoryEngine, tokens: list[int], window: int) -> float:
    """Time to first token for a new 32-token turn when a caller-kept cache already holds the `window` before it."""
    cache, sampling = PromptCache(), Sampling(max_new_tokens=1, ignore_eos=True)
    engine.stream_completion(AGENT, tokens[:window], sampling, cache=cache).result()
    started = time.perf_counter()
    next(iter(engine.stream_completion(AGENT, tokens[: window + NEW_TURN_TOKENS], sampling, cache=cache)), None)
    return round(time.perf_counter() - started, 3)


def write_cost(config: TempLoraConfig, tokens: list[int], model: str | None, engine: MemoryEngine | None = None):
    """Seconds per 1K tokens written into a fresh agent's adapter under `config` (one write recipe), by wall clock
    and as the engine's own training seconds; `engine` reuses a loaded engine with that config."""
    engine = engine or MemoryEngine(model, config)
    started = time.perf_counter()
    engine.write_tokens(AGENT, tokens)
    engine.wait(AGENT)
    wall, stats = time.perf_counter() - started, engine.stats(AGENT)
    per_1k = 1000 / max(1, stats.tokens_written)
    return {
        "tokens_written": stats.tokens_written,
        "seconds_per_1k": round(wall * per_1k, 1),
        "train_seconds_per_1k": round(stats.train_seconds * per_1k, 1),
    }


def decode_quality(engine: MemoryEngine, tokens: list[int]) -> dict[str, float]:
    """Perplexity of `tokens` fed one at a time through the decode model with the agent's adapter (the path each
    reply token takes; longer prompts run on the fp32 weights)."""
    past, nll = growing_cache(), 0.0
    with torch.no_grad(), engine.decoder.active(engine.bank, AGENT) as model:
        for token, target in zip(tokens[:-1], tokens[1:], strict=True):
            logits = model(input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True).logits[0, -1]
            nll -= torch.log_softmax(logits.float(), dim=-1)[target].item()
    return {"ppl": round(float(torch.tensor(nll / (len(tokens) - 1)).exp()), 3)}


def memory_in_fresh_process(model: str | None, lever: str, threads: int | None) -> dict[str, Any]:
    """`memory_probe` in a new process, so that its peaks are this lever's alone."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(memory_probe, model, lever, threads).result()


def memory_probe(model: str | None, lever: str, threads: int | None, agents: int = 4) -> dict[str, Any]:
    """RSS of the loaded engine (base model + decode copy, after a base-model reply) and per resident agent after
    one reply each (MiB)."""
    if threads:
        torch.set_num_threads(threads)
    before = common.rss_mib()
    with common.PeakRSS() as load_peak:
        engine = MemoryEngine(model, TempLoraConfig(decode_weights=lever))
        prompt = engine.encode("The old mill by the river was built " * 40)
        engine.stream_completion(None, prompt, Sampling(max_new_tokens=2)).result()  # every weight paged in
    with common.PeakRSS() as reply_peak:  # returns freed heap (quantisation temporaries) to the OS first
        loaded = common.rss_mib()
        for i in range(agents):
            engine.stream_completion(f"m{i}", prompt, Sampling(max_new_tokens=8, ignore_eos=True)).result()
    return {
        "engine_mib": round(loaded - before, 1),
        "load_peak_mib": load_peak.peak_mib,
        "decode_copy_mib": round(engine.decoder.nbytes() / 2**20, 1),
        "per_agent_mib": round((common.rss_mib() - loaded) / agents, 1),
        "reply_peak_mib": reply_peak.peak_mib,
    }


# ----- helpers and table ----------------------------------------------------------------------


def _with(config: TempLoraConfig, overrides: dict[str, Any]) -> TempLoraConfig:
    return TempLoraConfig(**{**config.model_dump(), **overrides})


def _timer(engine: MemoryEngine, owners: list[MemoryEngine]):
    return lambda prompt, n: engine_timing(_take(engine, owners), AGENT, prompt, n)


def _take(engine: MemoryEngine, owners: list[MemoryEngine]) -> MemoryEngine:
    """`engine` with the agent in RAM, released first by the other engines: each holds the agent's store lease
    while it keeps the agent, so one engine's load would wait for another's (untimed)."""
    for other in owners:
        if other is not engine:
            other.release(AGENT)
    engine.agent(AGENT)
    return engine


def _timing(first_s: float, tokens: int, rest_s: float, text: str) -> dict[str, Any]:
    return {"ttft_s": first_s, "tokens_per_s": (tokens - 1) / max(rest_s, 1e-9), "text": text}


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in runs), 1),
        "ttft_s": round(statistics.median(r["ttft_s"] for r in runs), 3),
        "text": runs[0]["text"],
    }


def table(result: dict[str, Any]) -> str:
    """The printed summary: speed per row and window, cache reuse, write cost, quality and memory per lever."""
    windows = sorted({w for row in result["speed"].values() for w in row if w != "skipped"}, key=int)
    lines = [f"decode tokens/s | time to first token (s), default decode_weights={result['default_decode_weights']}"]
    lines.append(f"{'row':<36}" + "".join(f"{w + ' tokens':>20}" for w in windows))
    for name, row in result["speed"].items():
        if "skipped" in row:
            lines.append(f"{name:<36}  skipped: {row['skipped']}")
            continue
        cells = "".join(f"{row[w]['tokens_per_s']:>11} | {row[w]['ttft_s']:>6}" for w in windows)
        lines.append(f"{name:<36}{cells}")
    lines.append(
        "llama.cpp backend vs torch, same adapter: "
        + ", ".join(f"{k} {v}" for k, v in result.get("llama_cpp_backend", {}).items())
    )
    reuse = ", ".join(f"{w}: {s} s" for w, s in result["cache_reuse_ttft_s"].items())
    lines.append(f"time to first token, cache reuse (+{NEW_TURN_TOKENS} new tokens after the window): {reuse}")
    for name, cost in result["write"].items():
        lines.append(
            f"write cost [{name}]: {cost['seconds_per_1k']} s per 1K tokens written "
            f"({cost['train_seconds_per_1k']} s training) vs {result['generate_seconds_per_1k']} s per 1K generated"
        )
    reference = result["speed"].get("engine adapter, fp32", {})
    for name, quality in result["quality"].items():
        texts = [(result["speed"][f"engine {name}"][w]["text"], reference.get(w, {}).get("text", "")) for w in windows]
        same = ", ".join(f"{common_prefix(a, b)}/{len(b)}" for a, b in texts)
        lines.append(f"quality [{name}]: PG19 ppl {quality['ppl']}, reply characters equal to the fp32 lever's: {same}")
    for lever, memory in result.get("memory", {}).items():
        lines.append(f"memory [{lever}]: " + ", ".join(f"{k} {v}" for k, v in memory.items()))
    return "\n".join(lines)
