"""Tool calls in the model's own format: which templates support tools, rendering them, parsing calls out of replies.

Tool calling depends on the model: tools are rendered by the tokenizer's chat template, and the
reply is parsed the way that template tells the model to answer. Templates in the Hermes / Qwen
style ask for `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks; templates that
render tools but name no tag (Llama 3.1 style) get one bare JSON object as the whole reply, and
Mistral's a JSON list of such objects after `[TOOL_CALLS]`.

A template that renders no tools at all (SmolLM2-135M-Instruct, the default model) gets them in the
Hermes format, written here into the messages: the tool schemas and calling instructions in the
system message (`tools_instructions`), each assistant call as a `<tool_call>` block in its text, and
each tool result as a user turn in `<tool_response>` tags.

Framework-free: messages are chat-template dicts, as everywhere in the engine.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from templora_memory.constrained import tool_call_grammar
from templora_memory.message import Message

ToolSchema = dict[str, Any]
"""An OpenAI-style tool: {"type": "function", "function": {"name", "description", "parameters"}}."""
HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_CALLS = "[TOOL_CALLS]"
TOOLS_INSTRUCTIONS = """# Tools

You may call one of these functions to assist with the user query. Function signatures in <tools></tools> tags:
<tools>
{tools}
</tools>

To call a function, answer with a JSON object of the function name and arguments in <tool_call></tool_call> tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


@dataclass(frozen=True)
class ParsedReply:
    """A reply split into its text and its tool calls (chat-template form, arguments as dicts)."""

    content: str
    tool_calls: list[dict[str, Any]]
    invalid_calls: list[dict[str, Any]]
    """Blocks that looked like calls but did not parse: {"name", "args" (raw text), "id", "error"}."""


def supports_tools(chat_template: str | None) -> bool:
    """True if the chat template renders a `tools` list (otherwise tools passed to it are silently lost)."""
    return bool(chat_template) and re.search(r"\btools\b", chat_template) is not None


def uses_tags(chat_template: str | None) -> bool:
    """True if tool calls come as `<tool_call>` blocks: Hermes-style templates, and templates rendering no tools."""
    return chat_template is None or not supports_tools(chat_template) or HERMES_OPEN in chat_template


def required_call_grammar(tools: list[ToolSchema], chat_template: str | None) -> str:
    """The grammar forcing one call of one of `tools`, in the format `chat_template` asks for."""
    if uses_tags(chat_template):
        return tool_call_grammar(tools, tagged=True)
    key = "parameters" if '"parameters"' in chat_template else "arguments"  # Llama 3.1 asks for "parameters"
    return tool_call_grammar(tools, tagged=False, arguments_key=key)


