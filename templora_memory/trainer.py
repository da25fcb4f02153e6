"""The Temp-Lora update (Algorithm 1, lines 15–18): train on (previous L_T tokens → chunk), loss on the chunk only.

Two optional terms join the chunk's loss: a KL term to the base model's predictions (`kl_weight`) and
extra labelled examples trained in the same step (the synthetic question–answer pairs of
`templora_memory.synthetic`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import PeftModel

from templora_memory import precision
from templora_memory.config import TempLoraConfig

IGNORE_INDEX = -100  # label value the loss skips (Hugging Face convention)
_RNG_LOCK = threading.RLock()


@dataclass(frozen=True)
class LabelledBatch:
    """Right-padded examples, each of shape (B, T); labels are -100 where no loss is taken (prompt, padding)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor

    def inputs(self) -> dict[str, torch.Tensor]:
        """The model's keyword arguments for this batch (loss on the labelled tokens only)."""
        return {"input_ids": self.input_ids, "labels": self.labels, "attention_mask": self.attention_mask}


@dataclass(frozen=True)
class DistillBatch:
    """Probes as the student reads them, and the teacher's top-k log-probabilities on their N answer tokens."""

    students: LabelledBatch
    """Each probe's prompt and answer; the answer tokens are labelled (in row-major order, N in all)."""
    top_ids: torch.Tensor
    """(N, k) token ids."""
    top_logprobs: torch.Tensor
    """(N, k) the teacher's log-softmax(logits / T) at those ids."""


def padded_batch(examples: Sequence[tuple[Sequence[int], Sequence[int]]], device: torch.device | str) -> LabelledBatch:
    """Pad (prompt ids, answer ids) examples on the right into one batch on `device`, labelling the answers only."""
    width = max(len(prompt) + len(answer) for prompt, answer in examples)
    ids, labels, mask = [], [], []
    for prompt, answer in examples:
        pad = width - len(prompt) - len(answer)
        ids.append([*prompt, *answer, *[0] * pad])  # pad id 0: masked out, never scored
        labels.append([*[IGNORE_INDEX] * len(prompt), *answer, *[IGNORE_INDEX] * pad])
        mask.append([1] * (width - pad) + [0] * pad)
    return LabelledBatch(*(torch.tensor(rows, dtype=torch.long, device=device) for rows in (ids, labels, mask)))


