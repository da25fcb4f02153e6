"""Replies of several agents decoded together: a reply joins the running batch at a token boundary, gets one token
per step, and leaves when it ends or its reader stops reading.

`ReplyBatch.tokens` is the batched `generate_tokens`: each reply's tokens are picked by its own `TokenPicker`
(grammar, repetition penalty, sampling, end of sequence, length) from its own row of logits, so a reply gets the
tokens it would get alone. The batch has no thread of its own: a reader that needs a token while none is ready
runs the next step, for every reply in the batch, and the other readers find theirs ready. A joining reply whose
cache holds all of its prompt but the last token (an agent that keeps talking, or a prompt run again) is a row of
the batched step (`batched_decoding.batched_logits`) at once; any other runs its prompt alone in its first step (its
prefill) and is a row from then on. At most `max_rows` replies are in the batch; later ones wait in the order they
came.

Steps run on the decode model with each reply's own copy of its LoRA, taken from the adapter bank when the reply
joins, and take no lock that training holds: training runs beside the steps instead of between them, and
neither waits for the other to finish (writes do not starve replies, nor replies writes). The copy needs the
agent's adapter to stay as it is meanwhile, which the caller sees to: the engine holds the agent's lock for the
whole reply, and the bank trains, swaps or evicts an agent's adapter only under that lock.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from templora_memory.adapters import AdapterBank
from templora_memory.batched_decoding import LoraSlots, batchable, batched_logits
from templora_memory.constrained import Constraint
from templora_memory.decoding import DecodeModel
from templora_memory.generation import Sampling, TokenPicker, generate_tokens, torch_step
from templora_memory.kv_cache import PromptCache

MAX_ROWS = 8
"""Default cap on the replies decoded in one batch."""


@dataclass(eq=False)
class _Row:
    """One reply in (or waiting for) the batch."""

    agent_id: str | None
    prompt: list[int]
    picker: TokenPicker
    cache: PromptCache
    feed: list[int] = field(default_factory=list)
    """Tokens to run before its next token is picked: its prompt's uncached part, then its last token."""
    slot: int | None = None
    """Its LoRA's slot in `LoraSlots` (None: the base model, or not admitted yet)."""
    ready: deque[int] = field(default_factory=deque)
    """Tokens picked that its reader has not taken yet."""
    ended: bool = False
    error: BaseException | None = None
    closed: bool = False
    """Its reader stopped reading: it leaves at the next step."""