def tools_instructions(tools: list[ToolSchema]) -> str:
    """The Hermes-format tools section for the system message of a template that renders no tools."""
    return TOOLS_INSTRUCTIONS.format(tools="\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools))


def as_text_turns(messages: list[Message], tools: list[ToolSchema] | None) -> list[Message]:
    """Messages for a template that renders no tools: tools, calls and results written into the text (Hermes)."""
    out: list[Message] = []
    for message in messages:
        if message.get("tool_calls"):
            blocks = [_message_call_block(call) for call in message["tool_calls"]]
            text = "\n".join([message["content"], *blocks] if message.get("content") else blocks)
            out.append({"role": "assistant", "content": text})
        elif message["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{message['content']}\n</tool_response>"})
        else:
            out.append({"role": message["role"], "content": message.get("content") or ""})
    if tools:
        section = tools_instructions(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{section}"}
        else:
            out.insert(0, {"role": "system", "content": section})
    return out


def _message_call_block(call: dict[str, Any]) -> str:
    function = call["function"]
    arguments = function["arguments"]
    return call_block(function["name"], json.loads(arguments) if isinstance(arguments, str) else arguments)


def call_block(name: str, arguments: dict[str, Any]) -> str:
    """One call in the Hermes format: `<tool_call>` tags around the name and arguments as JSON."""
    payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{HERMES_OPEN}\n{payload}\n{HERMES_CLOSE}"


def parse_reply(text: str, chat_template: str | None = None) -> ParsedReply:
    """Split generated `text` into content and tool calls, in the format `chat_template` asks for.

    Example:
        >>> parse_reply('<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>').tool_calls[0]["function"]
        {'name': 'add', 'arguments': {'a': 1}}
    """
    if uses_tags(chat_template) or HERMES_OPEN in text:
        return _parse_tagged(text)
    return _parse_bare_json(text)


def _parse_tagged(text: str) -> ParsedReply:
    """Hermes / Qwen style: any number of `<tool_call>{json}</tool_call>` blocks, text around them is content."""
    calls, invalid, kept, position = [], [], [], 0
    for match in re.finditer(re.escape(HERMES_OPEN) + r"(.*?)(?:" + re.escape(HERMES_CLOSE) + r"|$)", text, re.DOTALL):
        kept.append(text[position : match.start()])
        position = match.end()
        _collect(match.group(1).strip(), calls, invalid)
    kept.append(text[position:])
    return ParsedReply("".join(kept).strip(), calls, invalid)


def _parse_bare_json(text: str) -> ParsedReply:
    """Llama 3.1 style: the whole reply is one JSON object with "name" and "arguments" (or "parameters"); Mistral
    style: a JSON list of them, after `[TOOL_CALLS]` (which decoding drops where it is a special token)."""
    stripped = text.strip()
    listed = stripped.removeprefix(MISTRAL_CALLS).strip()
    if listed.startswith("[") and listed.endswith("]"):
        try:
            items = json.loads(listed)
        except json.JSONDecodeError:
            items = None
        if isinstance(items, list) and items and all(isinstance(item, dict) and "name" in item for item in items):
            calls: list[dict[str, Any]] = []
            invalid: list[dict[str, Any]] = []
            for item in items:
                _collect(json.dumps(item), calls, invalid)
            return ParsedReply("", calls, invalid)
    if not (stripped.startswith("{") and stripped.endswith("}")):
        return ParsedReply(stripped, [], [])
    calls, invalid = [], []
    _collect(stripped, calls, invalid)
    if invalid and invalid[0]["name"] is None:  # plain JSON text, not a call
        return ParsedReply(stripped, [], [])
    return ParsedReply("", calls, invalid)


def _collect(raw: str, calls: list[dict[str, Any]], invalid: list[dict[str, Any]]) -> None:
    """Parse one call's JSON into `calls`, or record why it is not a valid call in `invalid`."""
    call_id = "call_" + uuid.uuid4().hex[:24]
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError as exc:
        invalid.append({"name": _guess_name(raw), "args": raw, "id": call_id, "error": f"invalid JSON: {exc}"})
        return
    arguments = payload.get("arguments", payload.get("parameters", {})) if isinstance(payload, dict) else None
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            arguments = None
    name = payload.get("name") if isinstance(payload, dict) else None
    if not isinstance(name, str) or not isinstance(arguments, dict):
        error = "a tool call needs a string 'name' and an object 'arguments'"
        invalid.append({"name": name if isinstance(name, str) else None, "args": raw, "id": call_id, "error": error})
        return
    calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})


def _guess_name(raw: str) -> str | None:
    match = re.search(r'"name"\s*:\s*"([^"]+)"', raw)
    return match.group(1) if match else None


class ToolCallStream:
    """Streams a reply's text while holding back anything that may be a tool call.

    `push` returns the text that is certainly content; `finish` parses the whole reply and returns
    the content not yet emitted. The emitted pieces always join up to `ParsedReply.content`.
    """

    def __init__(self, chat_template: str | None = None) -> None:
        self.chat_template = chat_template
        self.text = ""
        self.emitted = ""

    def push(self, piece: str) -> str:
        """Add generated text; return the part that can be shown now (possibly empty)."""
        self.text += piece
        safe = self._safe_prefix().strip()
        if not safe.startswith(self.emitted) or len(safe) <= len(self.emitted):
            return ""
        new, self.emitted = safe[len(self.emitted) :], safe
        return new

    def finish(self) -> tuple[str, ParsedReply]:
        """Parse the whole reply; return (content still to emit, the parsed reply)."""
        parsed = parse_reply(self.text, self.chat_template)
        rest = parsed.content[len(self.emitted) :] if parsed.content.startswith(self.emitted) else ""
        self.emitted = parsed.content
        return rest, parsed

    def _safe_prefix(self) -> str:
        """The text before any (possibly partial) tool-call opening; a bare-JSON reply is held whole."""
        start = self.text.lstrip()
        if start.startswith(("{", "[")) and not uses_tags(self.chat_template):
            return ""
        cut = self.text.find(HERMES_OPEN)
        if cut >= 0:
            return self.text[:cut]
        held = max((k for k in range(1, len(HERMES_OPEN)) if self.text.endswith(HERMES_OPEN[:k])), default=0)
        return self.text[: len(self.text) - held]