def new_optimizer(parameters: Sequence[torch.nn.Parameter], config: TempLoraConfig) -> torch.optim.Optimizer:
    """AdamW over an agent's LoRA parameters (one per agent, kept across chunks); the fused kernel is ~3x faster
    than the per-tensor loop over a LoRA's hundreds of small tensors."""
    return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.0, fused=True)


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
    context: Sequence[int], chunk: Sequence[int], train_context_tokens: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and labels for one chunk: the last L_T context tokens are input only, the chunk is scored.

    Returns tensors of shape (1, T) with T = min(L_T, len(context)) + len(chunk).
    """
    prefix = list(context[len(context) - train_context_tokens :]) if train_context_tokens else []
    input_ids = torch.tensor([prefix + list(chunk)], dtype=torch.long, device=device)  # (1, T)
    labels = input_ids.clone()
    labels[0, : len(prefix)] = IGNORE_INDEX  # no loss on X_T, only on Chunk_k
    return input_ids, labels


@torch.no_grad()
def round_weights(optimizer: torch.optim.Optimizer, dtype: torch.dtype) -> None:
    """Round the trained parameters to the precision they are stored in (kept fp32 for the optimizer's steps)."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            parameter.copy_(parameter.to(dtype))


def learning_rate(step: int, config: TempLoraConfig) -> float:
    """Linear warm-up from 0 to α over the first `warmup_chunks` chunks' optimizer steps, then constant (paper §3)."""
    warmup_steps = config.warmup_chunks * config.epochs
    if warmup_steps <= 0:
        return config.learning_rate
    return config.learning_rate * min(1.0, (step + 1) / warmup_steps)


def _scored(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logits (N, V) at the N positions that predict a labelled token: the positions the CE loss scores."""
    return logits[:, :-1][labels[:, 1:] != IGNORE_INDEX]


def scored_logits(model: PeftModel, labels: torch.Tensor, **inputs: object) -> torch.Tensor:
    """`_scored(model(**inputs).logits, labels)` with the output head run on those N positions alone.

    Probes are mostly prompt: the head's (T, V) product over every position would cost more than the rest of
    a short sequence's forward pass, and all but the answer's rows would be thrown away.
    """
    causal_lm = model.get_base_model()
    hidden = causal_lm.model(**inputs).last_hidden_state  # (B, T, H)
    return causal_lm.lm_head(hidden[:, :-1][labels[:, 1:] != IGNORE_INDEX])  # (N, V)


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
    context_gradients: bool = True,
) -> torch.Tensor:
    """Mean NLL of the chunk's tokens, plus kl_weight × mean KL(p_base ‖ p_adapter) over them given a `reference`.

    `reference` is `base_logprobs` of the same example; the KL is averaged over the same N positions as the NLL.
    Without `context_gradients` the unscored context runs first without gradients and the chunk's forward reads
    its KV cache: the same loss, minus the gradient that flows through the context's keys and values.
    """
    past = None
    if not context_gradients:
        input_ids, labels, past = _split_context(model, input_ids, labels)
    out = model(input_ids=input_ids, labels=labels, past_key_values=past, use_cache=past is not None)
    if reference is None:
        return out.loss
    log_adapter = torch.log_softmax(_scored(out.logits, labels).float(), dim=-1)  # (N, V)
    # Σ_v p_base · (log p_base − log p_adapter), averaged over the N positions
    kl = F.kl_div(log_adapter, reference, log_target=True, reduction="batchmean")
    return out.loss + kl_weight * kl


def _split_context(model: PeftModel, input_ids: torch.Tensor, labels: torch.Tensor):
    """Run the unscored context but its last token without gradients; return the rest, its labels, the KV cache.

    The context's last token stays in the graded part: its logits predict the chunk's first token.
    """
    scored = (labels[0] != IGNORE_INDEX).nonzero()
    context = int(scored[0]) - 1 if len(scored) else 0
    if context <= 0:
        return input_ids, labels, None
    with torch.no_grad():  # only the KV cache is wanted: the head runs on one position
        past = model(input_ids=input_ids[:, :context], use_cache=True, logits_to_keep=1).past_key_values
    return input_ids[:, context:], labels[:, context:], past


def probe_kl(model: PeftModel, batch: DistillBatch, temperature: float) -> torch.Tensor:
    """Mean KL(teacher ‖ student) over the probes' answer tokens, scaled by T².

    Each distribution is taken over the teacher's top-k ids plus one bucket for the rest of the vocabulary, so
    the KL is exactly zero when the student matches the teacher and still pushes down mass outside the top k.
    """
    students = batch.students
    logits = scored_logits(model, students.labels, input_ids=students.input_ids, attention_mask=students.attention_mask)
    scored = logits.float() / temperature  # (N, V)
    student = _with_rest(torch.log_softmax(scored, dim=-1).gather(1, batch.top_ids))  # (N, k + 1)
    teacher = _with_rest(batch.top_logprobs)
    return (teacher.exp() * (teacher - student)).sum(-1).mean() * temperature**2


def _accumulate(
    model: PeftModel,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    reference: torch.Tensor | None,
    config: TempLoraConfig,
    extra: LabelledBatch | None,
    distill: DistillBatch | None,
) -> float:
    """Backpropagate one step's terms, each its own backward (gradients add up); returns their summed loss."""
    loss = chunk_loss(model, input_ids, labels, reference, config.kl_weight, config.context_gradients)
    loss.backward()
    total = loss.item()
    if extra is not None:
        extra_loss = model(**extra.inputs()).loss  # mean NLL of the labelled tokens
        extra_loss.backward()
        total += extra_loss.item()
    if distill is not None:
        taught = config.distill_weight * probe_kl(model, distill, config.distill_temperature)
        taught.backward()
        total += taught.item()
    return total


def _with_rest(top_logprobs: torch.Tensor) -> torch.Tensor:
    """(N, k) log-probabilities → (N, k + 1), the last column the log of the mass outside the k ids."""
    covered = torch.logsumexp(top_logprobs, dim=-1, keepdim=True).clamp(max=-1e-6)
    rest = torch.log(-torch.expm1(covered))  # log(1 - covered mass)
    return torch.cat([top_logprobs, rest], dim=-1)


def train_chunk(
    model: PeftModel,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    config: TempLoraConfig,
    first_step: int,
    extra: LabelledBatch | None = None,
    distill: DistillBatch | None = None,
    before_step: Callable[[], None] | None = None,
) -> float:
    """Run `config.epochs` optimizer steps on one chunk; returns the mean loss over those steps.

    Each step minimises `chunk_loss` (with the KL term when `kl_weight` > 0) plus, given `extra` examples, the mean
    NLL of their labelled tokens, plus, given `distill` probes, `distill_weight` × their `probe_kl`. The terms are
    added rather than pooled into one token mean, so the chunk weighs the same with or without them, however many
    examples or probes there are. Only parameters held by `optimizer` change; the caller makes sure those are the
    agent's LoRA weights. `before_step` runs before each step and may raise to stop the chunk there (the caller
    then puts back the weights and optimizer state it had before the chunk: `writing.ChunkWriter.train`).
    """
    kl_weight = config.kl_weight
    device = input_ids.device
    with precision.training(config.train_precision, device):
        reference = base_logprobs(model, input_ids, labels) if kl_weight > 0 else None  # the base does not change
    model.train()  # LoRA dropout on
    losses = []
    try:
        for epoch in range(config.epochs):
            if before_step is not None:
                before_step()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(first_step + epoch, config)
            with precision.training(config.train_precision, device):
                total = _accumulate(model, input_ids, labels, reference, config, extra, distill)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(total)
    finally:
        model.eval()
    return sum(losses) / len(losses)
