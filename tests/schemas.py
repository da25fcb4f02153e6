"""Tools and structured-output schemas shared by the tool, middleware and constrained-decoding tests."""

from __future__ import annotations

from typing import TypedDict

from langchain_core.tools import tool
from pydantic import BaseModel


class Person(BaseModel):
    """A person's name and age."""

    name: str
    age: int


class PersonDict(TypedDict):
    """A person's name and age."""

    name: str
    age: int


ADD_CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b
