"""`python -m benchmarks pg19`: the Temp-Lora paper's Table 1 — PPL by position, base vs Temp-Lora, on long books.

For each book, split into chunks of Δ tokens: score the chunk with the base model and with the book's
adapter, both given the same preceding L_X tokens, then train the adapter on it (the engine's own update).
With `--cache-reuse` the adapter scores through the book's KV cache, computed by older adapters (paper §2:
"TL + CR"); adding `--attention-sinks` makes the context the book's first four tokens and the most recent
ones, and the cache evicts what slides out instead of recomputing it ("TL + CR + AS").
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import common
from templora_memory.engine import MemoryEngine
from templora_memory.errors import InvalidInputError
from templora_memory.kv_cache import SINK_TOKENS

DEFAULT_DATA = str(common.SHARED_DATA / "pg19")
DEFAULT_BUCKETS = (8192, 16384, 32768)


def add_parser(subparsers) -> None:
    """Register `pg19`."""
    parser = subparsers.add_parser(
        "pg19", help="PPL by position on long books, base model vs Temp-Lora (paper Table 1)"
    )
    common.add_common_options(parser, DEFAULT_DATA, "results/pg19.json")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens read per book (default: all)")
    parser.add_argument("--max-books", type=int, default=None, help="books read, in file-name order (default: all)")
    parser.add_argument(
        "--buckets",
        default=",".join(map(str, DEFAULT_BUCKETS)),
        help="position bucket bounds in tokens (default: 8192,16384,32768)",
    )
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark from parsed options, write JSON and plot, print the table."""
    started = time.perf_counter()
    books = book_paths(Path(args.data), args.max_books)
    bounds = parse_bounds(args.buckets)
    engine = common.engine_from_args(args)
    result = run(engine, books, args.max_tokens, bounds, quiet=args.quiet)
    result["run"] = common.run_info(engine, args, started)
    common.write_json(args.out, result)
    plot(result, common.plot_path(args))
    print(table(result))
    return result


def book_paths(data: Path, max_books: int | None) -> list[Path]:
    """The .txt files of a folder (or one file), sorted by name, at most `max_books`."""
    if common.existing_data(data, "a folder of PG19 .txt books (or one .txt book)").is_file():
        return [data]
    books = sorted(data.glob("*.txt"))[:max_books]
    if not books:
        raise InvalidInputError(f"no .txt books in {data}; point --data at a folder of PG19 books")
    return books


def parse_bounds(text: str) -> list[int]:
    """'8192,16384' → [8192, 16384] (strictly increasing, positive)."""
    try:
        bounds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidInputError(
            f"--buckets {text!r}: give comma-separated token positions, e.g. 8192,16384,32768"
        ) from None
    if any(b <= 0 for b in bounds) or bounds != sorted(set(bounds)):
        raise InvalidInputError(f"--buckets {text!r}: positions must be positive and strictly increasing")
    return bounds


@dataclass
class Tally:
    """Summed negative log-likelihoods of the base model and of Temp-Lora over some tokens."""

    tokens: int = 0
    base_nll: float = 0.0
    templora_nll: float = 0.0

    def add(self, base: list[float], adapted: list[float]) -> None:
        self.tokens += len(base)
        self.base_nll -= sum(base)
        self.templora_nll -= sum(adapted)

    def summary(self) -> dict[str, Any]:
        base = math.exp(self.base_nll / self.tokens) if self.tokens else float("nan")
        ours = math.exp(self.templora_nll / self.tokens) if self.tokens else float("nan")
        return {
            "tokens": self.tokens,
            "base_ppl": round(base, 3),
            "templora_ppl": round(ours, 3),
            "change_pct": common.relative_change(base, ours),
        }


def run(
    engine: MemoryEngine, books: list[Path], max_tokens: int | None, bounds: list[int], quiet: bool = False
) -> dict:
    """Score and train every book; return overall, per-bucket and per-chunk results."""
    overall, buckets = Tally(), [Tally() for _ in range(len(bounds) + 1)]
    chunks, per_book = [], []
    for book in common.progress(books, quiet, desc="books", unit="book"):
        tokens = engine.encode(book.read_text(encoding="utf-8", errors="replace"))[:max_tokens]
        book_tally = Tally()
        for record, base, adapted in score_book(engine, book.stem, tokens, quiet):
            for tally in (overall, book_tally, buckets[bucket_index(record["position"], bounds)]):
                tally.add(base, adapted)
            chunks.append(record)
        per_book.append({"book": book.name, **book_tally.summary(), **engine.stats(_agent(book.stem)).model_dump()})
        engine.forget(_agent(book.stem))
    return {
        "benchmark": "pg19",
        "overall": overall.summary(),
        "buckets": [{"range": _label(i, bounds), **_span(i, bounds), **t.summary()} for i, t in enumerate(buckets)],
        "books": per_book,
        "chunks": chunks,
    }


