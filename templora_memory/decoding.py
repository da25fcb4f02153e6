"""The model replies are generated with: the base model's linear layers in a compact weight format, plus the
active agent's LoRA applied unmerged, copied from the adapter bank at the start of each reply.

Decoding one token reads every weight once, so on a CPU its speed is set by the bytes of weight read
(0.54 GB per token for SmolLM2-135M in fp32). The decode model holds each linear layer once more in
bf16, int8 (per output channel) or int4 (groups of 32 with a scale and a zero, the grid of the GGUF file's
Q4_1 weights, so for the default model nothing is lost); everything else (embeddings, norms, the fp32
weights themselves) is shared with the training model, not copied. Prompts of more than `PREFILL_ROWS`
tokens (per sequence) run on the fp32 weights (matrix products there are compute-bound, and the cached states stay
exact); single tokens run on the compact copy. The LoRA update x·Aᵀ·Bᵀ·(α/r) is added in fp32 with two
small matrix products per layer, in place of peft's per-layer module calls; in a batched step of several
replies (`batched_decoding`) each row adds its own agent's update.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from templora_memory.adapters import AdapterBank
from templora_memory.config import TempLoraConfig
from templora_memory.devices import model_device
from templora_memory.errors import ConfigError
from templora_memory.precision import cpu_supports_bf16

if TYPE_CHECKING:
    from templora_memory.llamacpp_decoding import LlamaCppDecoder

WeightFormat = Literal["fp32", "bf16", "int8", "int4"]
PREFILL_ROWS = 8
"""Above this many tokens per sequence in one call, a layer multiplies with its fp32 weights instead of the compact
copy (a batched step of one token for each of many replies stays on the compact copy)."""
INT4_GROUP = 32
"""Input features sharing one int4 scale and zero (llama.cpp's Q4_1 block size)."""
INT4_EXACT = 0.01
"""Largest int4 rounding error, in grid steps, for which the weights count as already on an int4 grid."""


class DecodeLinear(nn.Module):
    """A linear layer for decoding: fp32 weights shared with training, a compact copy, an optional LoRA."""

    def __init__(
        self, linear: nn.Linear, weights: WeightFormat, name: str = "", row_loras: dict[str, RowLoras] | None = None
    ) -> None:
        """`name`: the layer's module name, its key in `row_loras` (the decode model's, set during a batched step)."""
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias  # shared with the training model, not copied
        self.out_features = linear.out_features
        self.compact = _Compact.of(linear.weight.detach(), weights)
        self.lora: tuple[torch.Tensor, torch.Tensor] | None = None
        """The active agent's (Aᵀ (in, r), scale · Bᵀ (r, out)), contiguous copies for this reply; None: base model."""
        self.name, self.row_loras = name, row_loras if row_loras is not None else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])  # (B·T, in)
        if self.compact is None or x.shape[-2] > PREFILL_ROWS:
            y = F.linear(rows, self.weight, self.bias)
        else:
            y = self.compact(rows) if self.bias is None else self.compact(rows) + self.bias
        if self.lora is not None:
            a_t, b_t = self.lora
            y = torch.addmm(y, rows.mm(a_t), b_t)  # y + (x Aᵀ)(scale · B)ᵀ, (T, out)
        y = y.reshape(*x.shape[:-1], self.out_features)
        if self.row_loras and (rows_lora := self.row_loras.get(self.name)) is not None:
            rows_lora.add(y, x)
        return y


class RowLoras:
    """One layer's LoRA for the rows of a batched step: Aᵀ (k, in, r) and scale·Bᵀ (k, r, out) for its first k rows;
    the rows after them (replies of the base model) get no update."""

    def __init__(self, a_t: torch.Tensor, b_t: torch.Tensor) -> None:
        self.a_t, self.b_t = a_t, b_t

    def add(self, y: torch.Tensor, x: torch.Tensor) -> None:
        """Add to `y` (B, T, out), in place, each of its first k rows' update from `x` (B, T, in)."""
        k = self.a_t.shape[0]
        adapted, x = (y, x) if k == y.shape[0] else (y.narrow(0, 0, k), x.narrow(0, 0, k))
        adapted.baddbmm_(torch.bmm(x, self.a_t), self.b_t)  # (k, T, r), then y + that · scale·Bᵀ


