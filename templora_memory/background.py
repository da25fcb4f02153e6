"""Parallelized deployment (paper §3.2): chunks train in a background thread on a copy of the model.

Replies keep coming from the agent's previous adapter while its next chunk trains; the engine
swaps the trained weights in at the agent's next call. The copy of the base model is what lets
training and generation run at the same time: each thread has its own modules, and no adapter
switch of one can disturb the other.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from templora_memory.adapters import AdapterBank
from templora_memory.config import TempLoraConfig
from templora_memory.synthetic import QAPair, QuestionWriter
from templora_memory.trainer import write_chunk
from templora_memory.window import Message

_SLOT = "background-job"  # the replica's one adapter, loaded with each job's weights in turn


@dataclass
class TrainingJob:
    """One chunk to write: the agent's weights and optimizer state as they were, and the example to train on.

    `chunk` and `system` are what synthetic questions are written from and rendered with.
    """

    agent_id: str
    n_tokens: int
    input_ids: torch.Tensor
    labels: torch.Tensor
    chunk: list[int]
    system: list[Message]
    weights: list[torch.Tensor]
    optimizer_state: dict[str, Any] | None
    first_step: int
    seed: int
    done: threading.Event = field(default_factory=threading.Event)
    trained: list[torch.Tensor] | None = None
    trained_optimizer_state: dict[str, Any] | None = None
    pairs: list[QAPair] = field(default_factory=list)
    loss: float = 0.0
    seconds: float = 0.0
    error: BaseException | None = None


class BackgroundTrainer:
    """A worker thread that trains jobs one at a time on a private copy of the base model."""

    def __init__(
        self,
        base_copy: PreTrainedModel,
        config: TempLoraConfig,
        lr_at: Callable[[int], float],
        questions: QuestionWriter,
    ) -> None:
        self.bank = AdapterBank(base_copy, config)
        self.bank.add(_SLOT, seed=0)
        self.config = config
        self._lr_at = lr_at
        self._questions = questions
        self._jobs: queue.Queue[TrainingJob] = queue.Queue()
        threading.Thread(target=self._work, name="templora-background-trainer", daemon=True).start()

    def submit(self, job: TrainingJob) -> TrainingJob:
        """Queue a job; its `done` event is set when the trained weights (or an error) are ready."""
        self._jobs.put(job)
        return job

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                self._train(job)
            except BaseException as exc:  # handed to the engine, which raises it at the agent's next call
                job.error = exc
            finally:
                job.done.set()

    def _train(self, job: TrainingJob) -> None:
        begin = time.perf_counter()
        parameters = self.bank.parameters(_SLOT)
        with torch.no_grad():
            for parameter, weight in zip(parameters, job.weights, strict=True):
                parameter.copy_(weight)
        optimizer = torch.optim.AdamW(parameters, lr=self.config.learning_rate, weight_decay=0.0)
        if job.optimizer_state is not None:
            optimizer.load_state_dict(job.optimizer_state)
        with self.bank.active(_SLOT) as model:
            job.loss, job.pairs = write_chunk(
                model,
                (job.input_ids, job.labels),
                job.chunk,
                job.system,
                optimizer,
                job.first_step,
                job.seed,
                self.config,
                self._lr_at,
                self._questions,
            )
        job.trained = [p.detach().clone() for p in parameters]
        job.trained_optimizer_state = optimizer.state_dict()
        job.seconds = time.perf_counter() - begin
