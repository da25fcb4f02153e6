"""Tool calls and structured output never vanish at a small max_tokens: the call's markup is not counted, and a call
that still does not fit is an error naming max_tokens, in Python, LangChain, LlamaIndex and over HTTP."""

from __future__ import annotations

import itertools
import json

import pytest
from pydantic import BaseModel

from templora_memory import InvalidInputError, ParametricMemory
from templora_memory.budget import markup_tokens
from templora_memory.errors import ReplyCutOffError
from templora_memory.generation import Sampling
from templora_memory.offer import ToolOffer

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
ADD_CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'


@pytest.fixture
def play(monkeypatch, tool_memory):
    """The tool model generates the given text, cut off at the call's token budget as a real model's would be."""

    def use(text: str) -> None:
        ids = tool_memory.engine.encode(text)

        def generate(model, prompt, sampling, *_, **__):
            yield from itertools.islice(ids, sampling.max_new_tokens)

        monkeypatch.setattr("templora_memory.reply_batch.ReplyBatch.tokens", staticmethod(generate))

    return use


def test_the_scripted_call_would_not_fit_in_32_tokens_with_its_markup(tool_memory):
    engine = tool_memory.engine
    markup = markup_tokens(ToolOffer([ADD]), engine.encode)
    assert len(engine.encode(ADD_CALL)) > 32 >= len(engine.encode(ADD_CALL)) - markup


def test_python_engine_call_at_max_tokens_32(tool_memory, play):
    engine = tool_memory.engine
    play(ADD_CALL)
    offer = ToolOffer.of([ADD], "required", chat_template=engine.tokenizer.chat_template)
    reply = engine.respond("calc", [{"role": "user", "content": "2 + 3?"}], Sampling(32), offer=offer).result()
    assert reply.tool_calls[0]["function"] == {"name": "add", "arguments": {"a": 2, "b": 3}}
    with pytest.raises(ReplyCutOffError, match=r"max_tokens=4 cut the call of 'add' off.*raise max_tokens above 4"):
        engine.respond("calc", [{"role": "user", "content": "again?"}], Sampling(4), offer=offer).result()
    assert engine.window("calc")[-1]["role"] == "user"  # the cut-off call was not remembered


def test_langchain_call_at_max_tokens_32(tool_memory, play):
    play(ADD_CALL)
    for choice in ("any", "auto"):
        reply = tool_memory.bind_tools([ADD], tool_choice=choice).invoke("2 + 3?", max_tokens=32, agent_id=choice)
        assert reply.tool_calls[0]["args"] == {"a": 2, "b": 3} and not reply.invalid_tool_calls
    with pytest.raises(InvalidInputError, match="max_tokens=3 cut the call"):
        tool_memory.bind_tools([ADD], tool_choice="auto").invoke("2 + 3?", max_tokens=3)


def test_langchain_json_reply_cut_off_names_max_tokens(tool_memory, play):
    class Sum(BaseModel):
        total: int

    play('{"total": 5}')
    structured = tool_memory.with_structured_output(Sum, method="json_schema")
    assert structured.invoke("2 + 3?", max_tokens=32) == Sum(total=5)
    with pytest.raises(ReplyCutOffError, match="max_tokens=2 ended the reply.*JSON value was complete"):
        structured.invoke("2 + 3?", max_tokens=2)


def test_llamaindex_call_at_max_tokens_32(tool_memory, play):
    llms = pytest.importorskip("templora_memory.integrations.llamaindex.llms")
    llm = llms.TemploraLLM(engine=tool_memory.engine, agent_id="calc", max_tokens=32)
    play(ADD_CALL)
    response = llm.chat_with_tools([_llamaindex_tool()], user_msg="What is 2 + 3?", tool_required=True)
    [selection] = llm.get_tool_calls_from_response(response)
    assert selection.tool_kwargs == {"a": 2, "b": 3}
    with pytest.raises(ReplyCutOffError, match="max_tokens=3"):
        llm.chat_with_tools([_llamaindex_tool()], user_msg="What is 2 + 3?", tool_required=True, max_tokens=3)


def test_http_call_at_max_tokens_32(tool_memory, play, start_server):
    httpx = pytest.importorskip("httpx")
    server = start_server(tool_memory.engine)
    play(ADD_CALL)
    body = {"messages": [{"role": "user", "content": "2 + 3?"}], "tools": [ADD], "tool_choice": "required"}
    headers = {"x-agent-id": "calc"}
    ok = httpx.post(
        f"{server.url}/v1/chat/completions", json={**body, "max_tokens": 32}, headers=headers, timeout=60
    ).json()
    assert ok["choices"][0]["finish_reason"] == "tool_calls"
    assert json.loads(ok["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]) == {"a": 2, "b": 3}
    cut = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "max_tokens": 4}, headers=headers, timeout=60)
    assert cut.status_code == 400 and cut.json()["error"]["param"] == "max_tokens", cut.text
    assert "max_tokens=4 cut the call of 'add' off" in cut.json()["error"]["message"]
    streamed = httpx.post(  # the call is held back, so the error comes before any event is sent
        f"{server.url}/v1/chat/completions", json={**body, "max_tokens": 4, "stream": True}, headers=headers, timeout=60
    )
    assert streamed.status_code == 400 and "max_tokens=4 cut the call" in streamed.json()["error"]["message"]


@pytest.mark.real_model
def test_real_model_langchain_call_at_max_tokens_32(real_tool_engine):
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return "sunny"

    memory = ParametricMemory(engine=real_tool_engine)
    reply = memory.bind_tools([get_weather], tool_choice="any").invoke(
        "What is the weather in Paris?", agent_id="weather-32", max_tokens=32
    )
    assert reply.tool_calls[0]["name"] == "get_weather" and reply.tool_calls[0]["args"]["city"]
    real_tool_engine.forget("weather-32")


def _llamaindex_tool():
    from llama_index.core.tools import FunctionTool

    return FunctionTool.from_defaults(fn=lambda a, b: a + b, name="add", description="Add two integers.")


def test_structured_output_defaults_to_json_schema_as_langchain_ollama(tool_memory, play):
    class Sum(BaseModel):
        total: int

    play('{"total": 5}')  # a JSON value, no tool-call markup: the default method is json_schema
    assert tool_memory.with_structured_output(Sum).invoke("2 + 3?", max_tokens=32) == Sum(total=5)
