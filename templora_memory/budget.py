"""A reply's token budget when tools are on offer: a call's markup is not counted, and a cut-off call is an error.

A tool call costs its markup (`<tool_call>{"name": "get_weather", "arguments": ...}</tool_call>`, ~20–30 tokens) on
top of its arguments, so at a small `max_tokens` the call used to be cut off and dropped. `budgeted` extends the
budget by the markup of the longest offered tool's call; `check_complete` raises `ReplyCutOffError`, naming
`max_tokens` and what the reply had reached, when a call or a JSON reply still did not fit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

from templora_memory.constrained import Constraint
from templora_memory.errors import ReplyCutOffError
from templora_memory.generation import Sampling
from templora_memory.offer import ToolOffer
from templora_memory.replies import Reply
from templora_memory.tools import call_block


def markup_tokens(offer: ToolOffer, encode: Callable[[str], list[int]]) -> int:
    """Tokens a call of the offered tool with the longest name takes besides its arguments (0: no tools)."""
    if not offer.tools:
        return 0
    name = max((tool["function"]["name"] for tool in offer.tools), key=len)
    return len(encode(call_block(name, {}))) - len(encode("{}"))


def budgeted(sampling: Sampling, markup: int, room: int, penalised: tuple[int, ...]) -> Sampling:
    """`sampling` with `markup` tokens more to generate, within the `room` the model's context has left, and the
    repetition penalty counting `penalised` (the assistant's own tokens: a reply may repeat the user, not itself)."""
    return replace(sampling, max_new_tokens=max(1, min(sampling.max_new_tokens + markup, room)), penalised=penalised)


def check_complete(reply: Reply, constraint: Constraint | None, max_tokens: int, markup: int) -> None:
    """Raise `ReplyCutOffError` if the reply's budget ended it inside a tool call or a constrained JSON value."""
    if reply.finish_reason != "length":
        return
    used = reply.completion_tokens - markup
    fix = f"raise max_tokens above {used}, e.g. to {2 * max(used, max_tokens)}"
    if reply.invalid_calls:
        name = reply.invalid_calls[0]["name"] or "a tool"
        raise ReplyCutOffError(
            f"max_tokens={max_tokens} cut the call of {name!r} off after {used} tokens of arguments (its markup, "
            f"{markup} tokens, is not counted), so it would come back incomplete; {fix}"
        )
    if constraint is not None and not constraint.finished and not reply.tool_calls and not _is_json(reply.content):
        raise ReplyCutOffError(
            f"max_tokens={max_tokens} ended the reply after {reply.completion_tokens} tokens, before its "
            f"{'tool call' if markup else 'JSON value'} was complete; {fix}"
        )


def _is_json(text: str) -> bool:
    """True if `text` is one complete JSON value."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
