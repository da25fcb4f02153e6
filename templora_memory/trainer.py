"""The Temp-Lora update (Algorithm 1, lines 15–18): train on (previous L_T tokens → chunk), loss on the chunk only."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

IGNORE_INDEX = -100  # label value the loss skips (Hugging Face convention)
_RNG_LOCK = threading.RLock()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG for this block, restore it after, and keep other threads' seeded blocks out.

    Dropout and peft's LoRA initialisation take no generator argument, so reproducible training
    needs the global RNG; the lock keeps a background training thread and the serving thread
    from drawing from each other's seeded stream.
    """
    with _RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_example(
    context: Sequence[int], chunk: Sequence[int], train_context_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and labels for one chunk: the last L_T context tokens are input only, the chunk is scored.

    Returns tensors of shape (1, T) with T = min(L_T, len(context)) + len(chunk).
    """
    prefix = list(context[len(context) - train_context_tokens :]) if train_context_tokens else []
    input_ids = torch.tensor([prefix + list(chunk)], dtype=torch.long)  # (1, T)
    labels = input_ids.clone()
    labels[0, : len(prefix)] = IGNORE_INDEX  # no loss on X_T, only on Chunk_k
    return input_ids, labels


def learning_rate(step: int, config_lr: float, warmup_steps: int) -> float:
    """Linear warm-up from 0 to α over the first `warmup_steps` optimizer steps, then constant (paper §3)."""
    if warmup_steps <= 0:
        return config_lr
    return config_lr * min(1.0, (step + 1) / warmup_steps)


def train_chunk(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    first_step: int,
    lr_at: Callable[[int], float],
) -> float:
    """Run `epochs` optimizer steps on one example; returns the mean loss over those steps.

    Only parameters held by `optimizer` change; the caller makes sure those are the agent's LoRA weights.
    """
    model.train()  # LoRA dropout on
    losses = []
    try:
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(first_step + epoch)
            loss = model(input_ids=input_ids, labels=labels).loss  # mean NLL over chunk tokens
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    finally:
        model.eval()
    return sum(losses) / len(losses)
