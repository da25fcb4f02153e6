"""`python -m benchmarks constrain`: which structured-generation library to constrain decoding with, on this CPU.

For llguidance, xgrammar and outlines-core (each when installed), with the default model's tokenizer:
the one-time tokenizer setup, the compile time of each schema (cache off: what a new schema costs), and
per generated token the time to compute the allowed-token mask and to advance past the token, walking a
valid answer token by token. With `--generate N` it also times N greedy replies of the default model with
and without the constraint (tokens/s), through the library templora-memory uses.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks import common

# Each case: a JSON schema and one answer that satisfies it (its tokens are walked through the matcher).
CASES: dict[str, tuple[dict[str, Any], Any]] = {
    "tool_call": (
        {
            "type": "object",
            "properties": {
                "name": {"const": "add"},
                "arguments": {
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"],
                },
            },
            "required": ["name", "arguments"],
        },
        {"name": "add", "arguments": {"a": 2, "b": 3}},
    ),
    "person": (
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
        },
        {"name": "Ada Lovelace", "age": 36},
    ),
    "nested": (
        {
            "type": "object",
            "properties": {
                "customer": {"type": "string", "maxLength": 40},
                "status": {"enum": ["open", "paid", "shipped"]},
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
                        "required": ["sku", "qty"],
                    },
                },
                "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
            "required": ["customer", "status", "items"],
        },
        {"customer": "Mara", "status": "paid", "items": [{"sku": "BR-1", "qty": 2}, {"sku": "CK-7", "qty": 1}]},
    ),
    "any_object": ({"type": "object"}, {"answer": "blue", "confidence": 0.9, "tags": ["sky", "colour"]}),
}


def add_parser(subparsers) -> None:
    """Register `constrain`."""
    parser = subparsers.add_parser(
        "constrain", help="constrained decoding: compile and per-token mask time per library"
    )
    common.add_common_options(parser, "", "results/constrain.json")
    parser.add_argument("--libraries", default="llguidance,xgrammar,outlines-core", help="libraries to compare")
    parser.add_argument("--repeats", type=int, default=3, help="compiles and walks per schema (default: 3)")
    parser.add_argument(
        "--generate", type=int, default=0, help="also time this many replies with and without a constraint (default: 0)"
    )
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark, write JSON, print the tables."""
    started = time.perf_counter()
    engine = common.engine_from_args(args)
    libraries = {}
    for name in [n.strip() for n in args.libraries.split(",") if n.strip()]:
        libraries[name] = measure_library(name, engine.tokenizer, args.repeats)
    result: dict[str, Any] = {"benchmark": "constrain", "vocab_size": len(engine.tokenizer), "libraries": libraries}
    if args.generate:
        result["generation"] = measure_generation(engine, args.generate)
    result["run"] = common.run_info(engine, args, started)
    common.write_json(args.out, result)
    print_tables(result)
    return result


# ----- library measurements -------------------------------------------------------------------


def measure_library(name: str, tokenizer, repeats: int) -> dict[str, Any]:
    """Setup, compile and per-token times of one library over every case (or why it could not run)."""
    if name not in BACKENDS:
        return {"error": f"unknown library; choose from {', '.join(BACKENDS)}"}
    try:
        backend = BACKENDS[name]()
    except ImportError as exc:
        return {"error": f"not installed: {exc}"}
    started = time.perf_counter()
    backend.setup(tokenizer)
    result: dict[str, Any] = {"setup_ms": _ms(time.perf_counter() - started), "cases": {}}
    for case, (schema, answer) in CASES.items():
        tokens = tokenizer(json.dumps(answer), add_special_tokens=False)["input_ids"]
        compile_s, first_s, mask_s, advance_s = [], [], [], []
        for _ in range(repeats):
            started = time.perf_counter()
            compiled = backend.compile(schema)
            compile_s.append(time.perf_counter() - started)
            first_s.append(walk(backend, compiled, tokens, mask_s, advance_s))
        result["cases"][case] = {
            "tokens": len(tokens),
            "compile_ms": _ms(statistics.median(compile_s)),
            "first_mask_ms": _ms(statistics.median(first_s)),
            "mask_us_mean": round(1e6 * statistics.mean(mask_s), 1),
            "mask_us_max": round(1e6 * max(mask_s), 1),
            "advance_us_mean": round(1e6 * statistics.mean(advance_s), 1),
        }
    return result