def score_book(engine: MemoryEngine, name: str, tokens: list[int], quiet: bool):
    """Yield (record, base logprobs, Temp-Lora logprobs) per chunk: score first, then train on the chunk."""
    delta, window = engine.config.chunk_tokens, engine.config.window_tokens
    agent = _agent(name)  # its adapter is created by the first scoring: LoRA B is zero, so it equals the base model
    for start in common.progress(range(0, len(tokens), delta), quiet, desc=name, unit="chunk", leave=False):
        # The very first token has no context to be scored from; it is input only.
        first = max(start, 1)
        context, chunk = _context(tokens, first, window, engine.config.attention_sinks), tokens[first : start + delta]
        if not chunk:
            continue
        base = engine.log_likelihood(None, context, chunk)
        adapted = engine.log_likelihood(agent, context, chunk)
        yield _record(name, first, base, adapted), base, adapted
        if start + delta < len(tokens):  # the last chunk is never scored after, so it is not written
            engine.write_tokens(agent, tokens[start : start + delta])


def _context(tokens: list[int], first: int, window: int, sinks: bool) -> list[int]:
    """The L_X tokens before `first`; with attention sinks, the book's first tokens and then the most recent ones."""
    if not sinks or first <= window:
        return tokens[max(0, first - window) : first]
    return tokens[:SINK_TOKENS] + tokens[first - window + SINK_TOKENS : first]


def bucket_index(position: int, bounds: list[int]) -> int:
    """Which bucket a chunk starting at `position` falls in (buckets are by the chunk's first token)."""
    return sum(position >= bound for bound in bounds)


def _record(book: str, position: int, base: list[float], adapted: list[float]) -> dict[str, Any]:
    return {
        "book": book,
        "position": position,
        "tokens": len(base),
        "base_nll": round(common.mean_nll(base), 4),
        "templora_nll": round(common.mean_nll(adapted), 4),
    }


def _agent(name: str) -> str:
    return f"pg19-{name}"


def _span(index: int, bounds: list[int]) -> dict[str, int | None]:
    return {"start": bounds[index - 1] if index else 0, "end": bounds[index] if index < len(bounds) else None}


def _label(index: int, bounds: list[int]) -> str:
    span = _span(index, bounds)
    start = _tokens(span["start"])
    return f"{start}+" if span["end"] is None else f"{start}-{_tokens(span['end'])}"


def _tokens(n: int) -> str:
    return f"{n // 1024}K" if n and n % 1024 == 0 else str(n)


def table(result: dict[str, Any]) -> str:
    """The paper's Table 1 layout: PPL per bucket and overall, base vs Temp-Lora with relative change."""
    columns = [b for b in result["buckets"] if b["tokens"]] + [{"range": "Avg.", **result["overall"]}]
    lines = ["segment      " + "".join(f"{c['range']:>16}" for c in columns)]
    lines.append("base         " + "".join(f"{c['base_ppl']:>16.3f}" for c in columns))
    lines.append("+Temp-Lora   " + "".join(f"{c['templora_ppl']:>8.3f} ({c['change_pct']:+.1f}%)" for c in columns))
    lines.append("tokens       " + "".join(f"{c['tokens']:>16}" for c in columns))
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    """Per-chunk PPL along the book (left) and PPL per position bucket (right)."""
    fig, (along, bars) = common.figure(2)
    for book in sorted({c["book"] for c in result["chunks"]}):
        rows = [c for c in result["chunks"] if c["book"] == book]
        x = [c["position"] / 1024 for c in rows]
        along.plot(x, [math.exp(c["base_nll"]) for c in rows], color="grey", alpha=0.7, label=f"{book} base")
        along.plot(
            x, [math.exp(c["templora_nll"]) for c in rows], color="tab:red", alpha=0.7, label=f"{book} Temp-Lora"
        )
    along.set(xlabel="position (K tokens)", ylabel="chunk PPL", title="PPL per chunk, scored before training on it")
    along.legend(fontsize=7)
    filled = [b for b in result["buckets"] if b["tokens"]]
    x = range(len(filled))
    bars.bar([i - 0.2 for i in x], [b["base_ppl"] for b in filled], width=0.4, color="grey", label="base")
    bars.bar([i + 0.2 for i in x], [b["templora_ppl"] for b in filled], width=0.4, color="tab:red", label="Temp-Lora")
    bars.set_xticks(list(x), [b["range"] for b in filled])
    bars.set(ylabel="PPL", title="PPL by position bucket")
    bars.legend()
    return common.save_figure(fig, path)
