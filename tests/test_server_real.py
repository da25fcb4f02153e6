"""The server on the real default model (the session's engines, so the model loads once): what a game sees."""

from __future__ import annotations

import json

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from tests.test_server import MARKET_PRICE, client, user  # noqa: E402

pytestmark = pytest.mark.real_model


@pytest.fixture
def forgetting():
    """Agents the test names are forgotten afterwards on the shared engine (state isolated per test)."""
    used = []
    yield used
    for engine, agent_id in used:
        engine.forget(agent_id)


def test_a_required_call_is_valid_and_the_answer_follows_it(real_tool_engine, start_server, forgetting):
    forgetting.append((real_tool_engine, "shopper"))
    npc = client(start_server(real_tool_engine), "shopper")
    ask = [{"role": "system", "content": "You help with shopping."}, user("How much is milk today?")]
    reply = npc.chat.completions.create(
        model="m", messages=ask, tools=[MARKET_PRICE], tool_choice="required", max_tokens=48
    )
    (call,) = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and call.function.name == "market_price"
    assert json.loads(call.function.arguments)["item"] in ("bread", "milk", "eggs")  # valid under the schema
    result = {"role": "tool", "tool_call_id": call.id, "content": "1.10 EUR"}
    history = [*ask, reply.choices[0].message.model_dump(exclude_none=True), result]
    answer = npc.chat.completions.create(model="m", messages=history, tools=[MARKET_PRICE], max_tokens=6)
    assert answer.choices[0].message.content.strip() and answer.usage.completion_tokens > 0
    assert real_tool_engine.stats("shopper").turns_seen == 4  # ask, call, result, answer: each written once


def test_json_schema_replies_parse_under_the_schema(real_tool_engine, start_server, forgetting):
    forgetting.append((real_tool_engine, "clerk"))
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    reply = client(start_server(real_tool_engine), "clerk").chat.completions.create(
        model="m",
        messages=[user("Ada Lovelace died at 36. Give her name and age.")],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
        max_tokens=32,
    )
    person = json.loads(reply.choices[0].message.content)
    assert set(person) == {"name", "age"} and isinstance(person["name"], str) and isinstance(person["age"], int)


def test_a_streamed_reply_is_what_the_agent_remembers(real_engine, start_server, forgetting):
    forgetting.append((real_engine, "bram"))
    stream = client(start_server(real_engine), "bram").chat.completions.create(
        model="m",
        messages=[
            {"role": "system", "content": "You are Bram the innkeeper."},
            user("The cellar password is bluebell."),
        ],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and chunks[-1].usage.completion_tokens <= 8
    assert real_engine.window("bram")[-1] == {"role": "assistant", "content": text}
