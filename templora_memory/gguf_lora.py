"""An agent's LoRA as a llama.cpp LoRA adapter file (GGUF), written the way llama.cpp's `convert_lora_to_gguf.py`
writes one: `general.type` "adapter", `adapter.type` "lora", `adapter.lora.alpha`, and per adapted layer the
tensors `<gguf name>.lora_a` (r, in) and `.lora_b` (out, r) in fp32, named with gguf's tensor-name map.

Llama, Mistral, Qwen2, Phi-3 and Gemma-2 models are mapped (`ARCHITECTURES`, as llama.cpp's converter maps them).
llama.cpp stores a Llama (or Mistral) model's q and k projections with their output rows permuted (its RoPE pairs
adjacent features; transformers un-permutes them when it reads a GGUF file), so their `lora_b` rows are permuted the
same way. llama.cpp scales each update by alpha / rank, the same as peft's lora_alpha / r.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from transformers import PretrainedConfig

from templora_memory.errors import ConfigError

ARCHITECTURES = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2", "phi3": "PHI3", "gemma2": "GEMMA2"}
"""transformers' model_type -> gguf's MODEL_ARCH member, as convert_hf_to_gguf.py writes the base model."""
PERMUTED = {"llama", "mistral"}
"""Model types whose q and k rows llama.cpp's converter permutes (its `LlamaModel`)."""
LoraTensors = dict[str, tuple[torch.Tensor, torch.Tensor, float]]
"""Per base-model layer name: (A (r, in), B (out, r), scale), as `AdapterBank.lora_tensors` returns them."""


def write_gguf_lora(tensors: LoraTensors, config: PretrainedConfig, path: str | os.PathLike) -> Path:
    """Write `tensors` as a llama.cpp LoRA adapter for a model with `config`, atomically (temp file, then rename),
    so that a reader never sees half a file."""
    import gguf

    arch = _arch(config)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    alpha = _alpha(tensors)
    path = Path(path)
    writer_tensors = []
    for layer, (a, b, _) in tensors.items():
        name = names.get_name(f"{layer}.weight", try_suffixes=(".weight",))
        if name is None:
            raise ConfigError(f"layer '{layer}' has no llama.cpp tensor name; cannot export its LoRA to GGUF")
        b = llama_cpp_rows(name, b.detach().float(), config)
        writer_tensors += [(f"{name}.lora_a", a.detach().float()), (f"{name}.lora_b", b)]
    handle, staging = tempfile.mkstemp(prefix=".lora-", suffix=".gguf", dir=path.parent)
    os.close(handle)
    try:
        writer = gguf.GGUFWriter(staging, gguf.MODEL_ARCH_NAMES[arch])
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for name, tensor in writer_tensors:
            writer.add_tensor(name, tensor.contiguous().numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


def llama_cpp_rows(gguf_name: str, rows: torch.Tensor, config: PretrainedConfig) -> torch.Tensor:
    """`rows` (out, …) of a q or k projection in llama.cpp's order (convert_hf_to_gguf's `permute`); others as is."""
    if getattr(config, "model_type", None) not in PERMUTED:
        return rows
    if ".attn_q." in gguf_name:
        heads = config.num_attention_heads
    elif ".attn_k." in gguf_name:
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    else:
        return rows
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _arch(config: PretrainedConfig):
    """gguf's architecture for the model, for the model types `ARCHITECTURES` maps."""
    import gguf

    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ConfigError(
            f"exporting a LoRA to llama.cpp supports the model types {', '.join(sorted(ARCHITECTURES))}, "
            f"not '{model_type}'; use decode_backend='torch' for this model"
        )
    return getattr(gguf.MODEL_ARCH, ARCHITECTURES[model_type])


def _alpha(tensors: LoraTensors) -> float:
    """The one alpha (= scale × rank) of every layer: llama.cpp reads a single alpha per adapter file."""
    alphas = {round(scale * a.shape[0], 6) for a, _, scale in tensors.values()}
    if len(alphas) != 1:
        raise ConfigError(f"a GGUF LoRA holds one alpha for every layer; this adapter's layers have {sorted(alphas)}")
    return alphas.pop()
