"""Cache reuse and attention sinks (paper §2): what is computed, what is evicted, and that keys move exactly."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from templora_memory import TempLoraConfig
from templora_memory.errors import ConfigError
from templora_memory.generation import Sampling, generate_tokens
from templora_memory.kv_cache import PromptCache, RopeShift
from tests.tiny import tiny_model

GREEDY = Sampling(max_new_tokens=6)


def _talk(engine, turns: int) -> tuple[list[str], int]:
    """Greedy replies to `turns` user lines, and the prompt tokens of all the calls together."""
    lines = ["Hello there! What is your name?", "The blacksmith sells swords.", "My cat is called Whiskers."]
    replies, prompt_tokens = [], 0
    system = {"role": "system", "content": "You are the innkeeper."}  # the prompt's stable start: the sink
    for i in range(turns):
        message = {"role": "user", "content": lines[i % 3] + f" {i}"}
        reply = engine.respond("a", [system, message], GREEDY).result()
        replies.append(reply.text)
        prompt_tokens += reply.prompt_tokens
    return replies, prompt_tokens


def _first_layer_keys(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), use_cache=True).past_key_values.layers[0].keys


def test_rotating_cached_keys_back_equals_computing_them_at_the_new_positions(tokenizer):
    # layer 0 keys depend only on the token and its position, so a moved key must match a fresh one exactly
    model = tiny_model(tokenizer)
    sink, dropped, kept = [5, 6, 7, 8], list(range(20, 37)), list(range(40, 60))
    moved = RopeShift.of(model).back(_first_layer_keys(model, sink + dropped + kept)[..., -len(kept) :, :], 17)
    fresh = _first_layer_keys(model, sink + kept)[..., -len(kept) :, :]
    assert torch.allclose(moved, fresh, atol=1e-5)
    assert not torch.allclose(moved, _first_layer_keys(model, sink + dropped + kept)[..., -len(kept) :, :])


def test_align_evicts_the_dropped_span_and_keeps_the_sink(tokenizer):
    model = tiny_model(tokenizer)
    cache = PromptCache(RopeShift.of(model))
    sink, dropped, kept = list(range(5, 13)), list(range(20, 40)), list(range(40, 70))
    list(generate_tokens(model, sink + dropped + kept, Sampling(max_new_tokens=1), set(), cache))
    feed = cache.align(sink + kept + [99, 100])
    assert feed == [99, 100]
    assert cache.ids == sink + kept and cache.evicted_tokens == len(dropped)
    assert all(layer.keys.shape[-2] == len(cache.ids) for layer in cache.past.layers)


def test_align_without_sinks_truncates_to_the_common_prefix(tokenizer):
    cache = PromptCache()
    model = tiny_model(tokenizer)
    list(generate_tokens(model, list(range(5, 45)), Sampling(max_new_tokens=1), set(), cache))
    assert cache.align(list(range(5, 15)) + list(range(30, 45))) == list(range(30, 45))
    assert cache.ids == list(range(5, 15)) and cache.evicted_tokens == 0
    assert cache.align(list(range(5, 15))) == [14]  # the last prompt token always runs: its logits start the reply


def test_cache_reuse_gives_the_same_replies_before_any_training(make_engine):
    # no chunk is trained in these turns, so reused states are exactly the recomputed ones
    plain = make_engine(chunk_tokens=400, window_tokens=400)
    reused = make_engine(chunk_tokens=400, window_tokens=400, cache_reuse=True)
    replies, prompt_tokens = _talk(reused, 4)
    assert replies == _talk(plain, 4)[0]
    assert reused.stats("a").chunks_trained == 0 and plain.stats("a").computed_tokens is None
    # each call ran only its new turn (plus the last reply token), not the whole window again
    assert reused.stats("a").computed_tokens < prompt_tokens / 2


def test_attention_sinks_never_recompute_a_sliding_window(make_engine):
    computed = {}
    for name, options in {
        "recompute": {},
        "cache_reuse": {"cache_reuse": True},
        "sinks": {"cache_reuse": True, "attention_sinks": True},
    }.items():
        engine = make_engine(**options)
        prompt_tokens = _talk(engine, 12)[1]
        stats = engine.stats("a")
        assert stats.chunks_trained >= 2 and stats.prompt_tokens <= engine.config.window_tokens
        if stats.computed_tokens is not None:  # the cache's states never outgrow the window and one reply
            assert 0 < stats.cached_tokens <= engine.config.window_tokens + GREEDY.max_new_tokens
            computed[name] = stats.computed_tokens
        if name == "sinks":
            assert stats.evicted_tokens > 0
    stats = engine.stats("a")
    conversation = stats.tokens_written + stats.tokens_pending
    assert computed["sinks"] < computed["cache_reuse"] < prompt_tokens
    assert computed["sinks"] <= conversation + 12 * 8  # each conversation token once, plus a header per call


def test_attention_sinks_need_cache_reuse_and_rotary_embeddings():
    with pytest.raises(ConfigError, match="attention_sinks=True needs cache_reuse=True"):
        TempLoraConfig(attention_sinks=True)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64))
    with pytest.raises(ConfigError, match="rotary position embeddings"):
        RopeShift.of(gpt2)
