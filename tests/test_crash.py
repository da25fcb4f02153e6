"""Crash safety: a process killed (SIGKILL) while training or saving loses no committed state and no turn."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.crash_worker import turns

REPO = Path(__file__).resolve().parents[1]


def _kill_while(phase: str, store: Path, marker: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_worker", str(store), phase, str(marker)], cwd=REPO, env=env
    )
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert worker.poll() is None, f"the worker exited ({worker.returncode}) before reaching {phase}"
        assert time.monotonic() < deadline, f"the worker never reached {phase}"
        time.sleep(0.1)
    worker.send_signal(signal.SIGKILL)
    worker.wait()


@pytest.mark.parametrize("phase", ["training", "saving"])
def test_sigkill_keeps_the_last_commit_and_replays_the_journaled_turns(make_engine, tmp_path, phase):
    store = tmp_path / "store"
    _kill_while(phase, store, tmp_path / "reached")

    committed = make_engine()  # what the worker had committed: the first 12 turns, nothing of the rest
    committed.add_turns("npc", turns(0, 12))
    restarted = make_engine(store=store)
    timing = {"train_seconds"}  # wall-clock, differs between processes
    assert restarted.stats("npc").model_dump(exclude=timing) == committed.stats("npc").model_dump(exclude=timing)

    expected = make_engine()  # the journaled turns are written on the next write, as if nothing had happened
    expected.add_turns("npc", turns(0, 12))
    expected.add_turns("npc", turns(12, 24))
    assert restarted.window("npc")[-1] == turns(23, 24)[0]  # a read shows them without writing anything
    assert restarted.stats("npc").chunks_trained == committed.stats("npc").chunks_trained
    restarted.add_turns("npc", [])
    assert restarted.stats("npc").turns_seen == 24
    assert restarted.stats("npc").tokens_written == expected.stats("npc").tokens_written
    ours, theirs = restarted.bank.parameters("npc"), expected.bank.parameters("npc")
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