class ReplyBatch:
    """Decodes the replies that run at the same time in one batch; replies join and leave at token boundaries.

    Example:
        >>> batch = ReplyBatch(engine.decoder, engine.bank, threading.RLock())  # doctest: +SKIP
        >>> list(batch.tokens("npc-7", prompt, Sampling(16), engine.eos_ids))  # doctest: +SKIP
    """

    def __init__(
        self, decoder: DecodeModel, bank: AdapterBank, lock: threading.RLock, max_rows: int = MAX_ROWS
    ) -> None:
        """`lock`: the model lock, held by replies the batch cannot take (run alone as `generate_tokens` runs them);
        `max_rows`: most replies at once."""
        if max_rows < 1:
            raise ValueError(f"max_rows should be a positive integer but the value passed is {max_rows}")
        self.decoder, self.bank, self.lock, self.max_rows = decoder, bank, lock, max_rows
        self.steps = 0
        """Batched steps run (prefills not counted)."""
        self.rows_stepped = 0
        """Rows over all batched steps: `rows_stepped / steps` is the mean batch size."""
        self._slots = LoraSlots(decoder)
        self._stepping = threading.Lock()  # one step at a time
        self._state = threading.Lock()  # guards the rows, their queues and flags
        self._rows: list[_Row] = []  # admitted: those with a slot first, in slot order, then the base model's
        self._waiting: deque[_Row] = deque()

    def tokens(
        self,
        agent_id: str | None,
        prompt: Sequence[int],
        sampling: Sampling,
        eos_ids: set[int],
        cache: PromptCache | None = None,
        constraint: Constraint | None = None,
    ) -> Iterator[int]:
        """The tokens `generate_tokens` yields for this reply with the agent's LoRA (None: the base model), decoded
        in batch with the other replies running now; closing the iterator takes the reply out of the batch. The
        agent's adapter must not change until the first token (see the module's note)."""
        if not self._batched(agent_id):
            with self.lock, self.decoder.active(self.bank, agent_id) as model:
                yield from generate_tokens(model, prompt, sampling, eos_ids, cache, constraint)
            return
        if sampling.max_new_tokens < 1:
            return
        picker = TokenPicker(prompt, sampling, eos_ids, constraint)
        row = _Row(agent_id, list(prompt), picker, cache if cache is not None else PromptCache())
        with self._state:
            self._waiting.append(row)
        try:
            while (token := self._next(row)) is not None:
                yield token
        finally:
            with self._state:
                row.closed = True

    def _batched(self, agent_id: str | None) -> bool:
        """Whether this reply can be a row of the batch (the torch decode model, attention and LoRA it can batch)."""
        if not isinstance(self.decoder, DecodeModel) or not batchable(self.decoder.model):
            return False
        return LoraSlots.supports(self.decoder, self.bank, agent_id)

    def _next(self, row: _Row) -> int | None:
        """The reply's next token (None once it has ended), running steps until one is ready."""
        while True:
            with self._state:
                if row.ready:
                    return row.ready.popleft()
                if row.ended:
                    if row.error is not None:
                        raise row.error
                    return None
            with self._stepping:
                with self._state:
                    served = bool(row.ready) or row.ended  # another reader's step may have served it meanwhile
                if not served:
                    self._step()

    def _step(self) -> None:
        """One step: rows that left go, waiting ones join (those with more than one prompt token to run run them alone),
        the others get their next token from one batched forward (a lone one runs alone: the single reply's own path).
        """
        prefills = [row for row in self._admit() if not _one_token(row)]
        with self._state:
            rows = [r for r in self._rows if r not in prefills]
        for row in [*prefills, *rows] if len(rows) < 2 else prefills:
            with self._slots.rows(*((row.slot, row.slot + 1) if row.slot is not None else (0, 0))):
                self._run([row], lambda row=row: torch_step(self.decoder.model, row.cache)(row.feed)[None])
        if len(rows) > 1:
            with self._slots.rows(0, sum(row.slot is not None for row in rows)):
                tokens, caches = [row.feed[0] for row in rows], [row.cache for row in rows]
                self._run(rows, lambda: batched_logits(self.decoder.model, tokens, caches))
            self.steps += 1
            self.rows_stepped += len(rows)

    def _run(self, rows: list[_Row], forward: Callable[[], torch.Tensor]) -> None:
        """Run `forward` (the rows' next-token logits, (B, V)) and pick each row's token; a failed forward ends its
        rows with its error, a failed pick (a grammar's) only its own row."""
        try:
            logits = forward()
        except BaseException as exc:
            self._fail(rows, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for row, row_logits in zip(rows, logits, strict=True):
            try:
                self._picked(row, row_logits)
            except Exception as exc:  # noqa: BLE001 - handed to the row's reader
                self._fail([row], exc)

    def _fail(self, rows: list[_Row], error: BaseException) -> None:
        """End the rows with `error`, which their readers raise."""
        with self._state:
            for row in rows:
                row.ended, row.error = True, error

    def _picked(self, row: _Row, logits: torch.Tensor) -> None:
        """Pick the row's next token from its logits (V,) and queue it for its reader."""
        token = row.picker.choose(logits)
        with self._state:
            if token is None:
                row.ended = True
                return
            row.ready.append(token)
            if row.picker.accept(token):
                row.feed = [token]
            else:
                row.ended = True

    def _admit(self) -> list[_Row]:
        """Drop the rows that ended or were closed (freeing their slots), admit waiting ones up to `max_rows` (their
        cache aligned to their prompt, their LoRA copied into the next slots: first those with one token to run, so
        that the rows of a batched step hold slots 0..k-1); returns the admitted ones."""
        with self._state:
            for row in [r for r in self._rows if r.ended or r.closed]:
                self._remove(row)
            while self._waiting and len(self._rows) < self.max_rows:
                row = self._waiting.popleft()
                if not row.closed:
                    self._rows.append(row)
                    row.slot = None if row.agent_id is None else sum(r.slot is not None for r in self._rows)
            joining = [r for r in self._rows if not r.feed]
        for row in joining:
            row.feed = row.cache.align(row.prompt)
        slotted = sorted((r for r in joining if r.slot is not None), key=lambda r: not _one_token(r))
        with self._state:
            for slot, row in zip(sorted(r.slot for r in slotted), slotted, strict=True):
                row.slot = slot
            self._rows.sort(key=lambda r: (r.slot is None, r.slot or 0))
        for row in slotted:
            self._slots.load(row.slot, self.bank, row.agent_id)
        return joining

    def _remove(self, row: _Row) -> None:
        """Take the row out of the batch; the last row with a slot moves into its slot."""
        self._rows.remove(row)
        if row.slot is None:
            return
        last = max((r for r in self._rows if r.slot is not None), key=lambda r: r.slot, default=None)
        if last is not None and last.slot > row.slot:
            self._slots.move(last.slot, row.slot)
            last.slot = row.slot


def _one_token(row: _Row) -> bool:
    """Whether the row has one token to run over states its cache holds: a row of a batched step, joining or not."""
    return len(row.feed) == 1 and row.cache.past is not None and row.cache.past.get_seq_length() > 0
