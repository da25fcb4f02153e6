"""One agent's conversation: which turns are new, how they render, and which of them the prompt window holds.

Pure bookkeeping over the tokenizer's chat template: no model, no training, no I/O. The conversation
is a token stream (paper: the text Y); tokens not yet written into the adapter are `pending` (m in
Algorithm 1), the last L_T written ones stay as the next chunk's training input, and the prompt is
the system message plus the newest whole turns that fit L_X.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase

from templora_memory.errors import InvalidInputError
from templora_memory.ledger import Ledger
from templora_memory.message import Message, Turn, fingerprint
from templora_memory.tools import ToolSchema, as_text_turns, supports_tools

ROLES = ("system", "user", "assistant", "tool")
FINGERPRINTS_KEPT = 2048
"""Identities of the newest turns a conversation keeps to recognise a resent history (`Conversation.unseen`)."""
ARCHIVE_KEPT = 2048
"""The most turns that left the window a conversation keeps as text for hybrid recall (the newest ones)."""


class ChatRenderer:
    """Turns messages into token ids with the tokenizer's own chat template.

    A template that renders no tools gets tools, tool calls and tool results written into the message
    text in the Hermes format (`templora_memory.tools.as_text_turns`). A strict template (Mistral's, Gemma's)
    that refuses a conversation whose roles do not alternate, or any system message, gets the conversation
    in the shape it accepts (`alternating`).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.native_tools = supports_tools(tokenizer.chat_template)
        self.system_role = self._accepts([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])

    def turn(self, message: Message, previous: Message | None) -> Turn:
        """Render `message` as it appears after `previous` in a conversation (the template's per-turn tokens)."""
        anchor = [previous] if previous is not None else [{"role": "system", "content": ""}]
        text = self._after(anchor, [message])
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return Turn(message=message, tokens=tuple(ids), fingerprint=fingerprint(message))

    def turns(self, messages: Sequence[Message], previous: Message | None = None) -> list[Turn]:
        """Messages rendered as consecutive turns following `previous`."""
        rendered: list[Turn] = []
        for message in messages:
            rendered.append(self.turn(message, rendered[-1].message if rendered else previous))
        return rendered

    def follow_up(self, previous: Message | None, messages: Sequence[Message]) -> list[int]:
        """Token ids of `messages` as the turns after `previous`, then the assistant header (ready to answer)."""
        anchor = [previous] if previous is not None else [{"role": "system", "content": ""}]
        text = self._after(anchor, messages, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt(
        self, system: Sequence[Message], turns: Sequence[Turn], tools: list[ToolSchema] | None = None
    ) -> list[int]:
        """Token ids of system + turns, ending with the template's assistant header (ready to generate)."""
        messages = [*system, *(turn.message for turn in turns)]
        text = self._text(messages, add_generation_prompt=True, tools=tools)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def reply(
        self, system: Sequence[Message], messages: Sequence[Message], reply: Message
    ) -> tuple[list[int], list[int]]:
        """Token ids of the prompt before `reply` (generation header included) and of `reply` as the template ends it.

        A template that does not render the conversation as prompt + reply gets the reply's text and eos.
        """
        before = self._text([*system, *messages], add_generation_prompt=True)
        after = self._text([*system, *messages, reply])
        text = after[len(before) :] if after.startswith(before) else f"{reply['content']}{self.tokenizer.eos_token}"
        prompt_ids = self.tokenizer(before, add_special_tokens=False)["input_ids"]
        return prompt_ids, self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _after(self, anchor: list[Message], messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        """The text `messages` add after `anchor`; rendered alone where the template cannot render the anchor first."""
        try:
            before = self._text(anchor)
            after = self._text([*anchor, *messages], add_generation_prompt=add_generation_prompt)
        except TemplateError:
            before = after = ""
        if before and after.startswith(before):
            return after[len(before) :]
        return self._text(messages, add_generation_prompt=add_generation_prompt)

    def _text(
        self, messages: Sequence[Message], add_generation_prompt: bool = False, tools: list[ToolSchema] | None = None
    ) -> str:
        if not self.native_tools:
            messages, tools = as_text_turns(list(messages), tools), None
        messages = list(messages) if self.system_role else alternating(messages, fold_system=True)
        if not messages:  # an empty system message folded away: nothing to render
            return ""
        try:
            return self._render(messages, add_generation_prompt, tools)
        except TemplateError:
            return self._render(alternating(messages, fold_system=False), add_generation_prompt, tools)

    def _render(self, messages: list[Message], add_generation_prompt: bool, tools: list[ToolSchema] | None) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _accepts(self, messages: list[Message]) -> bool:
        """Whether the template renders `messages` (strict templates raise on roles they refuse)."""
        try:
            self._render(messages, False, None)
        except TemplateError:
            return False
        return True


def alternating(messages: Sequence[Message], fold_system: bool) -> list[Message]:
    """`messages` as strict templates accept them: consecutive user (or assistant) texts merged into one turn, a
    leading empty user turn before an assistant one, and with `fold_system` the system text put before the first
    user turn's (Gemma's templates refuse a system role; Gemma 3's own template folds it the same way)."""
    system = [m for m in messages if m["role"] == "system"]
    out: list[Message] = []
    for message in (m for m in messages if m["role"] != "system"):
        previous = out[-1] if out else None
        plain = message["role"] in ("user", "assistant") and not message.get("tool_calls")
        if plain and previous is not None and previous["role"] == message["role"] and not previous.get("tool_calls"):
            out[-1] = {**previous, "content": f"{previous['content']}\n\n{message['content']}"}
        else:
            out.append(dict(message))
    if out and out[0]["role"] != "user":
        out.insert(0, {"role": "user", "content": ""})
    if not fold_system:
        return [*system, *out]
    text = "\n\n".join(m["content"] for m in system if m["content"])
    if text and out:
        out[0] = {**out[0], "content": f"{text}\n\n{out[0]['content']}" if out[0]["content"] else text}
    elif text:
        out.append({"role": "user", "content": text})
    return out


class PromptWindow:
    """L_X: which of the newest whole turns fit the prompt next to the system message (and tools)."""

    def __init__(self, renderer: ChatRenderer, window_tokens: int) -> None:
        self.renderer = renderer
        self.window_tokens = window_tokens

    def render(self, messages: Sequence[Message], previous: Message | None) -> list[Turn]:
        """Messages as turns following `previous`; a turn longer than the window is refused (nothing is rendered)."""
        turns = self.renderer.turns(messages, previous)
        for turn in turns:
            if len(turn.tokens) > self.window_tokens:
                raise InvalidInputError(
                    f"a {turn.message['role']} message of {len(turn.tokens)} tokens is longer than window_tokens="
                    f"{self.window_tokens}; shorten it, raise window_tokens, or write long text with absorb()"
                )
        return turns

    def held(self, talk: Conversation) -> list[Turn]:
        """The turns of `talk` its next prompt would hold (next to its system message)."""
        return talk.turns[self.start(talk.system, talk.turns) :]

    def start(self, system: Sequence[Message], turns: Sequence[Turn], tools: list[ToolSchema] | None = None) -> int:
        """Index of the oldest turn in the window: the prompt, headers and tools included, fits in L_X."""
        # a first guess from the fixed overhead; the loop below is exact
        overhead = len(self.renderer.prompt(system, [], tools)) if system else 0
        start = window_start([len(turn.tokens) for turn in turns], self.window_tokens - overhead)
        while start < len(turns) and len(self.renderer.prompt(system, turns[start:], tools)) > self.window_tokens:
            start += 1
        if turns and start >= len(turns):
            raise InvalidInputError(
                f"the newest turn does not fit in window_tokens={self.window_tokens} next to the system "
                f"message and tools ({overhead} tokens); raise window_tokens or shorten the system message"
            )
        return start


@dataclass
class Conversation:
    """An agent's turns in reach of the window, the newest turns' identities, and its written and pending tokens."""

    system: list[Message] = field(default_factory=list)
    """The last system message(s) received, reused when a call brings none."""
    turns: list[Turn] = field(default_factory=list)
    """Recent turns that may still appear in a window, oldest first."""
    fingerprints: list[str] = field(default_factory=list)
    """Identity of the newest turns received (the last `FINGERPRINTS_KEPT`, up to a batch more), oldest first: a
    resent history is recognised by them, so no turn is written twice."""
    seen: int = 0
    """Turns ever received, each counted once (the journal numbers turns by it); at least `len(fingerprints)`."""
    written: list[int] = field(default_factory=list)
    """The last L_T tokens already written: training input for the next chunk."""
    pending: list[int] = field(default_factory=list)
    """Tokens not yet written, oldest first (m in Algorithm 1)."""
    archive: list[Message] = field(default_factory=list)
    """Turns that left every window, kept as text only for hybrid recall (`recall_tokens`), oldest first: the last
    `ARCHIVE_KEPT`, up to a batch more."""
    archive_cut: int = 0
    """Turns cut from the archive's front so far (hybrid recall indexes the archive anew when it moves)."""
    ledger: Ledger = field(default_factory=Ledger)
    """Every turn and absorbed text received, with ids, oldest first (bounded: see `templora_memory.ledger`)."""

    def __post_init__(self) -> None:
        self.seen = max(self.seen, len(self.fingerprints))

    @property
    def sizes(self) -> list[int]:
        """Each turn's token count, oldest first."""
        return [len(turn.tokens) for turn in self.turns]

    @property
    def last_message(self) -> Message | None:
        """The newest turn's message (what the next turn is rendered after)."""
        return self.turns[-1].message if self.turns else None

    def unseen(self, messages: Sequence[Message]) -> list[Message]:
        """The messages not seen before: drop the longest prefix that repeats the end of what was seen."""
        return list(messages[self._overlap([fingerprint(m) for m in messages]) :])

    def _overlap(self, prints: Sequence[str]) -> int:
        """Length of the longest prefix of `prints` that repeats the end of what was seen. Only the kept fingerprints
        are compared: a longer prefix counts when it ends with all of them (a client resending its whole history)."""
        kept = self.fingerprints
        if not kept:
            return 0
        for end in range(min(self.seen, len(prints)), 0, -1):
            if prints[end - 1] != kept[-1]:
                continue  # cheap first test: the overlap ends with the newest turn seen
            n = min(end, len(kept))
            if prints[end - n : end] == kept[-n:]:
                return end
        return 0

    def append(self, turn: Turn) -> None:
        """Receive one turn: its tokens join the pending stream (and past the bound, the oldest fingerprints go)."""
        self.turns.append(turn)
        self.fingerprints.append(turn.fingerprint)
        self.seen += 1
        trimmed(self.fingerprints, FINGERPRINTS_KEPT)
        self.pending.extend(turn.tokens)
        self.ledger.add_turn(turn)

    def add_text(self, tokens: list[int]) -> None:
        """Receive an absorbed text's tokens: they join the pending stream (and the ledger)."""
        self.pending.extend(tokens)
        self.ledger.add_text(tokens)

    def pending_messages(self, n_tokens: int) -> list[Message]:
        """The messages whose tokens overlap the first `n_tokens` pending tokens (what the next chunk says)."""
        end, overlapping = len(self.pending), []  # `end`: where each turn ends, counted from the pending start
        for turn in reversed(self.turns):
            start = end - len(turn.tokens)
            if end <= 0:
                break
            if start < n_tokens:
                overlapping.append(turn.message)
            end = start
        return overlapping[::-1]

    def unwritten_outside(self, start: int) -> int:
        """Pending tokens that a window starting at turn `start` no longer holds (they must be written first)."""
        return max(0, len(self.pending) - sum(len(turn.tokens) for turn in self.turns[start:]))

    def mark_written(self, n_tokens: int, train_context_tokens: int) -> list[int]:
        """Move the first `n_tokens` pending tokens to the written stream (keeping its last L_T); returns them."""
        chunk, self.pending = self.pending[:n_tokens], self.pending[n_tokens:]
        self.keep_context(chunk, train_context_tokens)
        return chunk

    def keep_context(self, chunk: list[int], train_context_tokens: int) -> None:
        """After `chunk` is written, keep the last L_T written tokens as the next chunk's training input."""
        self.written = (self.written + chunk)[-train_context_tokens:] if train_context_tokens else []

    def _first_pending_turn(self) -> int:
        """Index of the oldest turn with a token still pending (`len(turns)` when none is)."""
        index, covered = len(self.turns), 0
        while index > 0 and covered < len(self.pending):
            index -= 1
            covered += len(self.turns[index].tokens)
        return index

    def drop_before(self, start: int, archive: bool = False) -> None:
        """Let go of the turns before `start` that are written (they left the window); `archive` keeps their text.
        A turn whose tokens are still pending (a bounded write left them) stays until they are written."""
        start = min(start, self._first_pending_turn())
        if archive:
            self.archive.extend(turn.message for turn in self.turns[:start])
            self.archive_cut += trimmed(self.archive, ARCHIVE_KEPT)
        self.turns = self.turns[start:]


def trimmed(items: list, kept: int) -> int:
    """Cut `items` back to its newest `kept` once it holds more than `kept` + `kept` // 4, so the cut (a copy of the
    list) is paid once per `kept` // 4 additions, not at each; returns how many were cut."""
    cut = len(items) - kept if len(items) > kept + kept // 4 else 0
    del items[:cut]
    return cut


def window_start(sizes: Sequence[int], budget: int) -> int:
    """Index of the oldest turn (of these token sizes) such that the turns from it on fit in `budget` tokens
    (whole turns only); `len(sizes)` when not even the newest turn fits."""
    used = 0
    for index in range(len(sizes) - 1, -1, -1):
        used += sizes[index]
        if used > budget:
            return index + 1
    return 0


def said_by_assistant(turns: Sequence[Turn]) -> tuple[int, ...]:
    """The tokens of the assistant's turns: what a chat reply's repetition penalty counts besides the reply itself."""
    return tuple(token for turn in turns if turn.message.get("role") == "assistant" for token in turn.tokens)


def split_system(messages: Sequence[Message]) -> tuple[list[Message], list[Message]]:
    """System messages (kept out of memory, always in the prompt) and conversation turns."""
    system = [m for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    if len(system) > 1:
        system = [{"role": "system", "content": "\n\n".join(str(m["content"]) for m in system)}]
    return system, turns


def check_text(text: object) -> str:
    """A text to absorb must be a non-empty string."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError("absorb() needs a non-empty string of text to write into the agent's memory")
    return text


def check_messages(messages: object) -> None:
    """Messages must be chat-template dicts with a known role; empty content is allowed (tool-call turns)."""
    if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, Sequence):
        raise InvalidInputError(
            f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InvalidInputError(
                f"message {index} must be a dict with a role among {ROLES}, got {str(message)[:60]!r}"
            )
        if not isinstance(message.get("content", ""), (str, list)):
            raise InvalidInputError(
                f"message {index} has content of type {type(message['content']).__name__}; pass text"
            )