def walk(backend, compiled, tokens: list[int], mask_s: list[float], advance_s: list[float]) -> float:
    """Follow a valid answer token by token: compute each mask, check the token is allowed, advance.

    Returns the first mask's time (lazy libraries finish compiling there); later masks go to `mask_s`.
    """
    state = backend.start(compiled)
    first = 0.0
    for index, token in enumerate(tokens):
        started = time.perf_counter()
        bitmask = backend.mask(state)
        elapsed = time.perf_counter() - started
        first, _ = (elapsed, None) if index == 0 else (first, mask_s.append(elapsed))
        if not (int(bitmask[token // 32]) >> (token % 32)) & 1:
            raise AssertionError(f"{type(backend).__name__} forbids token {token} of a valid answer")
        started = time.perf_counter()
        backend.advance(state, token)
        advance_s.append(time.perf_counter() - started)
    return first


class _LLGuidance:
    def __init__(self) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.lib = llguidance

    def setup(self, tokenizer) -> None:
        self.tokenizer = self.lib.hf.from_tokenizer(tokenizer)
        self.vocab = len(tokenizer)

    def compile(self, schema):
        matcher = self.lib.LLMatcher(self.tokenizer, self.lib.LLMatcher.grammar_from_json_schema(schema))
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return matcher

    def start(self, compiled):
        return [compiled.deep_copy(), self.lib.torch.allocate_token_bitmask(1, self.tokenizer.vocab_size)]

    def mask(self, state):
        self.lib.torch.fill_next_token_bitmask(state[0], state[1])
        return state[1][0]

    def advance(self, state, token: int) -> None:
        state[0].consume_token(token)


class _XGrammar:
    def __init__(self) -> None:
        import xgrammar

        self.lib = xgrammar

    def setup(self, tokenizer) -> None:
        self.info = self.lib.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
        self.compiler = self.lib.GrammarCompiler(self.info, cache_enabled=False)
        self.vocab = len(tokenizer)

    def compile(self, schema):
        if schema == {"type": "object"}:
            return self.compiler.compile_builtin_json_grammar()
        return self.compiler.compile_json_schema(json.dumps(schema))

    def start(self, compiled):
        return [self.lib.GrammarMatcher(compiled), self.lib.allocate_token_bitmask(1, self.info.vocab_size)]

    def mask(self, state):
        state[0].fill_next_token_bitmask(state[1])
        return state[1][0]

    def advance(self, state, token: int) -> None:
        state[0].accept_token(token)


class _OutlinesCore:
    def __init__(self) -> None:
        import outlines_core
        import outlines_core.json_schema

        self.lib = outlines_core

    def setup(self, tokenizer) -> None:
        import torch

        decoder = _byte_decoder()
        tokens: dict[bytes, list[int]] = {}
        for text, token_id in tokenizer.get_vocab().items():
            if token_id in tokenizer.all_special_ids:
                continue
            tokens.setdefault(bytes(decoder[c] for c in text), []).append(token_id)
        self.vocabulary = self.lib.Vocabulary(tokenizer.eos_token_id, tokens)
        self.vocab = len(tokenizer)
        self.torch = torch

    def compile(self, schema):
        regex = self.lib.json_schema.build_regex_from_schema(json.dumps(schema))
        return self.lib.Index(regex, self.vocabulary)

    def start(self, compiled):
        return [self.lib.Guide(compiled), self.torch.zeros((self.vocab + 31) // 32, dtype=self.torch.int32)]

    def mask(self, state):
        bitmask = state[1]
        state[0].write_mask_into(bitmask.data_ptr(), bitmask.numel(), bitmask.element_size())
        return bitmask

    def advance(self, state, token: int) -> None:
        state[0].advance(token)


def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE: the printable character standing for each byte, inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


BACKENDS: dict[str, Callable[[], Any]] = {
    "llguidance": _LLGuidance,
    "xgrammar": _XGrammar,
    "outlines-core": _OutlinesCore,
}


# ----- generation speed ----------------------------------------------------------------------


def measure_generation(engine, replies: int) -> dict[str, Any]:
    """Greedy decoding tokens/s of the default model asked for a JSON person, free and constrained (same prompt).

    Timed from the first text on (the prompt pass is the same for both); the grammar is compiled before the
    timed replies (it is cached per schema), so the difference is the per-token cost of masking and advancing.
    """
    from templora_memory.constrained import json_grammar
    from templora_memory.generation import Sampling

    schema, _ = CASES["person"]
    grammar = json_grammar(schema)
    engine.grammars.compile(grammar)
    prompt = engine.render_prompt([], [{"role": "user", "content": "Give the name and age of Ada Lovelace as JSON."}])
    result: dict[str, Any] = {}
    for label in ("free", "constrained"):
        rates, lengths = [], []
        for _ in range(replies):
            stream = engine.stream_completion(
                None, prompt, Sampling(max_new_tokens=64), grammar=grammar if label == "constrained" else None
            )
            next(stream)  # the first token pays for the prompt pass; decoding is timed from here
            started = time.perf_counter()
            count = stream.result().completion_tokens
            rates.append((count - 1) / (time.perf_counter() - started))
            lengths.append(count)
        result[label] = {"tokens_per_s": round(statistics.median(rates), 1), "tokens": lengths}
    return result


# ----- output --------------------------------------------------------------------------------


def print_tables(result: dict[str, Any]) -> None:
    """Print per library and schema: compile ms, mask µs per token, advance µs per token."""
    print(f"vocab {result['vocab_size']} tokens")
    print(
        f"{'library':<14} {'setup ms':>9} {'schema':<11} {'tokens':>6} {'compile ms':>10} {'1st mask ms':>11} "
        f"{'mask µs':>8} {'max µs':>8} {'advance µs':>10}"
    )
    for name, lib in result["libraries"].items():
        if "error" in lib:
            print(f"{name:<14} {lib['error']}")
            continue
        for case, row in lib["cases"].items():
            print(
                f"{name:<14} {lib['setup_ms']:>9} {case:<11} {row['tokens']:>6} {row['compile_ms']:>10} "
                f"{row['first_mask_ms']:>11} {row['mask_us_mean']:>8} {row['mask_us_max']:>8} "
                f"{row['advance_us_mean']:>10}"
            )
    for label, row in result.get("generation", {}).items():
        print(f"decoding {label:<12} {row['tokens_per_s']:>7} tokens/s  (tokens per reply: {row['tokens']})")


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 2)
