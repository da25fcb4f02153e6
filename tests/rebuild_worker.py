"""Run by test_ledger.py in a subprocess: write turns, forget the one that told a secret, and hang in the rebuild's
third chunk until killed."""

from __future__ import annotations

import pathlib
import sys
import time

import templora_memory.trainer
from templora_memory import MemoryEngine, TempLoraConfig
from tests.conftest import TINY_CONFIG
from tests.tiny import tiny_model, tiny_tokenizer

SECRET = "ZEBRA-4471"
CHUNKS_BEFORE_THE_KILL = 2
CONFIG = {**TINY_CONFIG, "snapshot_tokens": 64}


def talk(start: int, stop: int, secret_at: int | None = None) -> list[dict]:
    """Alternating user and assistant turns about the mill; turn `secret_at` also tells the secret."""
    return [
        {
            "role": ("user", "assistant")[i % 2],
            "content": f"turn {i} about the mill" + (f". The gate code is {SECRET}." if i == secret_at else ""),
        }
        for i in range(start, stop)
    ]


def hang_after(calls: int, marker: pathlib.Path):
    """`train_chunk` as it is for `calls` calls; then it signals the parent (the marker file) and waits to be killed."""
    train_chunk, done = templora_memory.trainer.train_chunk, []

    def stand_in(*args, **kwargs):
        if len(done) == calls:
            marker.touch()
            time.sleep(600)
        done.append(True)
        return train_chunk(*args, **kwargs)

    return stand_in


def main(store: str, marker: str) -> None:
    tokenizer = tiny_tokenizer()
    loaded = (tiny_model(tokenizer), tokenizer, "tiny-llama")
    engine = MemoryEngine(config=TempLoraConfig(**CONFIG), loaded=loaded, store=store)
    engine.add_turns("npc", talk(0, 30, secret_at=20))
    engine.wait("npc")
    templora_memory.trainer.train_chunk = hang_after(CHUNKS_BEFORE_THE_KILL, pathlib.Path(marker))
    engine.forget_turns("npc", matching=SECRET)
    engine.wait("npc")


if __name__ == "__main__":
    main(*sys.argv[1:3])
