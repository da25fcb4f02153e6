"""Shared fixtures: engines over a tiny in-process model, and the real default model loaded once per session."""

from __future__ import annotations

import pytest
import torch

from templora_memory import MemoryEngine, ParametricMemory, TempLoraConfig
from tests.tiny import tiny_model, tiny_tokenizer

TINY_CONFIG = dict(chunk_tokens=32, window_tokens=96, train_context_tokens=32, max_new_tokens=8, learning_rate=1e-2)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Model conversions go to one per-session cache, never the user's home."""
    monkeypatch.setenv("TEMPLORA_CACHE_DIR", str(tmp_path_factory.getbasetemp().parent / "templora-cache"))


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def make_engine(tokenizer):
    """Build a `MemoryEngine` over a fresh tiny model (same weights each time); keywords override the tiny config."""

    def build(store=None, max_resident=None, **overrides) -> MemoryEngine:
        config = TempLoraConfig(**{**TINY_CONFIG, **overrides})
        model = tiny_model(tokenizer)
        return MemoryEngine(
            config=config, loaded=(model, tokenizer, "tiny-llama"), store=store, max_resident=max_resident
        )

    return build


@pytest.fixture
def tiny_memory(make_engine) -> ParametricMemory:
    """A `ParametricMemory` over the tiny model (fast, random replies)."""
    return ParametricMemory(engine=make_engine())


@pytest.fixture(scope="session")
def real_engine() -> MemoryEngine:
    """The embedded SmolLM2-135M-Instruct, loaded once per test session (agents are per test)."""
    config = TempLoraConfig(chunk_tokens=64, window_tokens=128, train_context_tokens=64, max_new_tokens=24)
    return MemoryEngine(config=config)


@pytest.fixture(scope="session")
def real_tool_engine() -> MemoryEngine:
    """The default model again, with a window wide enough for tool schemas in the system message (~200 tokens each)."""
    config = TempLoraConfig(chunk_tokens=128, window_tokens=640, train_context_tokens=128, max_new_tokens=64)
    return MemoryEngine(config=config)


@pytest.fixture
def one_thread():
    """One torch thread: the tiny model gains nothing from more, and they thrash on a busy 2-core CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
