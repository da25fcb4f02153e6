"""LlamaIndex on the tiny model: a chat engine with `TemploraLLM` and `TemploraMemory`, a `Memory` block, and tools.

The tool tests script what the tiny model generates (its replies are random); the rendering of tools and
results, parsing, LlamaIndex's function-calling plumbing and the engine remembering each turn run for real.
One test runs a constrained call on the real default model.
"""

# no `from __future__ import annotations`: LlamaIndex reads the tool functions' annotations as real types
import json
from typing import Literal

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.agent.workflow import FunctionAgent  # noqa: E402
from llama_index.core.base.llms.types import ChatMessage  # noqa: E402
from llama_index.core.chat_engine import SimpleChatEngine  # noqa: E402
from llama_index.core.memory import Memory  # noqa: E402
from llama_index.core.prompts import PromptTemplate  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402

from templora_memory import InvalidInputError  # noqa: E402
from templora_memory.integrations.llamaindex import TemploraLLM, TemploraMemory, TemploraMemoryBlock  # noqa: E402
from tests.schemas import ADD_CALL, Person  # noqa: E402

PRICES = {"bread": "2.40 EUR", "milk": "1.10 EUR", "eggs": "3.20 EUR"}


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def market_price(item: Literal["bread", "milk", "eggs"]) -> str:
    """Look up today's market price of an item."""
    return PRICES[item]


ADD = FunctionTool.from_defaults(fn=add)
MARKET_PRICE = FunctionTool.from_defaults(fn=market_price)
LINES = [f"Note {i}: the {w} is behind the old mill." for i, w in enumerate(["key", "map", "coin", "ring"] * 2)]


def test_chat_engine_writes_every_turn_once(make_engine):
    llm = TemploraLLM(engine=make_engine(), agent_id="bard")
    memory = TemploraMemory.from_defaults(llm, agent_id="bard")
    chat = SimpleChatEngine.from_defaults(llm=llm, memory=memory, system_prompt="You are a bard.")
    for line in LINES:
        response = chat.chat(line)
    stats = llm.engine.stats("bard")
    assert stats.turns_seen == 2 * len(LINES)  # user and reply each written once, though both llm and memory saw them
    assert stats.chunks_trained >= 2  # older turns went into the adapter
    window = memory.get()
    assert window[-1].content == response.response and window[-2].content == LINES[-1]
    assert all(m.role.value != "system" for m in window)  # the chat engine adds its system prompt itself
    assert len(window) < 2 * len(LINES) + 1  # older turns are no longer text


def test_streaming_chat_and_complete(make_engine):
    llm = TemploraLLM(engine=make_engine(), agent_id="scribe")
    streamed = SimpleChatEngine.from_defaults(llm=llm, memory=TemploraMemory.from_defaults(llm, agent_id="scribe"))
    response = streamed.stream_chat("Tell me about the castle.")
    pieces = list(response.response_gen)
    assert "".join(pieces) == response.response and llm.engine.stats("scribe").turns_seen == 2
    deltas = list(llm.stream_complete("Once upon a time"))
    assert "".join(d.delta for d in deltas) == deltas[-1].text
    assert isinstance(llm.complete("Once upon a time").text, str)
    assert llm.engine.stats("scribe").turns_seen == 6  # two completions, each a user turn and a reply
    llm.complete("<|im_start|>user\nraw<|im_end|>\n", formatted=True)
    assert llm.engine.stats("scribe").turns_seen == 6  # raw completion writes nothing
    assert llm.metadata.is_chat_model and llm.metadata.context_window == llm.engine.config.window_tokens


async def test_async_chat(make_engine):
    llm = TemploraLLM(engine=make_engine(), agent_id="async")
    reply = await llm.achat([ChatMessage(role="user", content="Hello there!")])
    assert reply.message.role.value == "assistant" and llm.engine.stats("async").turns_seen == 2


async def test_memory_block_receives_flushed_turns(make_engine):
    engine = make_engine()
    block = TemploraMemoryBlock(engine, agent_id="archive")
    tokenize = lambda text: engine.tokenizer(text)["input_ids"]  # noqa: E731  (offline: no tiktoken download)
    memory = Memory.from_defaults(
        token_limit=120, token_flush_size=40, chat_history_token_ratio=0.5, tokenizer_fn=tokenize, memory_blocks=[block]
    )
    for i, line in enumerate(LINES):
        await memory.aput(ChatMessage(role="user" if i % 2 == 0 else "assistant", content=line))
    short_term = await memory.aget()  # the messages the next prompt holds (our block inserts no text)
    archived = engine.stats("archive")
    assert archived.turns_seen >= 2 and archived.chunks_trained >= 1  # flushed turns went into the adapter
    # each turn is either still in short-term memory or was written, once, into the adapter
    assert [m.content for m in short_term] == LINES[archived.turns_seen :]


# ----- tools and structured output ---------------------------------------------------------------


@pytest.fixture
def tool_llm(tool_memory) -> TemploraLLM:
    """`TemploraLLM` over the tiny model with a Hermes tool template (shared with `tool_memory`)."""
    return TemploraLLM(engine=tool_memory.engine, agent_id="calc")


@pytest.fixture
def scripted(scripted_model, tool_llm):
    """Make the tool model generate the given texts in turn; returns the prompts it was given, newest last."""
    return lambda *texts: scripted_model.play(tool_llm.engine.tokenizer, *texts)


