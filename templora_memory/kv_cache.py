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

from templora_memory.errors import ConfigError

SINK_TOKENS = 4
"""Fewest prompt tokens kept as attention sinks before the evicted span (StreamingLLM keeps four)."""
MIN_REUSED_TOKENS = 16
"""An eviction must save at least this many cached tokens (or all that follow), else the rest is recomputed."""
_POSITION_LINEAR_ROPE = {"default", "linear", "llama3", "yarn"}  # angle = position × fixed frequency


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
        shared = _common_prefix(self.ids, prompt, limit=len(prompt) - 1)
        if self.shift is not None and SINK_TOKENS <= shared < len(self.ids):
            resume, reused = self._resume(prompt, shared)
            if reused:
                self._evict(shared, resume, reused)
                shared += reused
        self._truncate(shared)
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
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.past.layers)

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
                length = _common_prefix(self.ids[start:], wanted, limit=len(wanted))
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


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """Length of the longest common prefix of `a` and `b`, at most `limit`."""
    n = min(len(a), len(b), max(limit, 0))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
