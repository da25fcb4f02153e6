"""Constrained decoding on the tiny random model: required tool calls and JSON replies parse whatever it samples.

The tiny model is untrained, so without a grammar its replies are noise; every test here samples at
temperature 1 over several seeds and still gets a valid call or JSON value, which only the grammar can
give. JSON mode (any object) is left to the real default model (tests/test_langchain_standard.py): a
random model's free keys and strings need not end within any budget. The real model's tool use is
covered by tests/test_langchain_standard.py and tests/test_tool_agent.py.
"""

from __future__ import annotations

import json
from typing import Literal

import pytest
from langchain_core.tools import tool
from pydantic import BaseModel

from templora_memory import InvalidInputError, MemoryEngine, ParametricMemory, TempLoraConfig
from templora_memory.constrained import json_grammar, tool_call_grammar
from templora_memory.errors import ReplyCutOffError
from templora_memory.generation import Sampling, generate_tokens
from tests.schemas import Person, PersonDict
from tests.tiny import tiny_model

SEEDS = range(3)


pytestmark = pytest.mark.usefixtures("one_thread")


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def shout(text: str, times: int = 1) -> str:
    """Upper-case a text."""
    return text.upper() * times


@tool
def ping() -> str:
    """Ping the server."""
    return "pong"


@pytest.fixture
def memory(tokenizer) -> ParametricMemory:
    """The tiny model, sampling at temperature 1, with room for the tools section (~1 token per byte) and a call."""
    config = TempLoraConfig(chunk_tokens=64, window_tokens=3000, train_context_tokens=64, max_new_tokens=600)
    engine = MemoryEngine(config=config, loaded=(tiny_model(tokenizer, context=4096), tokenizer, "tiny-llama"))
    return ParametricMemory(engine=engine, temperature=1.0)


@pytest.mark.parametrize("choice", ["any", "required", "shout", {"type": "function", "function": {"name": "add"}}])
def test_required_call_always_parses_with_valid_arguments(memory, choice):
    bound = memory.bind_tools([add, shout, ping], tool_choice=choice)
    for seed in SEEDS:
        reply = bound.invoke("Do something.", agent_id=f"req-{seed}", seed=seed)
        assert reply.invalid_tool_calls == [] and len(reply.tool_calls) == 1, reply
        call = reply.tool_calls[0]
        if isinstance(choice, dict) or choice == "shout":
            assert call["name"] == (choice if choice == "shout" else "add")
        tool_ = {"add": add, "shout": shout, "ping": ping}[call["name"]]
        tool_.args_schema.model_validate(call["args"])  # raises if an argument is missing or of the wrong type
        assert set(call["args"]) <= set(tool_.args)


def test_streamed_required_call_parses_too(memory):
    chunks = list(memory.bind_tools([add], tool_choice="any").stream("Add.", agent_id="stream", seed=1))
    full = chunks[0]
    for chunk in chunks[1:]:
        full += chunk
    assert full.content == "" and [c["name"] for c in full.tool_calls] == ["add"]
    assert set(full.tool_calls[0]["args"]) == {"a", "b"}


@pytest.mark.parametrize("schema", [Person, PersonDict, Person.model_json_schema()])
@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_structured_output_always_fits_the_schema(memory, schema, method):
    structured = memory.with_structured_output(schema, method=method)
    for seed in SEEDS:
        result = structured.invoke("Who?", agent_id=f"so-{method}-{seed}", seed=seed)
        person = result if isinstance(result, Person) else Person.model_validate(result)
        assert isinstance(person.name, str) and isinstance(person.age, int)


class Mood(BaseModel):
    """A finite answer: the grammar ends it within a few tokens whatever the random model samples."""

    mood: Literal["happy", "sad"]


def test_include_raw_keeps_the_message_and_the_parsed_value(memory):
    # a free string field could outrun max_new_tokens on the random tiny model at temperature 1
    structured = memory.with_structured_output(Mood, method="json_schema", include_raw=True)
    result = structured.invoke("How are you?", agent_id="raw", seed=0)
    assert isinstance(result["parsed"], Mood) and result["parsing_error"] is None
    assert Mood.model_validate_json(result["raw"].content) == result["parsed"]


def test_auto_is_not_constrained(memory):
    """With tool_choice="auto" the tiny model writes whatever it samples: no call is forced out of it."""
    replies = [memory.bind_tools([add]).invoke("Hi", agent_id=f"auto-{s}", seed=s, max_tokens=12) for s in SEEDS]
    assert all(not r.tool_calls for r in replies) and any(r.content for r in replies)


def test_grammar_is_compiled_once_per_schema(memory):
    grammars = memory.engine.grammars
    bound = memory.bind_tools([add], tool_choice="any")  # bind time compiles it (to fail early on a bad schema)
    compiled = grammars.compiles
    for seed in SEEDS:
        bound.invoke("Add.", agent_id="cache", seed=seed)
    assert grammars.compiles == compiled  # every call reused the compiled grammar
    memory.bind_tools([shout], tool_choice="any").invoke("Shout.", agent_id="cache", seed=SEEDS[0])
    assert grammars.compiles == compiled + 1  # a new schema is compiled once


def test_a_schema_the_grammar_cannot_express_is_refused_at_bind_time(memory):
    bad = {"type": "function", "function": {"name": "odd", "parameters": {"type": "object", "minProperties": "x"}}}
    with pytest.raises(InvalidInputError, match="tool 'odd': cannot constrain generation to this schema"):
        memory.bind_tools([bad], tool_choice="any")
    with pytest.raises(InvalidInputError, match="cannot constrain generation"):
        memory.with_structured_output(
            {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}, method="json_schema"
        )
    with pytest.raises(InvalidInputError, match="names no bound tool; choose one of: add"):
        memory.bind_tools([add], tool_choice="divide")
    with pytest.raises(InvalidInputError, match="method='xml' is not supported"):
        memory.with_structured_output(Person, method="xml")


def test_a_truncated_call_is_reported_not_hidden(memory):
    with pytest.raises(ReplyCutOffError, match=r"max_tokens=30 cut the call of 'shout' off .* raise max_tokens"):
        memory.bind_tools([shout], tool_choice="any").invoke("Shout.", agent_id="short", max_tokens=30, seed=0)
    assert memory.engine.window("short")[-1]["role"] == "user"  # the incomplete call was not remembered


def test_generate_tokens_stops_when_the_grammar_is_complete(memory):
    engine = memory.engine
    prompt = engine.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    flags = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2]}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    for grammar in (json_grammar(flags), tool_call_grammar([_openai(ping)], tagged=False)):
        for seed in SEEDS:
            constraint = engine.grammars.constraint(grammar)
            sampling = Sampling(max_new_tokens=300, temperature=1.0, seed=seed)
            with engine.bank.active(None) as model:
                ids = list(generate_tokens(model, prompt, sampling, engine.eos_ids, constraint=constraint))
            assert constraint.finished and len(ids) < 300, engine.tokenizer.decode(ids)
            json.loads(engine.tokenizer.decode(ids))


def _openai(tool_) -> dict:
    from langchain_core.utils.function_calling import convert_to_openai_tool

    return convert_to_openai_tool(tool_)