def test_required_call_parses_into_a_tool_selection(tool_llm, scripted):
    prompts = scripted(ADD_CALL)
    response = tool_llm.chat_with_tools([ADD, MARKET_PRICE], user_msg="What is 2 + 3?", tool_required=True)
    [selection] = tool_llm.get_tool_calls_from_response(response, error_on_no_tool_call=True)
    assert (selection.tool_name, selection.tool_kwargs) == ("add", {"a": 2, "b": 3})
    assert '"name": "add"' in prompts[-1] and '"name": "market_price"' in prompts[-1]
    assert response.message.content == "" and response.additional_kwargs["invalid_tool_calls"] == []
    remembered = tool_llm.engine.window("calc")[-1]
    assert remembered["tool_calls"][0]["id"] == selection.tool_id


def test_auto_call_is_parsed_and_its_markup_never_streamed(tool_llm, scripted):
    scripted("Adding. " + ADD_CALL)
    responses = list(tool_llm.stream_chat_with_tools([ADD], user_msg="2 + 3?"))
    assert all("<tool_call>" not in r.delta for r in responses) and responses[-1].message.content == "Adding."
    [selection] = tool_llm.get_tool_calls_from_response(responses[-1])
    assert (selection.tool_name, selection.tool_kwargs) == ("add", {"a": 2, "b": 3})
    scripted("No call here.")
    plain = tool_llm.chat_with_tools([ADD], user_msg="Thanks!")
    assert tool_llm.get_tool_calls_from_response(plain, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="expected a tool call"):
        tool_llm.get_tool_calls_from_response(plain)


def test_tool_result_is_rendered_and_the_call_remembered_once(tool_llm, scripted):
    prompts = scripted(ADD_CALL, "The answer is 5.")
    history = [ChatMessage(role="system", content="You add numbers."), ChatMessage(role="user", content="2 + 3?")]
    call = tool_llm.chat_with_tools([ADD], chat_history=history, tool_required=True)
    [selection] = tool_llm.get_tool_calls_from_response(call)
    result = ChatMessage(role="tool", content="5", additional_kwargs={"tool_call_id": selection.tool_id})
    answer = tool_llm.chat_with_tools([ADD], chat_history=[*history, call.message, result])
    assert answer.message.content == "The answer is 5." and "tool_calls" not in answer.message.additional_kwargs
    assert "<tool_response>\n5\n</tool_response>" in prompts[-1]
    assert prompts[-1].count('"arguments": {"a": 2, "b": 3}') == 1  # the remembered call, once
    assert tool_llm.engine.stats("calc").turns_seen == 4  # user, call, result, answer
    window = TemploraMemory.from_defaults(tool_llm, agent_id="calc").get()
    assert window[-3].additional_kwargs == call.message.additional_kwargs  # the call reads back as it was given
    assert window[-2].additional_kwargs == {"tool_call_id": selection.tool_id}


def test_predict_and_call_runs_the_tool(tool_llm, scripted):
    scripted(ADD_CALL)
    response = tool_llm.predict_and_call([ADD], user_msg="What is 2 + 3?")
    assert response.response == "5" and response.sources[0].tool_name == "add"


async def test_function_agent_loop_writes_each_turn_once(tool_llm, scripted):
    prompts = scripted(ADD_CALL, "The answer is 5.")
    agent = FunctionAgent(tools=[ADD], llm=tool_llm, system_prompt="You add numbers.")
    assert str(await agent.run("What is 2 + 3?")) == "The answer is 5."
    assert "<tool_response>\n5\n</tool_response>" in prompts[-1]
    assert tool_llm.engine.stats("calc").turns_seen == 4  # the call the agent sent back was recognised


def test_structured_predict_goes_through_a_required_call(tool_llm, scripted):
    prompts = scripted('<tool_call>{"name": "Person", "arguments": {"name": "Ada", "age": 36}}</tool_call>')
    prompt = PromptTemplate("{text} Who is this?")
    assert tool_llm.structured_predict(Person, prompt, text="Ada Lovelace died at 36.") == Person(name="Ada", age=36)
    assert '"name": "Person"' in prompts[-1]
    structured = tool_llm.as_structured_llm(Person).chat([ChatMessage(role="user", content="Ada, 36.")])
    assert structured.raw == Person(name="Ada", age=36)


def test_response_format_constrains_the_reply_to_json(tool_llm):
    schema = {"type": "object", "properties": {"item": {"enum": list(PRICES)}}, "required": ["item"]}
    response = tool_llm.chat([ChatMessage(role="user", content="Pick one.")], response_format=schema, max_tokens=32)
    assert json.loads(response.message.content)["item"] in PRICES  # the random model, held to the schema


def test_unknown_tool_choice_names_the_offered_tools(tool_llm):
    with pytest.raises(InvalidInputError, match="names no bound tool; choose one of: add"):
        tool_llm.chat_with_tools([ADD], user_msg="hi", tool_choice="divide")
    with pytest.raises(InvalidInputError, match="names no bound tool"):
        tool_llm.stream_chat_with_tools([ADD], user_msg="hi", tool_choice="divide")  # before any streaming


@pytest.mark.real_model
def test_real_model_required_call_has_a_valid_enum_argument(real_tool_engine):
    llm = TemploraLLM(engine=real_tool_engine, agent_id="li-shopper", max_tokens=48)
    try:
        response = llm.chat_with_tools([MARKET_PRICE], user_msg="How much is milk today?", tool_required=True)
        [selection] = llm.get_tool_calls_from_response(response)
        assert selection.tool_name == "market_price" and selection.tool_kwargs["item"] in PRICES
        assert response.additional_kwargs["invalid_tool_calls"] == []
    finally:
        real_tool_engine.forget("li-shopper")
