"""Tool calling plumbing on a tiny in-process model whose chat template supports tools (Hermes / Qwen style).

The tiny model's replies are random, so the end-to-end tests script what it generates (the token
generator is replaced); everything else — the template rendering tools and tool results, parsing,
streaming, the engine remembering the call, LangChain's structured output — runs for real.
"""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from templora_memory import InvalidInputError, ParametricMemory
from templora_memory.tools import ToolCallStream, parse_reply, supports_tools
from tests.schemas import ADD_CALL, Person, PersonDict, add
from tests.tiny import HERMES, tiny_tokenizer


@tool
def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


@pytest.fixture
def scripted(scripted_model, tool_memory):
    """Make the tool model generate a given text; returns the prompts it was given (decoded), newest last."""
    return lambda text: scripted_model.play(tool_memory.engine.tokenizer, text)


# ----- parsing -------------------------------------------------------------------------------


def test_parse_hermes_calls_and_text_around_them():
    shout_call = '<tool_call>{"name": "shout", "arguments": {"text": "hi"}}</tool_call>'
    parsed = parse_reply("Let me add.\n" + ADD_CALL + "\n" + shout_call)
    assert parsed.content == "Let me add."
    assert [c["function"] for c in parsed.tool_calls] == [
        {"name": "add", "arguments": {"a": 2, "b": 3}},
        {"name": "shout", "arguments": {"text": "hi"}},
    ]
    assert len({c["id"] for c in parsed.tool_calls}) == 2 and not parsed.invalid_calls


def test_parse_keeps_broken_calls_as_invalid():
    parsed = parse_reply('<tool_call>{"name": "add", "arguments": {"a": 2,</tool_call>')
    assert parsed.tool_calls == []
    assert parsed.invalid_calls[0]["name"] == "add" and "invalid JSON" in parsed.invalid_calls[0]["error"]
    unclosed = parse_reply('<tool_call>{"name": "add", "arguments": {"a": 1}}')
    assert unclosed.tool_calls[0]["function"]["arguments"] == {"a": 1}


def test_parse_bare_json_for_templates_without_a_tag():
    llama_style = "{% for tool in tools %}{{ tool | tojson }}{% endfor %}"
    parsed = parse_reply('{"name": "add", "parameters": {"a": 1, "b": 1}}', llama_style)
    assert parsed.content == "" and parsed.tool_calls[0]["function"] == {"name": "add", "arguments": {"a": 1, "b": 1}}
    assert parse_reply('{"answer": 42}', llama_style).content == '{"answer": 42}'
    assert parse_reply("Just text.", llama_style).tool_calls == []


def test_supports_tools_reads_the_template():
    assert supports_tools(HERMES)
    assert not supports_tools(tiny_tokenizer().chat_template)
    assert not supports_tools(None)


def test_stream_never_leaks_a_split_tool_call_tag():
    stream = ToolCallStream(HERMES)
    text = "Sure, adding now. " + ADD_CALL
    shown = "".join(stream.push(text[i : i + 3]) for i in range(0, len(text), 3))
    rest, parsed = stream.finish()
    assert "<" not in shown and shown + rest == parsed.content == "Sure, adding now."
    assert parsed.tool_calls[0]["function"]["name"] == "add"


# ----- end to end through ParametricMemory --------------------------------------------------------


def test_bind_tools_renders_tools_and_parses_the_call(tool_memory, scripted):
    prompts = scripted(ADD_CALL)
    reply = tool_memory.bind_tools([add, shout]).invoke("What is 2 + 3?", agent_id="calc")
    assert '"name": "add"' in prompts[-1] and '"name": "shout"' in prompts[-1]
    assert reply.content == ""
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("add", {"a": 2, "b": 3})]
    remembered = tool_memory.engine.window("calc")[-1]
    assert remembered["tool_calls"][0]["id"] == reply.tool_calls[0]["id"]


def test_stream_yields_text_then_tool_call_chunks(tool_memory, scripted):
    scripted("Adding. " + ADD_CALL)
    chunks = list(tool_memory.bind_tools([add]).stream("2 + 3?", agent_id="calc-stream"))
    full = chunks[0]
    for chunk in chunks[1:]:
        full += chunk
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata["output_tokens"] > 0
    assert all("<tool_call>" not in c.content for c in chunks)
    assert full.content == "Adding."
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [("add", {"a": 2, "b": 3})]


