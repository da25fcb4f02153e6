"""templora-memory's benchmarks, run from a checkout: `python -m benchmarks {pg19,locomo,recipes,cost,scale,...}`.

They live beside the library, not in it (`pip install` does not ship them), and need the `bench` extra
(`pip install -e ".[bench]"`); `suites` also needs the `test` and `compare` extras, `serve` the `server` extra.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence

from templora_memory.cli import run

__all__ = ["build_parser", "main", "missing_modules"]

EXTRAS: dict[str, tuple[str, ...]] = {
    "bench": ("matplotlib", "nltk"),
    "test": ("pytest", "pytest_asyncio", "langchain_tests"),
    "compare": ("langchain_huggingface",),
    "server": ("fastapi", "uvicorn"),
}
"""The modules each optional dependency group of pyproject.toml brings (import names)."""
NEEDS: dict[str, tuple[str, ...]] = {
    "suites": ("bench", "test", "compare"),
    "serve": ("bench", "server"),
    "busy": ("server",),
    "device": (),
}
"""Extras a sub-command needs beyond `bench` (`constrain` reports a missing comparison library in its table)."""


def build_parser() -> argparse.ArgumentParser:
    """`python -m benchmarks` and its sub-commands; each sets `run`, called as `args.run(args)`."""
    from benchmarks import (
        batch,
        busy,
        constrain,
        cost,
        device,
        footprint,
        forget,
        locomo,
        pg19,
        recall,
        recipes,
        scale,
        serve,
        speed,
        suites,
        write,
    )

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="PG19, LoCoMo, needle recall, forgetting, recipes, cost, scale, serving, batched decoding, "
        "constrained decoding, speed, suites",
    )
    modules = (
        *(pg19, locomo, recall, forget, recipes, cost, write, scale, footprint),
        *(device, serve, busy, batch, constrain, speed, suites),
    )
    names = ",".join(module.__name__.rpartition(".")[2] for module in modules)
    commands = parser.add_subparsers(dest="bench", required=True, metavar="{" + names + "}")
    for module in modules:
        module.add_parser(commands)
    return parser


def missing_modules(command: str) -> dict[str, str]:
    """The modules `command` needs that are not installed, each with the extra that brings it."""
    extras = NEEDS.get(command, ("bench",))
    return {module: extra for extra in extras for module in EXTRAS[extra] if importlib.util.find_spec(module) is None}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, check the extras, run; a missing extra or a `TemploraError` prints `error: ...` and returns 2."""
    args = build_parser().parse_args(argv)
    missing = missing_modules(args.bench)
    if missing:
        extras = ",".join(dict.fromkeys(missing.values()))
        print(
            f"error: `python -m benchmarks {args.bench}` needs {', '.join(missing)} (not installed); "
            f'install with: pip install -e ".[{extras}]"',
            file=sys.stderr,
        )
        return 2
    return run(args)
