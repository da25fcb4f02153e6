"""Writing turns into an agent's adapter: one path from a due chunk to a Temp-Lora update, two deployments.

Both deployments build a chunk's job the same way (`ChunkWriter._job`: the chunk, the L_T tokens before
it, a seed), run the same update (`run_update`: synthetic questions if asked for, then seeded
`trainer.train_chunk`) and book it the same way (`ChunkWriter._book`: counters, the next L_T context, a
commit). They differ only in when a full chunk trains (paper §3.2):

- `ChunkWriter` (cascaded, the default) trains each full chunk before the call returns;
- `ParallelWriter` trains it in a background thread on a copy of the base model while replies keep using
  the previous adapter, and swaps the trained weights in at the agent's next write.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from templora_memory import trainer
from templora_memory.adapters import STORED_DTYPES, AdapterBank
from templora_memory.agent import AgentState, ChunkJob, agent_seed
from templora_memory.config import TempLoraConfig
from templora_memory.devices import model_device
from templora_memory.distill import ProbeTeacher
from templora_memory.errors import TemploraError, WriteStopped
from templora_memory.synthetic import QuestionWriter

_STOP = threading.local()
"""What bounds this thread's synchronous writing (see `stop_on`): `event` and `budget` (tokens left)."""


@contextlib.contextmanager
def stop_on(event: threading.Event, budget: int | None = None) -> Iterator[None]:
    """Within the block, this thread's chunk writing stops with `WriteStopped` before the next optimizer step once
    `event` is set (a request that timed out or whose client left, a shutdown: each waits for one step at most;
    a chunk stopped midway is put back as it was before it, its tokens pending), and writes at most `budget`
    tokens (None: no bound): chunks past it are not trained now, their tokens stay pending for a later write (the
    server's background writing)."""
    previous = getattr(_STOP, "event", None), getattr(_STOP, "budget", None)
    _STOP.event, _STOP.budget = event, budget
    try:
        yield
    finally:
        _STOP.event, _STOP.budget = previous


def _within_budget(n_tokens: int) -> bool:
    """Whether this thread may write `n_tokens` more now."""
    budget = getattr(_STOP, "budget", None)
    return budget is None or n_tokens <= budget


def _spend(n_tokens: int) -> None:
    if getattr(_STOP, "budget", None) is not None:
        _STOP.budget -= n_tokens


def claim(state: AgentState, n_tokens: int) -> bool:
    """Whether this thread may write `n_tokens` more now (then counted against its budget: see `stop_on`);
    `WriteStopped` once its caller gave up."""
    _check_stop(state)
    if not _within_budget(n_tokens):
        return False
    _spend(n_tokens)
    return True


def _check_stop(state: AgentState) -> None:
    event = getattr(_STOP, "event", None)
    if event is not None and event.is_set():
        raise WriteStopped(
            f"writing into agent {state.agent_id!r} stopped before a training step; its "
            f"{len(state.conversation.pending)} pending tokens are kept and written later"
        )


