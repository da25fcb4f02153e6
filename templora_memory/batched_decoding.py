"""One forward step over the next token of several replies, each with its own agent's LoRA and its own KV cache.

Row i of a step is one reply. The decode model's linear layers multiply the whole batch with their base weights
once (the compact int4/bf16/int8 copy, or fp32), which is where a single reply's step spends its time reading
weights; each row then adds its own LoRA update x·Aᵀ·Bᵀ·(α/r) with two batched matrix products over the rows
that have one (`RowLoras`), the others get none. Attention stays per row: row i's new key and value states are
appended to row i's own `PromptCache` and its query attends over that cache alone, with the model's usual
attention function, so caches of different lengths need no padding, a reply joins or leaves the batch without
copying anyone's states, and its cache stays the agent's (reused by the next call as on the single path). The
rows' positions are their own cache lengths.

The model's forward runs unchanged: the per-row attention is an attention implementation registered with
transformers (`rows_attention`), chosen for the duration of a step, and a stand-in cache (`_RowCaches`) routes
each row's states to its own cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from templora_memory.adapters import AdapterBank
from templora_memory.decoding import DecodeModel, RowLoras
from templora_memory.devices import model_device
from templora_memory.kv_cache import PromptCache

ROWS_ATTENTION = "templora_rows"
"""Prefix of the registered attention implementations that attend row by row (one per inner implementation)."""


class LoraSlots:
    """Each batched reply's copy of its agent's LoRA, stacked per layer in slots 0..k-1 so that the first k rows of a
    step read theirs as one tensor; copied from the bank when a reply joins (as `DecodeModel.active` copies it at
    the start of a single reply), so training may change the adapter meanwhile."""

    def __init__(self, decoder: DecodeModel) -> None:
        """Empty stacks over `decoder`'s layers; they grow as replies join."""
        self.decoder = decoder
        self.a_t: dict[str, torch.Tensor] = {}  # layer name -> (slots, in, r)
        self.b_t: dict[str, torch.Tensor] = {}  # layer name -> (slots, r, out)
        self._views: dict[tuple[int, int], dict[str, RowLoras]] = {}  # per-layer views of slots start:stop

    @staticmethod
    def supports(decoder: DecodeModel, bank: AdapterBank, agent_id: str | None) -> bool:
        """Whether every layer the agent's LoRA adapts is one of the decode model's linear layers (else peft runs it,
        one reply at a time)."""
        return agent_id is None or set(bank.lora_tensors(agent_id)) <= set(decoder.layers)

    def load(self, slot: int, bank: AdapterBank, agent_id: str) -> None:
        """Copy the agent's LoRA, as it is now, into `slot` as Aᵀ and scale·Bᵀ (growing the stacks when needed)."""
        for name, (a, b, scale) in bank.lora_tensors(agent_id).items():
            dtype = self.decoder.layers[name].weight.dtype
            a_t, b_t = a.detach().t(), b.detach().t()
            self.a_t[name] = self._with_slot(self.a_t.get(name), slot, a_t, dtype)
            self.b_t[name] = self._with_slot(self.b_t.get(name), slot, b_t, dtype)
            self.a_t[name][slot].copy_(a_t)
            torch.mul(b_t, scale, out=self.b_t[name][slot])

    def _with_slot(self, stack: torch.Tensor | None, slot: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`stack` (slots, *like.shape) with room for `slot`: a new one, twice as large, when it has none (the
        views of the old one are dropped)."""
        if stack is not None and stack.shape[0] > slot:
            return stack
        grown = like.new_zeros(max(slot + 1, 2 * (0 if stack is None else stack.shape[0])), *like.shape, dtype=dtype)
        if stack is not None:
            grown[: stack.shape[0]].copy_(stack)
        self._views.clear()
        return grown

    def move(self, source: int, target: int) -> None:
        """Copy slot `source` into slot `target` (a reply leaving frees its slot; the last one moves into it)."""
        for stack in (*self.a_t.values(), *self.b_t.values()):
            stack[target].copy_(stack[source])

    @contextlib.contextmanager
    def rows(self, start: int, stop: int) -> Iterator[None]:
        """Within the block, row i of the decode model's input gets slot `start` + i's LoRA, for i < `stop` - `start`
        (the rows after them none): `rows(0, k)` for a batched step, `rows(s, s + 1)` for slot s's reply alone."""
        if stop > start and (start, stop) not in self._views:
            self._views[start, stop] = {
                name: RowLoras(self.a_t[name][start:stop], self.b_t[name][start:stop]) for name in self.a_t
            }
        try:
            self.decoder.row_loras.update(self._views[start, stop] if stop > start else {})
            yield
        finally:
            self.decoder.row_loras.clear()


def batchable(model: PreTrainedModel) -> bool:
    """Whether row-by-row attention reproduces the model's own: its attention is a registered implementation (SDPA,
    not a family's own eager code) and every layer attends to the whole cache (no sliding window, whose mask the
    rows' attention does not apply)."""
    config = model.config
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    registered = config._attn_implementation in ALL_ATTENTION_FUNCTIONS
    return registered and kinds == {"full_attention"} and getattr(config, "sliding_window", None) is None


@torch.no_grad()
def batched_logits(model: nn.Module, tokens: Sequence[int], caches: Sequence[PromptCache]) -> torch.Tensor:
    """Logits (B, V) fp32 on the CPU after one more token per row: `tokens[i]` appended to `caches[i]`, which every
    row attends over alone (each row's LoRA as `LoraSlots.rows` set it)."""
    device = model_device(model)
    for cache in caches:
        if cache.past is None:
            raise ValueError("every row of a batched step needs its prompt in its cache first (PromptCache.align)")
    ids = torch.tensor([[t] for t in tokens], device=device)  # (B, 1)
    positions = torch.tensor([[cache.past.get_seq_length()] for cache in caches], device=device)  # (B, 1)
    try:
        with _attending_by_row(model):
            out = model(input_ids=ids, position_ids=positions, past_key_values=_RowCaches(caches), use_cache=True)
    except BaseException:
        for cache in caches:
            cache.clear()  # some layers may hold the new states already: no cache matches its ids any more
        raise
    for token, cache in zip(tokens, caches, strict=True):
        cache.record([token], cache.past)
    return out.logits[:, -1].float().cpu()


class _RowCaches:
    """Stands in for the model's cache during a batched step: row i's new states go to row i's own cache, and the
    attention gets each row's whole keys and values as lists (see `rows_attention`)."""

    def __init__(self, caches: Sequence[PromptCache]) -> None:
        """`caches[i]`: row i's cache, its prompt already in it."""
        self.caches = caches

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Append keys and values (B, H, 1, D) row by row to the layer's own cache layer (every one holds a prompt);
        returns the rows' keys and values, (1, H, T_i, D) each."""
        rows = zip(keys.split(1), values.split(1), self.caches, strict=True)
        held = [cache.past.layers[layer_idx].update(k, v) for k, v, cache in rows]
        return [k for k, _ in held], [v for _, v in held]


def rows_attention(inner: str):
    """The attention function that runs the registered implementation `inner` on each row alone, with no mask: one
    query token sees its whole cache, as on the single path. For "sdpa" it calls PyTorch's SDPA directly, as
    transformers' wrapper does for one query token without a mask (grouped heads), minus its per-call overhead."""
    attend = ALL_ATTENTION_FUNCTIONS[inner]

    def forward(module, query, keys, values, attention_mask, scaling=None, **kwargs):
        """Attention of queries (B, H, 1, D) over lists of each row's keys and values; (B, 1, H, D)."""
        rows = zip(query.split(1), keys, values, strict=True)
        if inner == "sdpa":
            outputs = [_sdpa_row(q, k, v, scaling) for q, k, v in rows]
        else:
            outputs = [attend(module, q, k, v, None, scaling=scaling, **kwargs)[0] for q, k, v in rows]
        return torch.cat(outputs), None

    return forward


def _sdpa_row(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float | None) -> torch.Tensor:
    """One row's query (1, H, 1, D) over its keys and values (1, H_kv, T, D): (1, 1, H, D)."""
    grouped = query.shape[1] != keys.shape[1]
    return F.scaled_dot_product_attention(query, keys, values, scale=scale, enable_gqa=grouped).transpose(1, 2)


@contextlib.contextmanager
def _attending_by_row(model: nn.Module) -> Iterator[None]:
    """Within the block, the model's attention runs row by row (`rows_attention` over its usual implementation)."""
    config = model.config
    inner = config._attn_implementation
    name = f"{ROWS_ATTENTION}_{inner}"
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, rows_attention(inner))
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = inner
