"""Messages as token ids through the tokenizer's own chat template (tools in Hermes text where it renders none;
strict templates get the alternating shape they accept). Pure rendering: no model, no state."""

from __future__ import annotations

from collections.abc import Sequence

from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase

from templora_memory.message import Message, Turn, fingerprint
from templora_memory.tools import ToolSchema, as_text_turns, supports_tools


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
