"""Structured-output schemas shared by the tool and constrained-decoding tests."""

from __future__ import annotations

from typing import TypedDict

from pydantic import BaseModel


class Person(BaseModel):
    """A person's name and age."""

    name: str
    age: int


class PersonDict(TypedDict):
    """A person's name and age."""

    name: str
    age: int
