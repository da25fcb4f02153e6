"""Per-agent KV cache: the paper's cache reuse and attention sinks (§2).

An agent's `PromptCache` keeps the key/value states of the tokens its last call ran through the
model. The next call computes only the tokens the cache does not hold yet, even if the adapter
was trained in between (cache reuse: the states stay those of the older adapter, which the paper
finds costs no quality). With attention sinks, when the oldest turns leave the window their states
are evicted from the middle of the cache and the states after them are rotated back to their new
positions (StreamingLLM), so the prompt's start (system message, template header) stays as the
sink and a sliding window never forces a recomputation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from templora_memory.errors import ConfigError

SINK_TOKENS = 4
"""Fewest prompt tokens kept as attention sinks before the evicted span (StreamingLLM keeps four)."""
MIN_REUSED_TOKENS = 16
"""An eviction must save at least this many cached tokens (or all that follow), else the rest is recomputed."""
_POSITION_LINEAR_ROPE = {"default", "linear", "llama3", "yarn"}  # angle = position × fixed frequency
SPARE_TOKENS = 256
"""Least room a growing cache layer keeps for the tokens to come (beyond that, a quarter of its length)."""


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` that appends new states into spare room of one buffer instead of copying the whole cache
    for every token (transformers concatenates: 47 MB per token at a 1K window on SmolLM2)."""

    _key_room: torch.Tensor | None = None
    _value_room: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self._key_room = _append(self.keys, self._key_room, key_states)
        self.values, self._value_room = _append(self.values, self._value_room, value_states)
        return self.keys, self.values

    def held_bytes(self) -> int:
        """RAM of the buffers, spare room included."""
        rooms = [self._key_room, self._value_room]
        held = [r if _fills_start(t, r) else t for t, r in zip((self.keys, self.values), rooms, strict=True)]
        return sum(t.nbytes for t in held if t is not None)


