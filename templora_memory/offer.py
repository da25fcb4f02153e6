"""`ToolOffer`: what a call offers the model (tools, a tool choice, a response format) and the grammar that follows.

Shared by every front end (LangChain's `ParametricMemory`, LlamaIndex's `TemploraLLM`), so a tool choice
means the same everywhere: "auto" (the model decides), "none" (tools hidden), "any" / "required" / True
(one call of some offered tool, constrained), or a tool name / {"type": "function", "function": {"name": ...}}
(a call of that tool, constrained). A JSON response format constrains the reply to one JSON value instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from templora_memory.constrained import ANY_OBJECT, json_grammar
from templora_memory.errors import InvalidInputError
from templora_memory.json_schemas import check_schema
from templora_memory.tools import ToolSchema, required_call_grammar

REQUIRED_CHOICES = ("any", "required", True)
_FREE_CHOICES = (None, "auto", False, "none")


@dataclass(frozen=True)
class ToolOffer:
    """The tools a call offers (None: none) and the grammar its reply is generated under (None: free text)."""

    tools: list[ToolSchema] | None = None
    grammar: str | None = None

    @property
    def required(self) -> bool:
        """True when the reply must be a tool call."""
        return self.tools is not None and self.grammar is not None

    @classmethod
    def of(
        cls,
        tools: list[ToolSchema] | None,
        choice: str | bool | dict | None = None,
        response_format: dict[str, Any] | None = None,
        chat_template: str | None = None,
    ) -> ToolOffer:
        """The offer of `tools` under `choice`, or of a JSON `response_format`, for a model with `chat_template`.

        A tool choice naming no offered tool raises `InvalidInputError` listing the offered ones; so does a schema
        that cannot constrain generation (see `json_schemas.check_schema`).
        """
        for index, tool in enumerate(tools or []):
            function = tool["function"]
            parameters = function.get("parameters") or {"type": "object"}
            check_schema(
                parameters, f"the parameters of tool {function['name']!r}", f"tools.[{index}].function.parameters"
            )
        offered = offered_tools(tools, choice) if tools and choice not in ("none", False) else None
        if response_format is not None:
            schema = response_schema(response_format)
            check_schema(schema, "the response_format's schema", "response_format")
            return cls(offered, json_grammar(schema))
        if offered and is_required(choice):
            return cls(offered, required_call_grammar(offered, chat_template))
        return cls(offered, None)


def is_required(choice: str | bool | dict | None) -> bool:
    """True if `choice` requires a call: "any", "required", True, a tool name or an OpenAI choice dict."""
    return choice in REQUIRED_CHOICES or isinstance(choice, dict) or _names_tool(choice)


def offered_tools(tools: list[ToolSchema], choice: str | bool | dict | None) -> list[ToolSchema]:
    """The tools a `choice` leaves on offer; a named tool must be one of `tools`."""
    if choice in _FREE_CHOICES or choice in REQUIRED_CHOICES:
        return tools
    name = choice["function"]["name"] if isinstance(choice, dict) else choice
    chosen = [tool for tool in tools if tool["function"]["name"] == name]
    if not chosen:
        names = ", ".join(tool["function"]["name"] for tool in tools)
        raise InvalidInputError(f"tool_choice={choice!r} names no bound tool; choose one of: {names}")
    return chosen


def response_schema(response_format: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of a `response_format`: {"type": "json_object"}, OpenAI's {"type": "json_schema"}, a schema."""
    if not isinstance(response_format, dict):
        raise InvalidInputError(
            f"response_format must be a JSON schema dict or {{'type': 'json_object'}}, got {response_format!r:.60}"
        )
    if response_format.get("type") == "json_object":
        return ANY_OBJECT
    if response_format.get("type") == "json_schema" and "json_schema" in response_format:
        return response_format["json_schema"].get("schema", ANY_OBJECT)
    return response_format


def _names_tool(choice: object) -> bool:
    """True if `choice` names one tool (a plain tool name)."""
    return isinstance(choice, str) and choice not in ("auto", "none", "any", "required")
