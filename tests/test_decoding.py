"""The decode model: its LoRA equals peft's, compact weights stay within stated tolerances of fp32, "auto" picks
int4 only for weights on an int4 grid on a bf16 CPU, and the growing KV cache gives the same greedy tokens."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from templora_memory import decoding
from templora_memory.config import TempLoraConfig
from templora_memory.decoding import DecodeModel, int4_quantize, resolve_weights
from templora_memory.generation import Sampling, generate_tokens
from templora_memory.kv_cache import GrowingLayer, PromptCache, growing_cache
from tests.tiny import tiny_model, with_random_lora

TOLERANCE = {"fp32": 1e-5, "bf16": 0.02, "int8": 0.03, "int4": 0.03}
"""Largest logit difference allowed next to fp32, as a fraction of the largest fp32 logit (int4: on its grid)."""


def _trained(make_engine, **overrides):
    """An engine whose agent "a" has a random LoRA with non-zero B (as after training)."""
    return with_random_lora(make_engine(**overrides))


def _step_logits(model, ids: list[int]) -> torch.Tensor:
    """Logits (T, V) computed one token at a time with a KV cache, as decoding runs the model."""
    past, rows = growing_cache(), []
    with torch.no_grad():
        for token in ids:
            rows.append(model(input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True).logits[0, -1])
    return torch.stack(rows)


def _on_int4_grid(model) -> None:
    """Round every linear layer but the head to int4 (groups of 32), as a Q4_1 GGUF file stores them."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                w = module.weight
                groups = w.reshape(w.shape[0], -1, decoding.INT4_GROUP)
                low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
                step = (high - low) / 15
                w.copy_((torch.round((groups - low) / step) * step + low).reshape(w.shape))


def test_the_decode_lora_gives_peft_s_logits(make_engine):
    engine = _trained(make_engine, decode_weights="fp32")
    ids = engine.encode("The blacksmith sells swords in Oakridge.")
    with engine.bank.active("a") as peft_model:
        expected = _step_logits(peft_model, ids)
        with torch.no_grad():
            prefill_expected = peft_model(input_ids=torch.tensor([ids])).logits[0]
    with engine.decoder.active(engine.bank, "a") as model:
        assert torch.allclose(_step_logits(model, ids), expected, atol=1e-5)
        with torch.no_grad():
            assert torch.allclose(model(input_ids=torch.tensor([ids])).logits[0], prefill_expected, atol=1e-5)
    with engine.bank.active(None) as base, engine.decoder.active(engine.bank, None) as model:
        base_logits = _step_logits(base, ids)
        assert torch.allclose(_step_logits(model, ids), base_logits, atol=1e-5)
    assert (base_logits - expected).abs().max() > 1e-3  # the LoRA does change the logits


@pytest.mark.parametrize("weights", ["bf16", "int8", "int4"])
def test_compact_weights_stay_within_tolerance_of_fp32(make_engine, tokenizer, weights, monkeypatch):
    monkeypatch.setattr(decoding, "cpu_supports_bf16", lambda: True)
    engine = _trained(make_engine, decode_weights="fp32")
    base = tiny_model(tokenizer)
    _on_int4_grid(base)
    reference, compact = DecodeModel(base, "fp32"), DecodeModel(base, weights)
    ids = engine.encode("Once upon a time a traveller asked the innkeeper.")
    with reference.active(engine.bank, "a") as model:  # the bank's LoRA names match any tiny model's layers
        expected = _step_logits(model, ids)
    with compact.active(engine.bank, "a") as model:
        got = _step_logits(model, ids)
    assert (got - expected).abs().max() <= TOLERANCE[weights] * expected.abs().max()
    assert compact.nbytes() > 0 and reference.nbytes() == 0


def test_auto_picks_int4_only_for_weights_on_its_grid_and_a_cpu_with_bf16(tokenizer, monkeypatch):
    on_grid, off_grid = tiny_model(tokenizer), tiny_model(tokenizer)
    _on_int4_grid(on_grid)
    monkeypatch.setattr(decoding, "cpu_supports_bf16", lambda: True)
    assert resolve_weights("auto", on_grid) == "int4"
    assert resolve_weights("auto", off_grid) == "fp32"
    monkeypatch.setattr(decoding, "cpu_supports_bf16", lambda: False)
    assert resolve_weights("auto", on_grid) == "fp32"
    with pytest.warns(UserWarning, match="no native bf16"):
        assert resolve_weights("bf16", on_grid) == "fp32"
    assert resolve_weights("int8", on_grid) == "int8"