@contextlib.contextmanager
def _undone_if_stopped(parameters: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Put the weights and optimizer state back as they were before the block if it raises `WriteStopped`, so a
    chunk stopped between its steps leaves no half-trained trace (its tokens stay pending and train whole later).
    Nothing is copied where nothing can stop this thread's writing (no `stop_on` event: the library's own calls)."""
    if getattr(_STOP, "event", None) is None:
        yield
        return
    with torch.no_grad():
        weights = [parameter.detach().clone() for parameter in parameters]
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    try:
        yield
    except WriteStopped:
        with torch.no_grad():
            for parameter, weight in zip(parameters, weights, strict=True):
                parameter.copy_(weight)
        optimizer.load_state_dict(optimizer_state)
        raise


Commit = Callable[[AgentState], None]
"""Persists an agent (the residency's commit); called after every trained chunk."""
_SLOT = "background-job"  # the replica's one adapter, loaded with each job's weights in turn


@dataclass(frozen=True)
class Teachers:
    """What an update asks the base model for besides the chunk: synthetic pairs (LIFT) and distilled probes."""

    questions: QuestionWriter
    probes: ProbeTeacher


def run_update(
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    job: ChunkJob,
    config: TempLoraConfig,
    teachers: Teachers,
    before_step: Callable[[], None] | None = None,
) -> None:
    """The Temp-Lora update of one chunk: its synthetic pairs and probes (by the base model), then seeded steps;
    `before_step` runs before each step and may raise to stop there (see `trainer.train_chunk`)."""
    started = time.perf_counter()
    device = job.input_ids.device
    job.pairs = teachers.questions.write(model, job.chunk, job.seed)
    extra = teachers.questions.batch(job.system, job.pairs, device)
    context = job.input_ids[0].tolist()
    job.taught = teachers.probes.teach(model, context, job.messages, job.system, job.seed)
    anchors = teachers.probes.anchor(model, job.system, job.seed)
    distill = teachers.probes.batch(job.taught + job.replay + anchors, device)
    with trainer.seeded(job.seed):
        job.loss = trainer.train_chunk(
            model, job.input_ids, job.labels, optimizer, config, job.first_step, extra, distill, before_step
        )
    if config.adapter_dtype != "fp32":  # RAM holds what a reload gives (fp32: the trained weights as they are)
        trainer.round_weights(optimizer, STORED_DTYPES[config.adapter_dtype])
    job.seconds = time.perf_counter() - started
    _give_back_memory()


def _give_back_memory() -> None:
    """Return the memory an update freed to the OS: glibc keeps what a thread frees in that thread's own heap, so
    each server worker that once trained a chunk held a training step's peak (8 workers: out of memory at 16 GB;
    three agents answered at once: 3.0 GB, 1.5 GB with this). A no-op without glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class ChunkWriter:
    """Cascaded deployment: every full chunk is trained into the agent's adapter before the call returns."""

    def __init__(
        self,
        bank: AdapterBank,
        config: TempLoraConfig,
        model_lock: threading.RLock,
        teachers: Teachers,
        commit: Commit,
    ) -> None:
        self.bank = bank
        self.config = config
        self.model_lock = model_lock
        self.teachers = teachers
        self.commit = commit
        self.catch_up: Callable[[AgentState], None] = lambda state: None
        """Trains what a rebuild under way has left, on the caller's thread (`Rebuilder.finish`), before more is
        written."""

    def write(self, state: AgentState, in_window: int) -> None:
        """Write every chunk that is due, and right away the pending tokens a window of `in_window` tokens lost
        (after a rebuild under way: they stay pending meanwhile, as past a write budget)."""
        self.write_due(state)
        if len(state.conversation.pending) <= in_window or state.rebuilding:
            return
        self.settle(state, wait=True)  # the window moved on: its tokens cannot wait for a background job
        overflow = len(state.conversation.pending) - in_window
        if overflow > 0 and _within_budget(overflow):  # else they stay pending, written later (see `stop_on`)
            self.write_now(state, overflow)
            self.write_due(state)

    def write_all(self, state: AgentState, progress: bool = False) -> None:
        """Write every pending token now, in chunks of Δ (the last one may be shorter), with a progress bar."""
        self.settle(state, wait=True)
        self.catch_up(state)
        if state.rebuilding:  # past the caller's write budget: written after the rebuild, which comes first
            return
        pending = state.conversation.pending
        chunks = -(-len(pending) // self.config.chunk_tokens)
        with tqdm(total=chunks, desc=f"writing into {state.agent_id}", unit="chunk", disable=not progress) as bar:
            while state.conversation.pending:
                self.write_now(state, min(self.config.chunk_tokens, len(state.conversation.pending)))
                bar.update(1)
                bar.set_postfix(loss=f"{state.last_loss:.3f}")

    def finish(self, state: AgentState) -> None:
        """Train every due chunk to the end, background ones included (and a rebuild under way first)."""
        self.settle(state, wait=True)
        self.catch_up(state)
        self.write_due(state)
        while state.job is not None:
            self.settle(state, wait=True)
            self.write_due(state)

    def write_due(self, state: AgentState) -> None:
        """Train each full chunk of Δ pending tokens (as many as this thread's budget allows: see `stop_on`)."""
        chunk = self.config.chunk_tokens
        while len(state.conversation.pending) >= chunk and _within_budget(chunk) and not state.rebuilding:
            self.write_now(state, chunk)

    def settle(self, state: AgentState, wait: bool) -> None:
        """Take in a chunk trained in the background; nothing trains there in this deployment."""

    def write_now(self, state: AgentState, n_tokens: int) -> None:
        """Train the next `n_tokens` pending tokens into the agent's adapter on the serving model."""
        if state.job is not None:
            raise TemploraError("a chunk is training in the background; settle it before writing synchronously")
        _check_stop(state)
        _spend(n_tokens)
        job = self._job(state, n_tokens)
        self.train(state, job)
        self._book(state, job)

    def train(self, state: AgentState, job: ChunkJob) -> None:
        """Run `job`'s update on the agent's adapter in the serving model (its optimizer made on the first one);
        stopped between two steps (see `stop_on`), the adapter is as it was before the chunk."""
        with self.model_lock, self.bank.active(state.agent_id) as model:
            state.optimizer = state.optimizer or self._new_optimizer(state)
            with _undone_if_stopped(self.bank.parameters(state.agent_id), state.optimizer):
                run_update(model, state.optimizer, job, self.config, self.teachers, lambda: _check_stop(state))

    def _new_optimizer(self, state: AgentState) -> torch.optim.Optimizer:
        return trainer.new_optimizer(self.bank.parameters(state.agent_id), self.config)

    def _job(self, state: AgentState, n_tokens: int) -> ChunkJob:
        """The next chunk of `n_tokens` pending tokens, with the L_T written tokens before it as unscored input."""
        talk = state.conversation
        messages = talk.pending_messages(n_tokens) if self.config.probe_questions else []
        return self.job(state, talk.written, talk.pending[:n_tokens], messages)

    def job(self, state: AgentState, context: list[int], chunk: list[int], messages: list) -> ChunkJob:
        """The update of `chunk` after the L_T `context` tokens (unscored input); `messages`, the turns the chunk
        holds, give its probes. Seeded by the agent and its count of chunks, so the same stream trains alike."""
        device = model_device(self.bank.model)
        input_ids, labels = trainer.build_example(context, chunk, self.config.train_context_tokens, device)
        seed = agent_seed(self.config.seed, state.agent_id) + state.chunks_trained + 1
        return ChunkJob(
            n_tokens=len(chunk),
            input_ids=input_ids,
            labels=labels,
            chunk=chunk,
            system=list(state.conversation.system),
            first_step=state.steps,
            seed=seed,
            messages=messages if self.config.probe_questions else [],
            replay=self.teachers.probes.replayed(state.reservoir, seed),
        )

    def _book(self, state: AgentState, job: ChunkJob) -> None:
        """Count a trained chunk, move its tokens to the written stream, and commit before the next one starts."""
        self.count(state, job)
        state.tokens_written += len(state.conversation.mark_written(job.n_tokens, self.config.train_context_tokens))
        self.commit(state)

    def count(self, state: AgentState, job: ChunkJob) -> None:
        """Count a trained chunk in the agent's counters, and keep its taught probes for replay."""
        state.last_loss = job.loss
        state.train_seconds += job.seconds
        state.last_questions = job.pairs
        state.questions_written += len(job.pairs)
        state.probes_seen = self.teachers.probes.keep(state.reservoir, state.probes_seen, job.taught, job.seed)
        state.steps += self.config.epochs
        state.chunks_trained += 1


class ParallelWriter(ChunkWriter):
    """Parallel deployment: full chunks train in a background thread on a private copy of the base model.

    The copy is what lets training and generation run at the same time: each thread has its own modules,
    and no adapter switch of one can disturb the other. One job per agent is in flight at a time.
    """

    def __init__(
        self,
        bank: AdapterBank,
        config: TempLoraConfig,
        model_lock: threading.RLock,
        teachers: Teachers,
        commit: Commit,
        base_copy: PreTrainedModel,
    ) -> None:
        super().__init__(bank, config, model_lock, teachers, commit)
        self.replica = AdapterBank(base_copy, config)
        self.replica.add(_SLOT, seed=0)
        self._jobs: queue.Queue[ChunkJob] = queue.Queue()
        threading.Thread(target=self._work, name="templora-background-trainer", daemon=True).start()

    def write_due(self, state: AgentState) -> None:
        """Take in a finished job, then hand the next full chunk to the background thread."""
        self.settle(state, wait=False)
        if state.job is None and len(state.conversation.pending) >= self.config.chunk_tokens and not state.rebuilding:
            state.job = self._submit(state)

    def settle(self, state: AgentState, wait: bool) -> None:
        """Swap in the weights of the agent's finished background job (waiting for it if asked) and book it."""
        job = state.job
        if job is None or not (wait or job.done.is_set()):
            return
        job.done.wait()
        state.job = None
        if job.error is not None:
            raise TemploraError(f"background training of agent {state.agent_id!r} failed: {job.error}") from job.error
        with self.model_lock, torch.no_grad():
            for parameter, trained in zip(self.bank.parameters(state.agent_id), job.trained, strict=True):
                parameter.copy_(trained)
        state.optimizer = state.optimizer or self._new_optimizer(state)
        state.optimizer.load_state_dict(job.trained_optimizer_state)
        self._book(state, job)

    def _submit(self, state: AgentState) -> ChunkJob:
        """The next full chunk's job, carrying the agent's weights and optimizer state as they are now."""
        job = self._job(state, self.config.chunk_tokens)
        with self.model_lock:
            job.weights = [p.detach().clone() for p in self.bank.parameters(state.agent_id)]
        job.optimizer_state = copy.deepcopy(state.optimizer.state_dict()) if state.optimizer is not None else None
        self._jobs.put(job)
        return job

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                self._train(job)
            except BaseException as exc:  # handed to the agent's next write, which raises it
                job.error = exc
            finally:
                job.done.set()

    def _train(self, job: ChunkJob) -> None:
        """Load the job's weights into the replica's slot, run the update there, and keep the trained weights."""
        parameters = self.replica.parameters(_SLOT)
        with torch.no_grad():
            for parameter, weight in zip(parameters, job.weights, strict=True):
                parameter.copy_(weight)
        optimizer = trainer.new_optimizer(parameters, self.config)
        if job.optimizer_state is not None:
            optimizer.load_state_dict(job.optimizer_state)
        with self.replica.active(_SLOT) as model:
            run_update(model, optimizer, job, self.config, self.teachers)
        job.trained = [p.detach().clone() for p in parameters]
        job.trained_optimizer_state = optimizer.state_dict()
