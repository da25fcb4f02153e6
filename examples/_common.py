"""Shared bits of the examples: command-line options and the model (loaded once, shareable)."""

from __future__ import annotations

import argparse

from templora_memory import MemoryEngine, ParametricMemory, TempLoraConfig


def parser(description: str, turns: int) -> argparse.ArgumentParser:
    """Options every example takes: how many turns to run and how long replies may be."""
    options = argparse.ArgumentParser(description=description)
    options.add_argument("--turns", type=int, default=turns, help=f"conversation turns to run (default {turns})")
    options.add_argument("--max-tokens", type=int, default=48, help="reply length cap (default 48)")
    return options


def memory(engine: MemoryEngine | None, max_tokens: int, **fields) -> ParametricMemory:
    """A `ParametricMemory` on the default model (offline), or sharing `engine` if one is given."""
    if engine is not None:
        return ParametricMemory(engine=engine, max_tokens=max_tokens, **fields)
    config = TempLoraConfig(chunk_tokens=128, window_tokens=384, train_context_tokens=128, max_new_tokens=max_tokens)
    return ParametricMemory(config=config, max_tokens=max_tokens, **fields)