def test_int4_quantize_is_exact_on_its_grid_and_not_elsewhere(tokenizer):
    model = tiny_model(tokenizer)
    weight = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    assert int4_quantize(weight)[2] > 0.1
    _on_int4_grid(model)
    assert int4_quantize(model.model.layers[0].mlp.up_proj.weight.detach())[2] < decoding.INT4_EXACT


def test_the_growing_cache_gives_the_greedy_tokens_of_transformers_cache(make_engine):
    engine = _trained(make_engine, decode_weights="fp32")
    prompt = engine.encode("The quick brown fox jumps over the lazy dog.")
    sampling = Sampling(max_new_tokens=24, ignore_eos=True)
    with engine.decoder.active(engine.bank, "a") as model:
        growing = list(generate_tokens(model, prompt, sampling, set()))
        plain = list(generate_tokens(model, prompt, sampling, set(), PromptCache(past=DynamicCache())))
    assert growing == plain


def test_a_growing_cache_appends_into_its_room_and_counts_it():
    cache = PromptCache()
    cache.align([1, 2, 3])
    layer_states = torch.randn(1, 2, 3, 4)
    cache.past.update(layer_states, layer_states, 0)
    cache.record([1, 2, 3], cache.past)
    layer = cache.past.layers[0]
    assert isinstance(layer, GrowingLayer)
    room = layer.keys.data_ptr()
    cache.past.update(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4), 0)
    assert layer.keys.data_ptr() == room and layer.keys.shape[-2] == 4  # appended in place, not copied
    assert torch.equal(layer.keys[..., :3, :], layer_states)
    assert cache.nbytes() >= 2 * layer.keys.nbytes  # the spare room is counted


def test_the_engine_replies_with_its_decode_model(make_engine):
    engine = _trained(make_engine)
    assert engine.decoder.weights == "fp32"  # the tiny model's random weights are on no int4 grid
    assert TempLoraConfig().decode_weights == "auto"
    reply = engine.stream_completion("a", engine.encode("Hello there!"), Sampling(max_new_tokens=5)).result()
    assert reply.completion_tokens <= 5


@pytest.mark.parametrize("rows", [1, decoding.PREFILL_ROWS + 1])
def test_a_decode_layer_keeps_the_bias_on_both_paths(rows):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32, bias=True)
    x = torch.randn(rows, 64)
    expected = linear(x).detach()
    with torch.no_grad():
        got = decoding.DecodeLinear(linear, "bf16")(x)
    assert (got - expected).abs().max() <= TOLERANCE["bf16"] * expected.abs().max()


class _FixedLogits:
    """A `LogitsSource` whose every next token scores 1.05 for token 5, 1.0 for token 6 and 0 for the rest."""

    def next_logits(self, feed: list[int]) -> torch.Tensor:
        logits = torch.zeros(16)
        logits[5], logits[6] = 1.05, 1.0
        return logits


@pytest.mark.parametrize(
    ("penalised", "picked"),
    [(None, 6), ((), 5), ((5,), 6), ((7, 8), 5)],
    ids=["whole prompt", "nothing", "token named", "other tokens named"],
)
def test_the_repetition_penalty_counts_the_tokens_named_else_the_whole_prompt(penalised, picked):
    sampling = Sampling(max_new_tokens=1, repetition_penalty=1.1, penalised=penalised)
    assert list(generate_tokens(_FixedLogits(), [5, 7, 8], sampling, set())) == [picked]  # 1.05 / 1.1 < 1.0


def test_the_repetition_penalty_counts_the_reply_own_tokens():
    sampling = Sampling(max_new_tokens=2, repetition_penalty=1.1, penalised=())
    assert list(generate_tokens(_FixedLogits(), [7], sampling, set())) == [5, 6]
