"""Checks on the JSON schemas callers send (tool parameters, response formats) before any grammar is built.

A schema must be valid under its draft's meta-schema (`{"type": "nonsense"}` is not), its `$ref`s must point
inside it, and it must have a finite instance: a `$ref` that comes back to itself without passing an optional
place (a property not required, array items) describes values without end, and constrained generation could
never finish one (`{"$ref": "#"}`, or an object that requires a copy of itself). Recursive schemas that pass
an optional place (a linked list, a tree) are fine.
"""

from __future__ import annotations

from typing import Any

from jsonschema.exceptions import SchemaError
from jsonschema.validators import Draft202012Validator, validator_for

from templora_memory.errors import InvalidInputError

MAX_DEPTH = 64
"""Deepest nesting of schemas (and of `$ref`s followed in a row) a schema may have."""
_ALWAYS = ("allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas")
"""Keywords whose subschemas apply to the value itself (a cycle through them has no way out)."""
_OPTIONAL = ("items", "prefixItems", "additionalProperties", "patternProperties", "unevaluatedProperties")
"""Keywords whose subschemas apply to parts a value may leave out (an array may be empty)."""
_MAPPINGS = ("patternProperties", "dependentSchemas")
"""Keywords whose value maps names to schemas."""
MAX_VISITS = 10_000
"""Most subschemas one check visits (a schema whose references branch without end is refused)."""


def check_schema(schema: object, what: str, param: str | None = None) -> None:
    """Raise `InvalidInputError` naming `what` (and `param`, the request field) unless `schema` can constrain
    generation: a JSON object, valid under its meta-schema, with local `$ref`s and a finite instance."""
    if not isinstance(schema, dict):
        raise InvalidInputError(f"{what} must be a JSON schema object, got {type(schema).__name__}", param=param)
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.path) or "the top level"
        raise InvalidInputError(
            f"{what} is not a valid JSON schema at {where}: {exc.message[:200]}", param=param
        ) from None
    except RecursionError:
        raise InvalidInputError(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)", param=param) from None
    _Walk(schema, what, param).start()


class _Walk:
    """Follows a schema's `$ref`s from each place a walk may start, looking for a cycle with no optional step."""

    def __init__(self, root: dict[str, Any], what: str, param: str | None) -> None:
        self.root, self.what, self.param = root, what, param
        self.pending: list[tuple[str, Any]] = [("#", root)]
        self.started: set[str] = set()
        self.visits = 0

    def start(self) -> None:
        """Walk from the root, then from every `$ref` target met past an optional place, each once."""
        while self.pending:
            ref, node = self.pending.pop()
            if ref not in self.started:
                self.started.add(ref)
                self.walk(node, (ref,), 0)

    def walk(self, node: Any, refs: tuple[str, ...], depth: int) -> None:
        """Visit `node`; `refs`: the `$ref`s followed since the last optional place."""
        self.visits += 1
        if depth > MAX_DEPTH or self.visits > MAX_VISITS:
            self.fail(f"is nested or refers too deeply (at most {MAX_DEPTH} levels, {MAX_VISITS} subschemas)")
        if not isinstance(node, dict):
            return
        if isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            if ref in refs:
                self.fail(
                    f"refers to itself ({' -> '.join((*refs, ref))}) without an optional step, so no value "
                    "of it ends; make the recursive property optional"
                )
            self.walk(self.resolve(ref), (*refs, ref), depth + 1)
        required = set(node.get("required", ()))
        for name, sub in (node.get("properties") or {}).items():
            self.walk(sub, refs, depth + 1) if name in required else self.later(sub, depth)
        for keyword in _ALWAYS:
            for sub in _subschemas(node, keyword):
                self.walk(sub, refs, depth + 1)
        for keyword in _OPTIONAL:
            for sub in _subschemas(node, keyword):
                self.later(sub, depth)

    def later(self, node: Any, depth: int) -> None:
        """Past an optional place: a `$ref` there starts a walk of its own; anything else is walked afresh."""
        if isinstance(node, dict) and isinstance(node.get("$ref"), str):
            self.pending.append((node["$ref"], self.resolve(node["$ref"])))
        else:
            self.walk(node, (), depth + 1)

    def resolve(self, ref: str) -> Any:
        """The subschema a local `$ref` ("#", "#/$defs/name") points at."""
        node: Any = self.root
        if not ref.startswith("#"):
            self.fail(f"has $ref {ref[:60]!r} outside itself; only local references ('#/$defs/...') work")
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                self.fail(f"has $ref {ref[:60]!r}, which points at nothing in it")
        return node

    def fail(self, problem: str) -> None:
        raise InvalidInputError(f"{self.what} {problem}", param=self.param)


def _subschemas(node: dict[str, Any], keyword: str) -> list[Any]:
    """The schemas under `keyword`: a list's entries, a name -> schema mapping's values, or the one schema."""
    value = node.get(keyword)
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and keyword in _MAPPINGS:
        return list(value.values())
    return [] if value is None else [value]
