"""Constrained decoding with llguidance: grammars from JSON schemas, so required tool calls and JSON always parse.

A grammar is compiled once per tokenizer and grammar text (`GrammarCache`); each generation gets its
own `Constraint`, which masks the logits of every token the grammar forbids before the token is picked
and advances on the picked token. llguidance was chosen by measurement (`python -m benchmarks
constrain`, docs/benchmarks.md): it compiles a schema in about a millisecond where xgrammar and
outlines-core take up to 0.5 s and 11 s, its per-token mask costs well under 1 % of a forward pass,
and it installs as one wheel with no dependencies.

Framework-free: tools are OpenAI-style function schemas, as everywhere in the engine.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import llguidance
import llguidance.hf
import torch

from templora_memory.errors import InvalidInputError, TemploraError

JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""JSON as `json.dumps` writes it: no free whitespace, so a small model cannot loop on blank lines."""
ANY_OBJECT: dict[str, Any] = {"type": "object"}
"""JSON mode: any JSON object."""


def json_grammar(schema: dict[str, Any]) -> str:
    """A grammar for one JSON value valid under `schema` (JSON mode is `ANY_OBJECT`)."""
    return _lark(f"start: {_json_rule(schema)}")


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` closed to keys beyond its properties, unless it says otherwise (a small model may ramble on)."""
    return {"additionalProperties": False, **schema} if "properties" in schema else schema


def tool_call_grammar(tools: list[dict[str, Any]], tagged: bool = True, arguments_key: str = "arguments") -> str:
    """A grammar for exactly one call of one of `tools`: its name fixed, its arguments valid by its schema.

    `tagged` wraps the call as Hermes does (`<tool_call>\\n{...}\\n</tool_call>`); otherwise the reply is
    the bare JSON object (Llama 3.1 style templates, which may name the arguments "parameters").
    """
    if not tools:
        raise InvalidInputError("a required tool call needs at least one tool; bind tools with bind_tools([...])")
    calls = [_call_schema(tool["function"], arguments_key) for tool in tools]
    call = _json_rule({"anyOf": calls} if len(calls) > 1 else calls[0])
    return _lark(f'start: "<tool_call>\\n" call "\\n</tool_call>"\ncall: {call}' if tagged else f"start: {call}")


def _call_schema(function: dict[str, Any], arguments_key: str) -> dict[str, Any]:
    """{"name": <const>, "arguments": <parameters>}, closed to extra keys."""
    parameters = closed(function.get("parameters") or {"type": "object", "properties": {}})
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, arguments_key: parameters},
        "required": ["name", arguments_key],
        "additionalProperties": False,
    }


def _json_rule(schema: dict[str, Any]) -> str:
    """A Lark rule body embedding `schema` (llguidance's `%json` extension) in `JSON_STYLE`."""
    return "%json " + json.dumps({**schema, "x-guidance": JSON_STYLE})


def _lark(grammar: str) -> str:
    return llguidance.LLMatcher.grammar_from_lark(grammar)


class GrammarCache:
    """Compiled grammars of one tokenizer, one per grammar text; `compiles` counts real compilations."""

    def __init__(self, tokenizer) -> None:
        self.hf_tokenizer = tokenizer
        self.compiles = 0
        self._tokenizer = None  # llguidance's view of the vocabulary, built on first use (~0.7 s)
        self._compiled: dict[str, Any] = {}
        self._lock = threading.Lock()

    def compile(self, grammar: str) -> Any:
        """A fresh copy of the compiled matcher for `grammar`; InvalidInputError if it does not compile."""
        with self._lock:
            template = self._compiled.get(grammar)
            if template is None:
                template = self._compiled[grammar] = self._compile(grammar)
        return template.deep_copy()

    def constraint(self, grammar: str) -> Constraint:
        """A new generation's constraint for `grammar`."""
        return Constraint(self.compile(grammar), len(self.hf_tokenizer))

    def _compile(self, grammar: str) -> Any:
        if self._tokenizer is None:
            self._tokenizer = llguidance.hf.from_tokenizer(self.hf_tokenizer)
        matcher = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidInputError(
                f"cannot constrain generation to this schema: {matcher.get_error()}; "
                "simplify the JSON schema (plain types, properties, required, enum, anyOf, $defs work)"
            )
        self.compiles += 1
        return matcher


class Constraint:
    """One generation's grammar state: masks forbidden tokens' logits and advances on each picked token."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self.matcher = matcher
        # on the CPU, where llguidance writes the mask and tokens are picked; bit i of word i//32: token i
        self.bitmask = torch.zeros((vocab_size + 31) // 32, dtype=torch.int32, device="cpu")
        self._shifts = torch.arange(32, dtype=torch.int32, device="cpu")

    @property
    def finished(self) -> bool:
        """True once the grammar is complete (nothing more may be generated)."""
        return self.matcher.is_stopped()

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits (V,) of every token the grammar does not allow next to -inf, in place."""
        self.matcher.unsafe_compute_mask_ptr(self.bitmask.data_ptr(), self.bitmask.numel() * 4)
        allowed = ((self.bitmask.unsqueeze(1) >> self._shifts) & 1).view(-1).bool()  # (32 * words,)
        size = min(len(allowed), logits.shape[0])
        logits[:size].masked_fill_(~allowed[:size], float("-inf"))
        logits[size:] = float("-inf")  # rows past the tokenizer's vocabulary (padding) are never picked

    def advance(self, token: int) -> None:
        """Move the grammar past the picked `token`."""
        if not self.matcher.consume_token(token):
            raise TemploraError(f"constrained decoding rejected token {token}: {self.matcher.get_error()}")