class _Compact:
    """One weight matrix (out, in) in a compact format, multiplied with bf16 activations (fp32 in and out)."""

    def __init__(self, kind: WeightFormat, tensors: tuple[torch.Tensor, ...]) -> None:
        self.kind, self.tensors = kind, tensors

    @classmethod
    def of(cls, weight: torch.Tensor, kind: WeightFormat) -> _Compact | None:
        """The compact copy of `weight`; None for fp32 (the shared weights are used as they are)."""
        if kind == "fp32":
            return None
        if kind == "bf16":
            return cls(kind, (weight.bfloat16(),))
        if kind == "int8":
            scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127  # (out,)
            return cls(kind, (torch.round(weight / scale[:, None]).to(torch.int8), scale.bfloat16()))
        packed, scales_zeros, _ = int4_quantize(weight)
        return cls(kind, (packed, scales_zeros))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x16 = x.bfloat16()
        if self.kind == "bf16":
            y = F.linear(x16, self.tensors[0])
        elif self.kind == "int8":
            y = torch.ops.aten._weight_int8pack_mm(x16, *self.tensors)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x16, self.tensors[0], INT4_GROUP, self.tensors[1])
        return y.float()

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def int4_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """`weight` (out, in) as int4 in groups of 32 inputs, each with a scale and a zero (its min and max on the grid).

    Returns the packed weights, the (in/32, out, 2) bf16 scales and zeros torch's int4 kernel reads, and the
    largest rounding error in grid steps (≈0 for weights dequantised from a Q4_1 GGUF file).
    """
    out, inp = weight.shape
    groups = weight.float().reshape(out, inp // INT4_GROUP, INT4_GROUP)
    low, high = groups.amin(-1), groups.amax(-1)  # (out, in/32)
    step = ((high - low) / 15).clamp(min=1e-12)
    codes = torch.round((groups - low[..., None]) / step[..., None]).clamp(0, 15)
    error = ((codes * step[..., None] + low[..., None] - groups).abs() / step[..., None]).max().item()
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.reshape(out, inp).to(torch.int32), 2)
    # the kernel computes (code − 8) · scale + zero
    scales_zeros = torch.stack([step, low + 8 * step], dim=-1).transpose(0, 1).contiguous().bfloat16()
    return packed, scales_zeros, error


def resolve_weights(choice: str, base: PreTrainedModel) -> WeightFormat:
    """The weight format for `decode_weights`: "auto" is int4 where the base weights already lie on an int4 grid
    (the default GGUF model) and the CPU has native bf16, else fp32; "bf16" without native bf16 falls back to fp32.
    Off the CPU the base weights are used as they are ("fp32": no copy; on a GPU they are bf16 already)."""
    if model_device(base).type != "cpu":
        if choice in ("int8", "int4"):
            raise ConfigError(
                f"decode_weights={choice!r} uses CPU-only kernels; on {model_device(base)} use decode_weights='auto' "
                "(the GPU decodes with its bf16 weights and SDPA)"
            )
        return "fp32"
    if choice == "bf16" and not cpu_supports_bf16():
        warnings.warn("decode_weights='bf16': this CPU has no native bf16, decoding in fp32", stacklevel=3)
        return "fp32"
    if choice == "int4" and not _int4_divisible(base):
        raise ConfigError(
            f"decode_weights='int4' needs every linear layer's input size divisible by {INT4_GROUP} and output size "
            "by 16; this model's are not. Use decode_weights='int8' or 'fp32'"
        )
    if choice != "auto":
        return choice  # type: ignore[return-value]
    if not cpu_supports_bf16() or not _int4_divisible(base):
        return "fp32"
    on_grid = all(int4_quantize(m.weight.detach())[2] <= INT4_EXACT for _, m in _linears(base, head=False))
    return "int4" if on_grid else "fp32"


