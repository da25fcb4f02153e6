"""Killing the server (SIGKILL) in the middle of a write loses no committed turn: the store's guarantees, through
`templora-memory serve` in a subprocess. Stopping it (SIGTERM) is graceful: it commits every resident agent first."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from templora_memory import MemoryEngine, TempLoraConfig  # noqa: E402
from templora_memory.message import fingerprint  # noqa: E402
from tests.conftest import TINY_CONFIG  # noqa: E402
from tests.tiny import tiny_model, tiny_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEY = {"authorization": "Bearer crash-test-key"}


class ServerProcess:
    """`python -m tests.server_worker` with its log drained in a thread and its port read from the log."""

    def __init__(self, model: Path, store: Path, marker: Path | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "TEMPLORA_API_KEY": KEY["authorization"].split()[1]}
        command = [sys.executable, "-m", "tests.server_worker", str(model), str(store), str(marker or "")]
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        threading.Thread(target=lambda: self.log.extend(self.process.stderr), daemon=True).start()
        deadline = time.monotonic() + 180
        while not (port := re.search(r"running on http://127\.0\.0\.1:(\d+)", "".join(self.log))):
            assert self.process.poll() is None, "".join(self.log)
            assert time.monotonic() < deadline, "the server never started"
            time.sleep(0.1)
        self.url = f"http://127.0.0.1:{port.group(1)}"

    def say(self, line: str) -> str:
        """One new user turn for the agent; returns the reply's text."""
        body = {"messages": [{"role": "user", "content": line}]}
        response = httpx.post(
            f"{self.url}/v1/chat/completions", json=body, headers={**KEY, "x-agent-id": "npc"}, timeout=120
        )
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/v1/agents/npc", headers=KEY).json()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The tiny model and tokenizer on disk, for a `--model` option."""
    folder = tmp_path_factory.mktemp("tiny-model")
    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_sigkill_during_a_write_loses_no_committed_turn(model_dir, tmp_path):
    store, marker = tmp_path / "store", tmp_path / "training"
    first = ServerProcess(model_dir, store, marker)
    committed: list[dict] = []
    with ThreadPoolExecutor(1) as pool:
        for i in range(20):
            line = f"turn {i} about the mill"
            reply = pool.submit(first.say, line)
            while not reply.done() and not marker.exists():
                time.sleep(0.05)
            if reply.done():  # answered, so committed (the marker may already be its own background write's)
                committed += [{"role": "user", "content": line}, {"role": "assistant", "content": reply.result()}]
            if marker.exists():  # a write is training its first chunk: kill the server now
                first.process.send_signal(signal.SIGKILL)
                first.process.wait()
                break
    assert marker.exists() and committed, "no write reached training"

    second = ServerProcess(model_dir, store)
    assert second.stats()["turns_seen"] == len(committed)  # every committed turn survived
    last = second.say("after the restart")
    second.process.send_signal(signal.SIGTERM)  # graceful: commits the resident agent, then exits
    assert second.process.wait(60) in (0, -signal.SIGTERM), "".join(second.log)  # uvicorn re-raises the signal
    assert "shut down: 1 resident agents committed" in "".join(second.log)

    tokenizer = tiny_tokenizer()
    engine = MemoryEngine(
        config=TempLoraConfig(**TINY_CONFIG), loaded=(tiny_model(tokenizer), tokenizer, str(model_dir)), store=store
    )
    killed = {"role": "user", "content": f"turn {len(committed) // 2} about the mill"}
    after = [{"role": "user", "content": "after the restart"}, {"role": "assistant", "content": last}]
    # the training killed may be the killed request's own write (its turn journaled first, so kept) or a background
    # write the previous reply queued (the killed request may not have reached the server): nothing else may differ
    kept = [[fingerprint(m) for m in [*committed, *journaled, *after]] for journaled in ([killed], [])]
    assert list(engine.agent("npc").fingerprints) in kept
