"""Benchmarks: `templora-memory bench pg19|locomo|recipes|cost|scale|constrain|suites` (needs the `bench` extra)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["add_bench_parser", "main"]


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Register `bench` and its subcommands (pg19, locomo, recipes, cost, ...) on argparse subparsers.

    Each subcommand sets `run`, a function of the parsed namespace: `args.run(args)` runs it (as cli.py does).
    """
    from templora_memory.bench import constrain, cost, locomo, pg19, recipes, scale, suites

    parser = subparsers.add_parser(
        "bench",
        help="benchmarks: PG19 perplexity, LoCoMo recall, recipes, cost, scale, constrained decoding, standard suites",
    )
    benches = parser.add_subparsers(
        dest="bench", required=True, metavar="{pg19,locomo,recipes,cost,scale,constrain,suites}"
    )
    for module in (pg19, locomo, recipes, cost, scale, constrain, suites):
        module.add_parser(benches)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry: `python -m templora_memory.bench pg19 ...` (same options as `templora-memory bench`)."""
    parser = argparse.ArgumentParser(prog="python -m templora_memory.bench")
    commands = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(commands)
    args = parser.parse_args(["bench", *(argv if argv is not None else _argv())])
    args.run(args)
    return 0


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]
