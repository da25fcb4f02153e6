"""Run by test_crash.py in a subprocess: write some turns, then hang inside training or saving until killed."""

from __future__ import annotations

import pathlib
import sys
import time

import templora_memory.store
import templora_memory.trainer
from templora_memory import MemoryEngine, TempLoraConfig
from tests.conftest import TINY_CONFIG
from tests.tiny import tiny_model, tiny_tokenizer


def turns(start: int, stop: int) -> list[dict]:
    return [{"role": ("user", "assistant")[i % 2], "content": f"turn {i} about the mill"} for i in range(start, stop)]


def hang(marker: pathlib.Path, before=None):
    """A stand-in that (optionally does part of the work, then) signals the parent and waits to be killed."""

    def stand_in(*args, **kwargs):
        if before is not None:
            before(*args, **kwargs)
        marker.touch()
        time.sleep(600)

    return stand_in


def half_written(tensors, path):
    """Write a truncated safetensors file, as a crash in the middle of saving would."""
    path.write_bytes(b"\x00" * 64)


def main(store: str, phase: str, marker: str) -> None:
    tokenizer = tiny_tokenizer()
    loaded = (tiny_model(tokenizer), tokenizer, "tiny-llama")
    engine = MemoryEngine(config=TempLoraConfig(**TINY_CONFIG), loaded=loaded, store=store)
    engine.add_turns("npc", turns(0, 12))
    if phase == "training":
        templora_memory.trainer.train_chunk = hang(pathlib.Path(marker))
    else:
        templora_memory.store.save_file = hang(pathlib.Path(marker), before=half_written)
    engine.add_turns("npc", turns(12, 24))


if __name__ == "__main__":
    main(*sys.argv[1:4])
