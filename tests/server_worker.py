"""Run by test_server_crash.py: `templora-memory serve` over a model directory; with a marker path, the first
chunk's training signals the parent (the marker file) and hangs until the process is killed."""

from __future__ import annotations

import pathlib
import sys

import templora_memory.trainer
from templora_memory import cli
from tests.crash_worker import hang

TINY_OPTIONS = [
    "--chunk-tokens",
    "32",
    "--window-tokens",
    "96",
    "--train-context-tokens",
    "32",
    "--max-new-tokens",
    "8",
]


def main(model: str, store: str, marker: str = "") -> int:
    if marker:
        templora_memory.trainer.train_chunk = hang(pathlib.Path(marker))
    return cli.main(["serve", "--model", model, "--store", store, "--port", "0", "--workers", "1", *TINY_OPTIONS])


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
