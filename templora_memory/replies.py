"""What one generation gives back: a stream of text that, once consumed, holds the reply parsed once.

`ReplyStream` is returned by `MemoryEngine.respond` and `MemoryEngine.stream_completion`. Iterating it
yields the reply's text as it is generated (with tools on offer, anything that may be a tool call is
held back); once it is exhausted, `reply` holds the `Reply`: its text split into content and tool calls,
the finish reason and the token counts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from templora_memory.errors import TemploraError
from templora_memory.generation import StopDecoder
from templora_memory.message import Message
from templora_memory.tools import ParsedReply, ToolCallStream


class Stopped(Exception):
    """A reply was stopped before its end (its reader left or gave up); it is not remembered."""


def pump(stream: Generator | ReplyStream, stop: threading.Event, put: Callable[[Any], None]) -> None:
    """Hand each piece of `stream` to `put` (another thread's reader) until its end; once `stop` is set, raise
    `Stopped`. Run on the thread that started the stream: the engine's agent lock belongs to it, so the stream is
    closed here too when it does not finish (a reply closed early is not remembered)."""
    finished = False
    try:
        for piece in stream:
            if stop.is_set():
                raise Stopped("the reply was stopped before its end; it is not remembered")
            put(piece)
        finished = True
    finally:
        if not finished:
            stream.close()


@dataclass(frozen=True)
class Reply:
    """One finished generation: its text, the tool calls parsed out of it, why it ended and its size."""

    text: str
    """Everything generated (stop strings cut off), tool-call markup included."""
    content: str
    """The text without tool-call markup (equal to `text` when no tools were offered)."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """Parsed calls in chat-template form: {"id", "type": "function", "function": {"name", "arguments"}}."""
    invalid_calls: list[dict[str, Any]] = field(default_factory=list)
    """Blocks that looked like calls but did not parse: {"name", "args" (raw text), "id", "error"}."""
    finish_reason: str = "stop"
    """"stop" (end of sequence, stop string or complete grammar) or "length" (`max_new_tokens` reached)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def message(self) -> Message:
        """The assistant turn as the agent remembers it (content and tool calls)."""
        message: Message = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return message


class ReplyStream(Iterator[str]):
    """Yields a reply's text pieces; after the last one, `reply` holds the parsed `Reply`.

    Example:
        >>> stream = engine.respond("npc-7", [{"role": "user", "content": "Hi"}], Sampling(32))  # doctest: +SKIP
        >>> text = "".join(stream); stream.reply.finish_reason  # doctest: +SKIP
        'stop'
    """

    def __init__(self, generator: Generator[str, None, Reply]) -> None:
        self._generator = generator
        self._reply: Reply | None = None

    def __next__(self) -> str:
        try:
            return next(self._generator)
        except StopIteration as stop:
            self._reply = stop.value
            raise

    @property
    def reply(self) -> Reply:
        """The parsed reply; only once the stream has been consumed."""
        if self._reply is None:
            raise TemploraError("the reply is not finished: consume the stream first (or call result())")
        return self._reply

    def result(self) -> Reply:
        """Consume what is left of the stream and return the parsed reply."""
        for _ in self:
            pass
        return self.reply

    def close(self) -> None:
        """Stop generating; a reply closed early is not remembered."""
        self._generator.close()


def decode_reply(
    tokens: Iterable[int],
    tokenizer: PreTrainedTokenizerBase,
    *,
    stop: Sequence[str],
    max_new_tokens: int,
    prompt_tokens: int,
    tool_template: str | None | bool = False,
) -> Generator[str, None, Reply]:
    """Decode generated token ids into text pieces, cut at stop strings; return the parsed `Reply`.

    `tool_template` is the chat template whose tool-call format the reply is parsed in when tools are
    offered (None: the Hermes default), or False when no tools are offered (the text is all content).
    """
    decoder = StopDecoder(tokenizer, stop)
    splitter = ToolCallStream(tool_template) if tool_template is not False else None
    count, finish = 0, "stop"
    for token in tokens:
        count += 1
        yield from _shown(decoder.push(token), splitter)
        if decoder.finished:
            break
    else:
        finish = "length" if count >= max_new_tokens else "stop"
    yield from _shown(decoder.flush(), splitter)
    parsed = ParsedReply(decoder.emitted, [], [])
    if splitter is not None:
        rest, parsed = splitter.finish()
        if rest:
            yield rest
    return Reply(
        text=decoder.emitted,
        content=parsed.content,
        tool_calls=parsed.tool_calls,
        invalid_calls=parsed.invalid_calls,
        finish_reason=finish,
        prompt_tokens=prompt_tokens,
        completion_tokens=count,
    )


def _shown(piece: str, splitter: ToolCallStream | None) -> Iterator[str]:
    """The part of a decoded piece that can be shown now."""
    shown = splitter.push(piece) if splitter is not None and piece else piece
    if shown:
        yield shown