def growing_cache() -> DynamicCache:
    """An empty `DynamicCache` whose layers are `GrowingLayer`s."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    return cache


def _append(held: torch.Tensor, room: torch.Tensor | None, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`held` (B, H, T, D) with `new` (B, H, t, D) appended, as a view of `room` (grown when it is full, or when
    `held` is no longer its start, e.g. after an eviction); returns (the view, the room)."""
    length = held.shape[-2] if held.dim() == 4 else 0
    needed = length + new.shape[-2]
    if room is None or room.shape[-2] < needed or not _fills_start(held, room):
        grown = new.new_empty(*new.shape[:-2], needed + max(SPARE_TOKENS, needed // 4), new.shape[-1])
        if length:
            grown.narrow(-2, 0, length).copy_(held)
        room = grown
    room.narrow(-2, length, new.shape[-2]).copy_(new)  # narrow: cheaper than indexing, twice per row and layer
    return room.narrow(-2, 0, needed), room


def _fills_start(held: torch.Tensor, room: torch.Tensor | None) -> bool:
    """Whether `held` is the first positions of `room` (a view sharing its memory and layout)."""
    if room is None or held.dim() != 4:
        return False
    return held.data_ptr() == room.data_ptr() and held.stride() == room.stride()


class RopeShift:
    """Moves cached keys to earlier positions by rotating them back, for rotary position embeddings."""

    def __init__(self, inv_freq: torch.Tensor) -> None:
        self.inv_freq = inv_freq.detach().float().cpu()  # (D_rot / 2,)

    @classmethod
    def of(cls, model: nn.Module) -> RopeShift:
        """The shift for `model`'s rotary embedding; `ConfigError` if keys cannot be moved exactly."""
        for module in model.modules():
            inv_freq = getattr(module, "inv_freq", None)
            if isinstance(inv_freq, torch.Tensor):
                rope_type = getattr(module, "rope_type", "default")
                if rope_type not in _POSITION_LINEAR_ROPE:
                    raise ConfigError(
                        f"attention_sinks needs rotary angles linear in position; this model's RoPE is {rope_type!r}. "
                        "Set attention_sinks=False."
                    )
                return cls(inv_freq)
        raise ConfigError("attention_sinks needs a model with rotary position embeddings; set attention_sinks=False")

    def back(self, keys: torch.Tensor, offset: int) -> torch.Tensor:
        """`keys` (B, H, T, D) rotated from positions p to p − offset."""
        angle = offset * self.inv_freq  # (D_rot / 2,)
        cos = torch.cat([angle.cos(), angle.cos()]).to(keys.dtype)
        sin = torch.cat([angle.sin(), angle.sin()]).to(keys.dtype)
        rot, rest = keys[..., : cos.numel()], keys[..., cos.numel() :]
        half = rot.shape[-1] // 2
        rotated_half = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
        return torch.cat([rot * cos - rotated_half * sin, rest], dim=-1)


@dataclass
class PromptCache:
    """The token ids whose key/value states `past` holds, and how they are brought in line with a new prompt."""

    shift: RopeShift | None = None
    """Set for attention sinks: the span a sliding window dropped is evicted instead of recomputed."""
    ids: list[int] = field(default_factory=list)
    past: DynamicCache | None = None
    computed_tokens: int = 0
    """Tokens run through the model with this cache (what cache reuse saves shows here)."""
    evicted_tokens: int = 0
    """Tokens whose states were evicted by attention sinks."""

    def align(self, prompt: Sequence[int]) -> list[int]:
        """Make the cache hold a prefix of `prompt` (evicting or truncating) and return the tokens still to run.

        At least the prompt's last token is returned, since its logits start the reply.
        """
        prompt = list(prompt)
        shared = common_prefix(self.ids, prompt, limit=len(prompt) - 1)
        if self.shift is not None and SINK_TOKENS <= shared < len(self.ids):
            resume, reused = self._resume(prompt, shared)
            if reused:
                self._evict(shared, resume, reused)
                shared += reused
        self._truncate(shared)
        if self.past is None:
            self.past = growing_cache()
        return prompt[shared:]

    def record(self, ids: Sequence[int], past: DynamicCache) -> None:
        """Note that `ids` were just run through the model, leaving their states in `past`."""
        self.ids.extend(ids)
        self.past = past
        self.computed_tokens += len(ids)

    def nbytes(self) -> int:
        """RAM held by the cached key/value states."""
        if self.past is None:
            return 0
        return sum(
            layer.held_bytes() if isinstance(layer, GrowingLayer) else layer.keys.nbytes + layer.values.nbytes
            for layer in self.past.layers
            if layer.is_initialized
        )

    def stats(self) -> dict[str, int]:
        """What the cache did and holds: tokens computed, held, evicted, and its bytes (`AgentStats` fields)."""
        held = self.past.get_seq_length() if self.past is not None else 0
        return {
            "computed_tokens": self.computed_tokens,
            "cached_tokens": held,
            "evicted_tokens": self.evicted_tokens,
            "kv_cache_bytes": self.nbytes(),
        }

    def clear(self) -> None:
        """Forget every cached state (the next call computes its whole prompt)."""
        self.ids, self.past = [], None

    def _resume(self, prompt: list[int], shared: int) -> tuple[int, int]:
        """Where in the cache the prompt's continuation after `shared` starts, and how many tokens match there."""
        wanted = prompt[shared : len(prompt) - 1]
        if not wanted:
            return 0, 0
        best = (0, 0)
        for start in range(shared + 1, len(self.ids)):
            if self.ids[start] == wanted[0]:
                length = common_prefix(self.ids[start:], wanted, limit=len(wanted))
                if length > best[1]:
                    best = (start, length)
        start, length = best
        enough = length >= MIN_REUSED_TOKENS or (length and start + length == len(self.ids))
        return (start, length) if enough else (0, 0)

    def _evict(self, start: int, stop: int, kept: int) -> None:
        """Drop the states of ids[start:stop], keep the next `kept`, and rotate those back to follow ids[:start]."""
        for layer in self.past.layers:
            keys = self.shift.back(layer.keys[..., stop : stop + kept, :], stop - start)
            layer.keys = torch.cat([layer.keys[..., :start, :], keys], dim=-2)
            layer.values = torch.cat([layer.values[..., :start, :], layer.values[..., stop : stop + kept, :]], dim=-2)
        self.evicted_tokens += stop - start
        self.ids = self.ids[:start] + self.ids[stop : stop + kept]

    def _truncate(self, length: int) -> None:
        if length >= len(self.ids):
            return
        if length == 0 or self.past is None:
            self.clear()
            return
        for layer in self.past.layers:
            layer.keys, layer.values = layer.keys[..., :length, :], layer.values[..., :length, :]
        self.ids = self.ids[:length]


def common_prefix(a: Sequence, b: Sequence, limit: int | None = None) -> int:
    """Length of the longest common prefix of `a` and `b` (token ids or text), at most `limit`."""
    n = min(len(a), len(b), max(limit, 0) if limit is not None else len(a))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
