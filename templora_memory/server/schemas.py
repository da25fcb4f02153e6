"""The request bodies the server accepts, as OpenAI defines them (pydantic: a wrong type is a 400 naming the field).

Fields OpenAI defines that change nothing here (`frequency_penalty`, `logit_bias`, `parallel_tool_calls`,
`metadata`, ...) are accepted and ignored, as other OpenAI-compatible servers do; values that cannot be honoured
(`n` > 1, `logprobs`) are refused. Scalars are strict: "5" is not an integer and "yes" not a boolean.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, model_validator
from pydantic.types import Strict

INT64 = 2**63
"""OpenAI's integers are 64-bit: a `seed` outside [-2**63, 2**63) is refused."""


def _encodable(text: str) -> str:
    """Text must encode as UTF-8: JSON's "\\ud800" escape gives a lone surrogate no tokenizer can read."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"holds a lone surrogate at character {exc.start} (\\u{ord(text[exc.start]):04x}); send "
            "valid UTF-8 text (a surrogate pair, or the character itself)"
        ) from None
    return text


StrictStr = Annotated[str, Strict(), AfterValidator(_encodable)]
"""A JSON string, never a number, and valid Unicode."""


class _Open(BaseModel):
    """Unknown fields are ignored, so newer clients keep working."""

    model_config = ConfigDict(extra="ignore")


class TextPart(_Open):
    """One text part of a message's content (the only kind a text model reads)."""

    type: Literal["text"]
    text: StrictStr


class FunctionCall(_Open):
    """A call the assistant made: the function's name and its arguments as a JSON string."""

    name: StrictStr
    arguments: StrictStr


class ToolCall(_Open):
    """One entry of an assistant message's `tool_calls`."""

    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Open):
    """A conversation message: system (or developer), user, assistant (maybe with tool calls), or a tool result."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: StrictStr | None = None

    @model_validator(mode="after")
    def _complete(self) -> ChatMessage:
        """Only an assistant message may go without content; a tool result names the call it answers."""
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self

    def text(self) -> str:
        """The content as one string."""
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class FunctionDefinition(_Open):
    """A function the model may call; `parameters` is its JSON schema."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class Tool(_Open):
    """One entry of `tools`."""

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Open):
    """The function a `tool_choice` names."""

    name: StrictStr


class NamedToolChoice(_Open):
    """`tool_choice` naming one tool: {"type": "function", "function": {"name": ...}}."""

    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Open):
    """The `json_schema` of a response format: a name and the schema the reply must satisfy."""

    name: StrictStr = "response"
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Open):
    """`response_format`: free text, any JSON object, or JSON valid under a schema (generated under its grammar)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _has_schema(self) -> ResponseFormat:
        """A json_schema format must carry its schema."""
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a json_schema object with the schema")
        return self


class StreamOptions(_Open):
    """`stream_options`: `include_usage` adds a last chunk with the usage."""

    include_usage: StrictBool = False


class _Generation(_Open):
    """What chat and text completions share: the model name, streaming, the reply's length and sampling."""

    model: StrictStr | None = None
    """Accepted and echoed as the served model's name: one server runs one model."""
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    temperature: StrictFloat | None = Field(None, ge=0.0, le=2.0)
    """Defaults to 0 (greedy), as `ParametricMemory` does; OpenAI's default is 1."""
    top_p: StrictFloat | None = Field(None, gt=0.0, le=1.0)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = Field(None, ge=-INT64, lt=INT64)
    user: StrictStr | None = None
    n: StrictInt | None = Field(None, ge=1, le=1, description="only one choice per request")
    repetition_penalty: StrictFloat | None = Field(None, ge=1.0)
    """Not OpenAI's (vLLM and llama.cpp take it too): defaults to 1.1, since small models loop without it; it counts
    the assistant's earlier turns and the reply, not the user's words."""


class ChatCompletionRequest(_Generation):
    """`POST /v1/chat/completions`. The agent is named by the `X-Agent-Id` header or, failing that, by `user`."""

    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None
    logprobs: Literal[False] | None = None


class AbsorbRequest(_Open):
    """`POST /v1/agents/{agent_id}/absorb`: a long text to train into the agent's adapter."""

    text: StrictStr = Field(min_length=1)


class CompletionRequest(_Generation):
    """`POST /v1/completions`: `prompt` completed as raw text with the agent's adapter (the `X-Agent-Id` header or
    `user`; none: the base model). Nothing is written into the agent's memory."""

    prompt: StrictStr | list[StrictStr] = Field(min_length=1)
    """One prompt (a list must hold exactly one)."""
    logprobs: Literal[False, 0] | None = None
    echo: Literal[False] | None = None
    suffix: None = None


class Correction(_Open):
    """The body of `PATCH .../turns/{turn_id}`."""

    content: StrictStr = Field(min_length=1)
    """What the turn should have said."""