def decoder_for(
    base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: TempLoraConfig, model: str | None, name: str
) -> DecodeModel | LlamaCppDecoder:
    """The engine's reply model for `config.decode_backend`; the llama.cpp one is imported only when chosen."""
    if config.decode_backend == "llama.cpp":
        from templora_memory.llamacpp_decoding import LlamaCppDecoder

        if model_device(base).type != "cpu":
            raise ConfigError(
                f"decode_backend='llama.cpp' runs on the CPU but the model is on {model_device(base)}; "
                "set device='cpu' for it, or keep decode_backend='torch' on the GPU"
            )

        return LlamaCppDecoder.for_model(base, tokenizer, model, name)
    return DecodeModel(base, resolve_weights(config.decode_weights, base))


class DecodeModel:
    """A copy of the base model's module tree for generation, sharing its tensors, with `DecodeLinear` layers."""

    def __init__(self, base: PreTrainedModel, weights: WeightFormat) -> None:
        """Build before peft wraps `base`: its linear layers are still plain `nn.Linear` then."""
        self.weights = weights
        self.row_loras: dict[str, RowLoras] = {}
        """Each layer's `RowLoras` by module name during a batched step (`batched_decoding.LoraSlots.rows`)."""
        shared = {id(t): t for t in [*base.parameters(), *base.buffers()]}
        self.model: PreTrainedModel = copy.deepcopy(base, memo=shared)  # new modules, the same tensors
        self.layers: dict[str, DecodeLinear] = {}
        for name, linear in _linears(self.model, head=True):
            # the output head keeps 8 bits under int4: GGUF files store it in Q8_0
            kind: WeightFormat = "int8" if weights == "int4" and name == "lm_head" else weights
            parent, _, attr = name.rpartition(".")
            layer = DecodeLinear(linear, kind, name, self.row_loras)
            setattr(self.model.get_submodule(parent), attr, layer)
            self.layers[name] = layer

    def nbytes(self) -> int:
        """RAM the compact weight copies take (the rest is shared with the training model)."""
        return sum(layer.compact.nbytes() for layer in self.layers.values() if layer.compact is not None)

    @contextlib.contextmanager
    def active(self, bank: AdapterBank, agent_id: str | None) -> Iterator[PreTrainedModel]:
        """The decode model with `agent_id`'s LoRA (copied from `bank` as it is now), or the base model for None."""
        loras = bank.lora_tensors(agent_id) if agent_id is not None else {}
        if not set(loras) <= set(self.layers):  # a LoRA on a layer that is no nn.Linear: peft applies it
            with bank.active(agent_id) as model:
                yield model
            return
        try:
            for name, layer in self.layers.items():
                a, b, scale = loras.get(name, (None, None, 0.0))
                # copied once per reply, laid out for torch.addmm (transposed views cost 40 % more per token), in the
                # layer's dtype (fp32 on the CPU, the GPU's bf16)
                layer.lora = None if a is None else _lora_copy(a, b, scale, layer.weight.dtype)
            yield self.model
        finally:
            for layer in self.layers.values():
                layer.lora = None


def _lora_copy(a: torch.Tensor, b: torch.Tensor, scale: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(Aᵀ, scale · Bᵀ) as contiguous copies in `dtype`."""
    return a.detach().t().contiguous().to(dtype), (b.detach() * scale).t().contiguous().to(dtype)


def _linears(model: nn.Module, head: bool) -> list[tuple[str, nn.Linear]]:
    """The model's linear layers by module name (the output head `lm_head` only with `head`)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and (head or name != "lm_head")]


def _int4_divisible(model: nn.Module) -> bool:
    """Whether every linear layer's input size splits into int4 groups and its output size suits the kernel."""
    return all(m.in_features % INT4_GROUP == 0 and m.out_features % 16 == 0 for _, m in _linears(model, head=False))
