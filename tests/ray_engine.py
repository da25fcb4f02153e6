"""The engine each Ray replica of test_ray.py builds: the tiny model over a shared store (imported on the replicas)."""

from __future__ import annotations

from templora_memory import AgentStore, MemoryEngine, TempLoraConfig
from tests.conftest import TINY_CONFIG
from tests.tiny import tiny_model, tiny_tokenizer


def tiny_engine(store_url: str, max_resident: int) -> MemoryEngine:
    """Same weights on every replica (seeded), so an agent answers identically wherever it is loaded."""
    tokenizer = tiny_tokenizer()
    store = AgentStore(store_url, lease_wait=2.0)
    config = TempLoraConfig(**TINY_CONFIG)
    return MemoryEngine(
        config=config, loaded=(tiny_model(tokenizer), tokenizer, "tiny-llama"), store=store, max_resident=max_resident
    )
