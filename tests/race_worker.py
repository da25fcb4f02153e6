"""Run by test_lease.py in a spawned process: one engine on a shared store plays a script of steps on one agent.

Steps: "take" (load the agent, waiting for its lease), "write:N" (N one-turn calls), "signal:NAME" (create a file
the test or the other process waits for), "await:NAME" (wait for such a file), "close" (commit, give the lease
back). Each step's outcome and time go to <folder>/<name>.json; an error is recorded and the script goes on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from templora_memory import AgentStore, MemoryEngine, StoreError, TempLoraConfig
from tests.conftest import TINY_CONFIG
from tests.tiny import tiny_model, tiny_tokenizer

AGENT = "shared-npc"


def message(name: str, index: int) -> dict:
    """The index-th turn process `name` writes."""
    return {"role": "user", "content": f"{name} says line {index}"}


def run(store: str, name: str, lease_seconds: float, lease_wait: float, folder: str, steps: list[str]) -> None:
    """Play `steps`, then write the report."""
    tokenizer = tiny_tokenizer()
    engine = MemoryEngine(
        config=TempLoraConfig(**TINY_CONFIG),
        loaded=(tiny_model(tokenizer), tokenizer, "tiny-llama"),
        store=AgentStore(store, lease_seconds=lease_seconds, lease_wait=lease_wait),
    )
    report: dict = {"steps": [], "writes": []}
    sent = 0
    for step in steps:
        verb, _, argument = step.partition(":")
        began, error = time.time(), None
        try:
            if verb == "take":
                engine.add_turns(AGENT, [])
            elif verb == "write":
                for _ in range(int(argument)):
                    report["writes"].append([sent, _write(engine, message(name, sent))])
                    sent += 1
            elif verb == "signal":
                (Path(folder) / argument).touch()
            elif verb == "await":
                _wait_for(Path(folder) / argument)
            elif verb == "close":
                engine.close()
        except StoreError as exc:
            error = [type(exc).__name__, str(exc)]
        report["steps"].append({"step": step, "began": began, "ended": time.time(), "error": error})
    (Path(folder) / f"{name}.json").write_text(json.dumps(report))


def _write(engine: MemoryEngine, turn: dict) -> str:
    """One call; "ok" once committed, else the name of the store error that refused it."""
    try:
        engine.add_turns(AGENT, [turn])
    except StoreError as exc:
        return type(exc).__name__
    return "ok"


def _wait_for(path: Path, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.05)
