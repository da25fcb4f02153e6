"""The Temp-Lora update (Algorithm 1, lines 15–18): train on (previous L_T tokens → chunk), loss on the chunk only.

Two optional terms join the chunk's loss: a KL term to the base model's predictions (`kl_weight`) and
synthetic question–answer examples about the chunk (`synthetic_questions`, see `templora_memory.synthetic`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from peft import PeftModel

if TYPE_CHECKING:
    from templora_memory.config import TempLoraConfig
    from templora_memory.synthetic import QABatch, QAPair, QuestionWriter
    from templora_memory.window import Message

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


def _scored(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logits (N, V) at the N positions that predict a labelled token: the positions the CE loss scores."""
    return logits[:, :-1][labels[:, 1:] != IGNORE_INDEX]


@torch.no_grad()
def base_logprobs(model: PeftModel, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (N, V) of the base model (adapter disabled) at the chunk's scored positions."""
    with model.disable_adapter():
        logits = model(input_ids=input_ids).logits  # (1, T, V)
    return torch.log_softmax(_scored(logits, labels).float(), dim=-1)


def chunk_loss(
    model: PeftModel,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    reference: torch.Tensor | None = None,
    kl_weight: float = 0.0,
) -> torch.Tensor:
    """Mean NLL of the chunk's tokens, plus kl_weight × mean KL(p_base ‖ p_adapter) over them given a `reference`.

    `reference` is `base_logprobs` of the same example; the KL is averaged over the same N positions as the NLL.
    """
    out = model(input_ids=input_ids, labels=labels)
    if reference is None:
        return out.loss
    log_adapter = torch.log_softmax(_scored(out.logits, labels).float(), dim=-1)  # (N, V)
    # Σ_v p_base · (log p_base − log p_adapter), averaged over the N positions
    kl = F.kl_div(log_adapter, reference, log_target=True, reduction="batchmean")
    return out.loss + kl_weight * kl


def train_chunk(
    model: PeftModel,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    first_step: int,
    lr_at: Callable[[int], float],
    *,
    kl_weight: float = 0.0,
    questions: QABatch | None = None,
) -> float:
    """Run `epochs` optimizer steps on one chunk; returns the mean loss over those steps.

    Each step minimises `chunk_loss` (with the KL term when `kl_weight` > 0) plus, given `questions`, the mean NLL
    of their answer tokens. The two are added rather than pooled into one token mean, so the chunk weighs the
    same with or without questions and all questions together weigh as much as the chunk, however many there are.
    Only parameters held by `optimizer` change; the caller makes sure those are the agent's LoRA weights.
    """
    reference = base_logprobs(model, input_ids, labels) if kl_weight > 0 else None  # the base does not change
    model.train()  # LoRA dropout on
    losses = []
    try:
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(first_step + epoch)
            loss = chunk_loss(model, input_ids, labels, reference, kl_weight)
            loss.backward()
            total = loss.item()
            if questions is not None:  # a second backward adds its gradients: one step on the sum of both losses
                qa = model(**questions.inputs()).loss  # mean NLL of the answer tokens
                qa.backward()
                total += qa.item()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(total)
    finally:
        model.eval()
    return sum(losses) / len(losses)


def write_chunk(
    model: PeftModel,
    example: tuple[torch.Tensor, torch.Tensor],
    chunk: Sequence[int],
    system: Sequence[Message],
    optimizer: torch.optim.Optimizer,
    first_step: int,
    seed: int,
    config: TempLoraConfig,
    lr_at: Callable[[int], float],
    writer: QuestionWriter,
) -> tuple[float, list[QAPair]]:
    """One Temp-Lora update as both deployments run it: the chunk's synthetic pairs, then seeded `train_chunk`.

    `example` is `build_example`'s (input ids, labels); returns the mean loss and the pairs trained with it.
    """
    pairs = writer.write(model, chunk, seed)  # by the base model: the adapter is disabled inside
    questions = writer.batch(system, pairs)
    input_ids, labels = example
    with seeded(seed):
        loss = train_chunk(
            model,
            input_ids,
            labels,
            optimizer,
            config.epochs,
            first_step,
            lr_at,
            kl_weight=config.kl_weight,
            questions=questions,
        )
    return loss, pairs