def test_tool_result_is_rendered_and_the_call_is_not_written_twice(tool_memory, scripted):
    prompts = scripted(ADD_CALL)
    bound = tool_memory.bind_tools([add]).bind(agent_id="loop")
    history = [SystemMessage("You add numbers."), HumanMessage("What is 2 + 3?")]
    call = bound.invoke(history)
    history += [call, ToolMessage("5", tool_call_id=call.tool_calls[0]["id"])]
    scripted("The answer is 5.")
    answer = bound.invoke(history)
    assert answer.content == "The answer is 5." and answer.tool_calls == []
    assert "<tool_response>\n5\n</tool_response>" in prompts[-1]
    assert prompts[-1].count('"arguments": {"a": 2, "b": 3}') == 1  # the remembered call, once
    assert tool_memory.stats("loop").turns_seen == 4  # user, call, result, answer


def test_invalid_call_lands_in_invalid_tool_calls(tool_memory, scripted):
    scripted('<tool_call>{"name": "add", "arguments": {"a": </tool_call>')
    reply = tool_memory.bind_tools([add]).invoke("2 + 3?", agent_id="broken")
    assert reply.tool_calls == [] and reply.invalid_tool_calls[0]["name"] == "add"


def test_tool_choice_narrows_or_hides_the_tools(tool_memory, scripted):
    prompts = scripted("ok")
    tool_memory.bind_tools([add, shout], tool_choice="shout").invoke("hi", agent_id="choice")
    assert '"name": "shout"' in prompts[-1] and '"name": "add"' not in prompts[-1]
    tool_memory.bind_tools([add, shout], tool_choice="none").invoke("hi again", agent_id="choice")
    assert "<tools>" not in prompts[-1]
    with pytest.raises(InvalidInputError, match="names no bound tool"):
        tool_memory.bind_tools([add], tool_choice="divide")


@pytest.mark.parametrize("schema", [Person, PersonDict, Person.model_json_schema()])
def test_with_structured_output_goes_through_a_tool_call(tool_memory, scripted, schema):
    name = "Person" if schema is not PersonDict else "PersonDict"
    scripted(f'<tool_call>{{"name": "{name}", "arguments": {{"name": "Ada", "age": 36}}}}</tool_call>')
    result = tool_memory.with_structured_output(schema, method="function_calling").invoke("Who?", agent_id="so")
    assert result == (Person(name="Ada", age=36) if schema is Person else {"name": "Ada", "age": 36})


def test_template_without_tools_gets_them_in_the_hermes_format(make_engine, scripted_model):
    """The tiny model's ChatML template renders no tools: tools, calls and results are written into the text."""
    tiny_memory = ParametricMemory(engine=make_engine(window_tokens=600))  # the tools section needs room
    prompts = scripted_model.play(tiny_memory.engine.tokenizer, ADD_CALL)
    bound = tiny_memory.bind_tools([add]).bind(agent_id="plain")
    call = bound.invoke([SystemMessage("You add."), HumanMessage("2 + 3?")])
    assert [(c["name"], c["args"]) for c in call.tool_calls] == [("add", {"a": 2, "b": 3})]
    assert prompts[-1].startswith("<|im_start|>system\nYou add.\n\n# Tools") and '"name": "add"' in prompts[-1]
    bound.invoke([HumanMessage("2 + 3?"), call, ToolMessage("5", tool_call_id=call.tool_calls[0]["id"])])
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}' in prompts[-1]
    assert "<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>" in prompts[-1]


def test_tool_turns_are_written_into_the_adapter(tool_memory, scripted):
    scripted(ADD_CALL)
    bound = tool_memory.bind_tools([add]).bind(agent_id="writer")
    history = [HumanMessage("What is 2 + 3? " * 4)]
    for _ in range(3):
        call = bound.invoke(history)
        history += [call, ToolMessage(json.dumps(5), tool_call_id=call.tool_calls[0]["id"])]
    stats = tool_memory.stats("writer")
    assert stats.chunks_trained >= 2 and stats.tokens_written >= 64
    assert isinstance(history[1], AIMessage) and history[1].tool_calls
