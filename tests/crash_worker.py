"""Run by test_crash.py in a subprocess: write some turns, then hang inside training or saving until killed."""

from __future__ import annotations

import pathlib
import sys
import time

import templora_memory.trainer
from templora_memory import MemoryEngine, TempLoraConfig
from templora_memory.adapter_files import ADAPTER_CONFIG
from templora_memory.blobs import LocalBlobs
from tests.conftest import TINY_CONFIG
from tests.tiny import tiny_model, tiny_tokenizer


def turns(start: int, stop: int) -> list[dict]:
    return [{"role": ("user", "assistant")[i % 2], "content": f"turn {i} about the mill"} for i in range(start, stop)]


def hang(marker: pathlib.Path):
    """A stand-in that signals the parent and waits to be killed."""

    def stand_in(*args, **kwargs):
        marker.touch()
        time.sleep(600)

    return stand_in


def stop_after_weights(marker: pathlib.Path):
    """A `LocalBlobs.write` that hangs once a new version's weights are written, before its config and state:
    the half-written version a crash in the middle of saving leaves (the pointer never names it)."""
    write = LocalBlobs.write

    def stand_in(self, path, data):
        if path.endswith(ADAPTER_CONFIG):
            hang(marker)()
        write(self, path, data)

    return stand_in


def main(store: str, phase: str, marker: str) -> None:
    tokenizer = tiny_tokenizer()
    loaded = (tiny_model(tokenizer), tokenizer, "tiny-llama")
    engine = MemoryEngine(config=TempLoraConfig(**TINY_CONFIG), loaded=loaded, store=store)
    engine.add_turns("npc", turns(0, 12))
    if phase == "training":
        templora_memory.trainer.train_chunk = hang(pathlib.Path(marker))
    else:
        LocalBlobs.write = stop_after_weights(pathlib.Path(marker))
    engine.add_turns("npc", turns(12, 24))


if __name__ == "__main__":
    main(*sys.argv[1:4])
