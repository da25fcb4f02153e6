"""The llama.cpp backend's parts that run without llama-cpp-python (never installed for the tests): the GGUF LoRA
export read back with gguf's reader, the adapter version that decides re-exports, the errors that say what the
backend needs, and `generate_tokens` decoding with a model that is no torch module."""

from __future__ import annotations

import sys

import gguf
import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from templora_memory import llamacpp_decoding
from templora_memory.errors import ConfigError
from templora_memory.generation import LogitsSource, Sampling, generate_tokens
from templora_memory.gguf_lora import llama_cpp_rows, write_gguf_lora
from templora_memory.llamacpp_decoding import adapter_version
from tests.tiny import with_random_lora

PROJECTIONS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


def _trained(make_engine):
    """An engine whose agent "a" has a random LoRA with non-zero B, so every layer's update is non-zero."""
    return with_random_lora(make_engine())


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def test_the_exported_adapter_is_a_llama_cpp_lora_that_reproduces_peft_s_updates(make_engine, tmp_path):
    engine = _trained(make_engine)
    config = engine.bank.model.config
    path = write_gguf_lora(engine.bank.lora_tensors("a"), config, tmp_path / "a.gguf")
    reader = gguf.GGUFReader(path)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "general.type") == "adapter"
    assert _field(reader, "adapter.type") == "lora"
    alpha = _field(reader, "adapter.lora.alpha")
    assert alpha == engine.config.lora_alpha == 32.0
    tensors = {t.name: t for t in reader.tensors}
    expected = {f"blk.{i}.{p}.weight.{ab}" for i in range(2) for p in PROJECTIONS for ab in ("lora_a", "lora_b")}
    assert set(tensors) == expected
    slot = engine.bank.slot("a")
    layers = {name.removeprefix("base_model.model."): m for name, m in engine.bank.model.named_modules()}
    gguf_names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v"}
    gguf_names |= {"self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up"}
    gguf_names |= {"mlp.down_proj": "ffn_down"}
    rank = engine.config.lora_rank
    for i in range(2):
        for hf, short in gguf_names.items():
            module = layers[f"model.layers.{i}.{hf}"]
            assert isinstance(module, LoraLayer)
            out_features, in_features = module.base_layer.weight.shape
            a, b = tensors[f"blk.{i}.{short}.weight.lora_a"], tensors[f"blk.{i}.{short}.weight.lora_b"]
            # llama.cpp checks a.ne[0] == the base tensor's ne[0] (inputs), b.ne[1] == its ne[1] (outputs), ranks
            assert a.shape.tolist() == [in_features, rank] and b.shape.tolist() == [rank, out_features]
            assert a.tensor_type == b.tensor_type == gguf.GGMLQuantizationType.F32
            delta = torch.from_numpy(np.array(b.data) @ np.array(a.data)) * (alpha / rank)
            peft_delta = module.get_delta_weight(slot).detach()  # peft's own B·A·(alpha/r), in HF row order
            assert delta.abs().max() > 0.1
            expected_delta = llama_cpp_rows(f"blk.{i}.{short}.weight", peft_delta, config)
            assert torch.allclose(delta, expected_delta, rtol=0, atol=1e-6)
            if short in ("attn_q", "attn_k"):  # reordered, and back to HF order the way transformers reads GGUF
                assert not torch.allclose(delta, peft_delta, rtol=0, atol=1e-3)
                heads = config.num_attention_heads
                kv = config.num_key_value_heads if short == "attn_k" else heads
                back = LlamaTensorProcessor()._reverse_permute_weights(delta.numpy(), heads, kv)
                assert np.allclose(back, peft_delta.numpy(), rtol=0, atol=1e-6)


def test_a_failed_export_leaves_the_previous_file_and_no_partial_one(make_engine, tmp_path, monkeypatch):
    engine = _trained(make_engine)
    path = write_gguf_lora(engine.bank.lora_tensors("a"), engine.bank.model.config, tmp_path / "a.gguf")
    before = path.read_bytes()

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    with pytest.raises(OSError, match="disk full"):
        write_gguf_lora(engine.bank.lora_tensors("a"), engine.bank.model.config, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf"]


def test_the_adapter_version_changes_when_the_adapter_does_and_only_then(make_engine):
    engine = make_engine()
    engine.agent("a")
    engine.agent("b")
    start = adapter_version(engine.bank, "a")
    engine.stream_completion("a", engine.encode("Hello there"), Sampling(max_new_tokens=4)).result()
    engine.write_tokens("b", engine.encode("The quick brown fox jumps over the lazy dog. " * 8))
    assert adapter_version(engine.bank, "a") == start  # reading it, or training another agent, leaves it
    engine.write_tokens("a", engine.encode("The quick brown fox jumps over the lazy dog. " * 8))
    trained = adapter_version(engine.bank, "a")
    assert trained != start
    tensors, _ = engine.bank.weights("a")
    engine.bank.load_weights("a", {k: t * 1.0001 for k, t in tensors.items()})  # as when swapped in from a store
    assert adapter_version(engine.bank, "a") not in (start, trained)
    engine.bank.load_weights("a", tensors)
    assert adapter_version(engine.bank, "a") == trained  # the same values again: nothing to export


def test_the_backend_says_what_it_needs(make_engine, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"not loaded from one.*\.gguf"):
        make_engine(decode_backend="llama.cpp")  # the tiny model was built in memory, from no GGUF file
    monkeypatch.setattr(llamacpp_decoding, "gguf_file", lambda model, name: tmp_path / "model.gguf")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    with pytest.raises(ConfigError, match=r"pip install 'templora-memory\[llamacpp\]'"):
        make_engine(decode_backend="llama.cpp")
    assert type(make_engine().decoder).__name__ == "DecodeModel"  # the default backend needs neither


def test_export_refuses_models_llama_cpp_names_are_not_mapped_for(make_engine, tmp_path):
    engine = _trained(make_engine)
    config = engine.bank.model.config.__class__(**engine.bank.model.config.to_dict())
    config.model_type = "gpt2"
    with pytest.raises(ConfigError, match=r"supports the model types gemma2, llama, mistral, phi3, qwen2, not 'gpt2'"):
        write_gguf_lora(engine.bank.lora_tensors("a"), config, tmp_path / "a.gguf")


class _FullRecompute:
    """A `LogitsSource` over a torch model that recomputes the whole sequence per call (no KV cache)."""

    def __init__(self, model) -> None:
        self.model, self.ids, self.feeds = model, [], []

    def next_logits(self, feed: list[int]) -> torch.Tensor:
        self.feeds.append(list(feed))
        self.ids += feed
        return self.model(input_ids=torch.tensor([self.ids])).logits[0, -1].float()


@pytest.mark.parametrize("sampling", [Sampling(max_new_tokens=6), Sampling(6, 0.9, 0.9, 1.3, seed=5)])
def test_generation_with_a_logits_source_picks_what_the_torch_path_picks(make_engine, sampling):
    engine = _trained(make_engine)
    prompt = engine.encode("The blacksmith sells swords in Oakridge.")
    with engine.bank.active("a") as model:
        source = _FullRecompute(model)
        assert isinstance(source, LogitsSource)
        expected = list(generate_tokens(model, prompt, sampling, set()))
        got = list(generate_tokens(source, prompt, sampling, set()))
    assert got == expected and len(got) == 6
    assert source.feeds[0] == prompt and all(len(feed) == 1 for feed in source.feeds[1:])
