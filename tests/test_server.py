"""The OpenAI-compatible server, on the tiny model, through clients no one here wrote: `openai`, LangChain's
`ChatOpenAI` and plain `httpx`. Replies are scripted where they must be exact (`scripted_model`)."""

from __future__ import annotations

import json
import threading
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from templora_memory.cli import build_parser  # noqa: E402
from templora_memory.message import fingerprint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
MARKET_PRICE = {
    "type": "function",
    "function": {
        "name": "market_price",
        "description": "Look up today's market price of an item.",
        "parameters": {
            "type": "object",
            "properties": {"item": {"type": "string", "enum": ["bread", "milk", "eggs"]}},
            "required": ["item"],
        },
    },
}
CALL_TEXT = '<tool_call>\n{"name": "market_price", "arguments": {"item": "milk"}}\n</tool_call>'


def client(server, agent_id: str, **options) -> openai.OpenAI:
    """The official client, one agent per client (the X-Agent-Id header)."""
    headers = {"X-Agent-Id": agent_id}
    return openai.OpenAI(
        base_url=f"{server.url}/v1", api_key="unused", default_headers=headers, max_retries=0, **options
    )


def post(server, body, agent_id: str | None = "npc", **options) -> httpx.Response:
    """A raw POST to /v1/chat/completions (a dict as JSON, bytes as they are)."""
    headers = {"content-type": "application/json", **({"x-agent-id": agent_id} if agent_id is not None else {})}
    headers.update(options.pop("headers", {}))
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    options.setdefault("timeout", 60)
    return httpx.post(f"{server.url}/v1/chat/completions", content=content, headers=headers, **options)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def wait_until(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def in_queue(server) -> int:
    """Requests waiting or running, as /health reports them."""
    queue = httpx.get(f"{server.url}/health").json()["queue"]
    return queue["running"] + queue["waiting"]


def idle(server) -> bool:
    return in_queue(server) == 0


@pytest.fixture
def gate(scripted_model, monkeypatch):
    """Generation that waits for `gate.set()` (if cleared) and then plays the script `gate.delay` s per token."""
    opened = threading.Event()
    opened.set()
    opened.delay = 0.0

    def generate(*args, **kwargs):
        assert opened.wait(30)
        for token in scripted_model.generate(*args, **kwargs):
            time.sleep(opened.delay)
            yield token

    monkeypatch.setattr("templora_memory.reply_batch.ReplyBatch.tokens", staticmethod(generate))
    return opened


# ----- the official openai client -------------------------------------------------------------


def test_openai_client_replies_and_the_reply_is_remembered(make_engine, scripted_model, start_server):
    engine = make_engine()
    server = start_server(engine)
    prompts = scripted_model.play(engine.tokenizer, "Welcome to the Sleeping Fox.")
    reply = client(server, "innkeeper").chat.completions.create(
        model="anything", messages=[{"role": "system", "content": "You keep an inn."}, user("Hello!")], max_tokens=64
    )
    assert reply.choices[0].message.content == "Welcome to the Sleeping Fox."
    assert reply.choices[0].finish_reason == "stop" and reply.model == "tiny-llama"
    assert reply.usage.prompt_tokens == engine.stats("innkeeper").prompt_tokens == len(engine.encode(prompts[-1]))
    assert reply.usage.completion_tokens == len(engine.encode("Welcome to the Sleeping Fox."))
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert engine.window("innkeeper") == [
        user("Hello!"),
        {"role": "assistant", "content": reply.choices[0].message.content},
    ]


def test_openai_client_streams_with_usage_last(make_engine, scripted_model, start_server):
    engine = make_engine()
    server = start_server(engine)
    scripted_model.play(engine.tokenizer, "The cellar door is locked.")
    stream = client(server, "innkeeper").chat.completions.create(
        model="m",
        messages=[user("Is the cellar open?")],
        max_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The cellar door is locked." and len([c for c in chunks if c.choices]) > 2  # piece by piece
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(engine.encode(text))
    assert all(c.usage is None for c in chunks[:-1])
    assert engine.stats("innkeeper").turns_seen == 2


def test_the_whole_history_or_only_the_new_turn_writes_each_turn_once(make_engine, scripted_model, start_server):
    engine = make_engine()
    server = start_server(engine)
    prompts = scripted_model.play(engine.tokenizer, "Aye.", "Friday it is.", "Stew.")
    npc = client(server, "cook")
    history = [{"role": "system", "content": "You are the cook."}, user("We dock at Vell.")]
    first = npc.chat.completions.create(model="m", messages=history).choices[0].message
    history += [{"role": "assistant", "content": first.content}, user("On Friday.")]
    npc.chat.completions.create(model="m", messages=history)  # the whole history again
    assert engine.stats("cook").turns_seen == 4
    npc.chat.completions.create(model="m", messages=[user("Dinner?")])  # only the new turn
    assert engine.stats("cook").turns_seen == 6
    assert "We dock at Vell." in prompts[-1] and "You are the cook." in prompts[-1]  # the window supplied the rest


def test_a_required_tool_call_comes_back_as_openai_tool_calls(tool_memory, scripted_model, start_server):
    engine = tool_memory.engine
    server = start_server(engine)
    scripted_model.play(engine.tokenizer, CALL_TEXT, "Milk is 1.10 EUR.")
    npc = client(server, "shopper")
    ask = [user("How much is milk?")]
    reply = npc.chat.completions.create(model="m", messages=ask, tools=[MARKET_PRICE], tool_choice="required")
    (call,) = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and reply.choices[0].message.content is None
    assert call.function.name == "market_price" and json.loads(call.function.arguments) == {"item": "milk"}
    result = {"role": "tool", "tool_call_id": call.id, "content": "1.10 EUR"}
    history = [*ask, reply.choices[0].message.model_dump(exclude_none=True), result]
    answer = npc.chat.completions.create(model="m", messages=history, tools=[MARKET_PRICE], max_tokens=64)
    assert answer.choices[0].message.content == "Milk is 1.10 EUR." and answer.choices[0].finish_reason == "stop"
    assert engine.stats("shopper").turns_seen == 4  # the call the client sent back was recognised, not written twice
    assert engine.window("shopper")[1]["tool_calls"][0]["function"]["arguments"] == {"item": "milk"}


def test_a_streamed_tool_call_arrives_in_one_delta(tool_memory, scripted_model, start_server):
    server = start_server(tool_memory.engine)
    scripted_model.play(tool_memory.engine.tokenizer, CALL_TEXT)
    choice = {"type": "function", "function": {"name": "market_price"}}
    stream = client(server, "shopper").chat.completions.create(
        model="m", messages=[user("Milk?")], tools=[MARKET_PRICE], tool_choice=choice, stream=True
    )
    chunks = [c for c in stream if c.choices]
    calls = [call for c in chunks for call in c.choices[0].delta.tool_calls or []]
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [("market_price", {"item": "milk"})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_response_format_json_schema_reaches_the_reply(make_engine, scripted_model, start_server):
    engine = make_engine()
    server = start_server(engine)
    scripted_model.play(engine.tokenizer, '{"name": "Ada", "age": 36}')
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    reply = client(server, "clerk").chat.completions.create(
        model="m",
        messages=[user("Ada died at 36.")],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
    )
    assert json.loads(reply.choices[0].message.content) == {"name": "Ada", "age": 36}


def test_the_readme_python_snippet_runs_against_the_server(make_engine, scripted_model, start_server, capsys):
    from tests.test_readme import readme_snippets

    engine = make_engine(window_tokens=400)
    server = start_server(engine)
    scripted_model.play(engine.tokenizer, "Shields, aye.", "You are Ivo.")
    snippet, chat_openai = readme_snippets("Serve over HTTP (OpenAI-compatible)")
    exec(snippet.replace("http://127.0.0.1:8000", server.url), {})
    assert capsys.readouterr().out == "Shields, aye.\nYou are Ivo."
    assert engine.stats("blacksmith").turns_seen == 4
    scripted_model.play(engine.tokenizer, "The mine reopened.")
    exec(chat_openai.replace("http://127.0.0.1:8000", server.url), {})  # LangChain's ChatOpenAI, as written
    assert capsys.readouterr().out == "The mine reopened.\n" and engine.stats("blacksmith").turns_seen == 6


# ----- LangChain's ChatOpenAI ----------------------------------------------------------------------


def test_langchain_chat_openai_chain_remembers_a_fact_for_the_next_request(make_engine, scripted_model, start_server):
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    engine = make_engine()
    server = start_server(engine)
    prompts = scripted_model.play(engine.tokenizer, "Noted.", "Fish stew.")
    llm = langchain_openai.ChatOpenAI(
        base_url=f"{server.url}/v1", api_key="unused", model="tiny", default_headers={"X-Agent-Id": "cook"}
    )
    template = [("system", "You are {name}, the ship's cook."), ("human", "{line}")]
    chain = ChatPromptTemplate.from_messages(template) | llm | StrOutputParser()
    assert chain.invoke({"name": "Olga", "line": "We dock at Port Vell on Friday."}) == "Noted."
    assert engine.stats("cook").turns_seen == 2  # the fact is in the agent's memory...
    assert chain.invoke({"name": "Olga", "line": "What is for dinner?"}) == "Fish stew."
    assert engine.stats("cook").turns_seen == 4
    assert "Port Vell" in prompts[-1]  # ...and reached the next request, which did not send it


# ----- bad input ---------------------------------------------------------------------------------

GOOD = {"model": "m", "messages": [user("Hello")]}
BAD = {
    "malformed JSON": (b'{"messages": [', {}, 400, None),
    "messages not a list": ({"messages": "Hello"}, {}, 400, "messages"),
    "max_tokens a string": ({**GOOD, "max_tokens": "5"}, {}, 400, "max_tokens"),
    "stream a string": ({**GOOD, "stream": "yes"}, {}, 400, "stream"),
    "temperature out of range": ({**GOOD, "temperature": 5.0}, {}, 400, "temperature"),
    "unknown role": ({"messages": [{"role": "wizard", "content": "x"}]}, {}, 400, "messages.[0].role"),
    "content a number": ({"messages": [{"role": "user", "content": 7}]}, {}, 400, "messages.[0].content"),
    "empty messages": ({"messages": []}, {}, 400, "messages"),
    "a JSON list": (b"[1, 2]", {}, 400, None),
    "tool result without id": ({"messages": [{"role": "tool", "content": "1"}]}, {}, 400, "messages.[0]"),
    "two choices": ({**GOOD, "n": 2}, {}, 400, "n"),
    "five stop strings": ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, {}, 400, "stop"),
    "max_tokens past the context": ({**GOOD, "max_tokens": 10**6}, {}, 400, "max_tokens"),
    "over-long message": ({"messages": [user("the mill " * 200)]}, {}, 400, None),
    "agent id ../x": (GOOD, {"agent_id": "../x"}, 400, "X-Agent-Id"),
    "agent id with NUL (header)": (GOOD, {"agent_id": "npc%00"}, 400, "X-Agent-Id"),
    "agent id with NUL (user)": ({**GOOD, "user": "npc\u0000"}, {"agent_id": None}, 400, "user"),
    "agent id of 10,000 characters": (GOOD, {"agent_id": "n" * 10_000}, 400, "X-Agent-Id"),
    "no agent id": (GOOD, {"agent_id": None}, 400, "X-Agent-Id"),
    "oversized body": ({**GOOD, "padding": "x" * 70_000}, {}, 413, None),
    "tool_choice names no tool": (
        {**GOOD, "tools": [MARKET_PRICE], "tool_choice": {"type": "function", "function": {"name": "steal"}}},
        {},
        400,
        "tool_choice",
    ),
    "tool_choice without tools": ({**GOOD, "tool_choice": "required"}, {}, 400, "tool_choice"),
    "tool call arguments not JSON": (
        {
            "messages": [
                {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{"}}]}
            ]
        },
        {},
        400,
        "messages.[0].tool_calls.[0].function.arguments",
    ),
}


def test_bad_input_gets_its_4xx_in_openai_shape_and_the_server_keeps_serving(make_engine, scripted_model, start_server):
    engine = make_engine()
    server = start_server(engine, max_body_bytes=64_000)
    scripted_model.play(engine.tokenizer, "Still here.")
    for name, (body, options, status, param) in BAD.items():
        response = post(server, body, **options)
        assert response.status_code == status, (name, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error", name
        assert error["param"] == param and error["message"], (name, error)
        assert "Traceback" not in response.text and 'File "' not in response.text
    assert engine.agent("npc").stats.turns_seen == 0  # no refused request wrote anything
    assert post(server, GOOD).json()["choices"][0]["message"]["content"] == "Still here."
    assert engine.stats("npc").turns_seen == 2


def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives(make_engine, start_server):
    server = start_server(make_engine(), max_body_bytes=10_000)
    pieces = (b'{"messages": [' + b" " * 4_000 for _ in range(4))  # no Content-Length: sent in chunks
    response = httpx.post(f"{server.url}/v1/chat/completions", content=pieces, headers={"x-agent-id": "npc"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


def test_the_api_key_is_required_when_set(make_engine, scripted_model, start_server):
    engine = make_engine()
    server = start_server(engine, api_key="s3cret")
    scripted_model.play(engine.tokenizer, "Hello, friend.")
    assert post(server, GOOD).status_code == 401
    wrong = post(server, GOOD, headers={"authorization": "Bearer guess"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.url}/v1/agents/npc").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        client(server, "npc").chat.completions.create(model="m", messages=[user("Hi")])
    assert engine.agent("npc").stats.turns_seen == 0
    npc = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret", default_headers={"X-Agent-Id": "npc"})
    assert npc.chat.completions.create(model="m", messages=[user("Hi")]).choices[0].message.content == "Hello, friend."
    assert httpx.get(f"{server.url}/health").status_code == 200  # health needs no key
    assert npc.models.list().data[0].id == "tiny-llama"


def test_the_official_client_raises_its_own_errors(tool_memory, start_server):
    server = start_server(tool_memory.engine)
    npc = client(server, "npc")
    choice = {"type": "function", "function": {"name": "steal"}}
    with pytest.raises(openai.BadRequestError, match="names no bound tool") as refused:
        npc.chat.completions.create(model="m", messages=[user("Hi")], tools=[MARKET_PRICE], tool_choice=choice)
    assert refused.value.body["param"] == "tool_choice"
    assert npc.models.retrieve("gpt-4o").id == "tiny-tools"  # any name is the one model, as chat accepts any


# ----- concurrency --------------------------------------------------------------------------------


def test_a_full_queue_answers_429_with_retry_after(make_engine, scripted_model, gate, start_server):
    engine = make_engine()
    server = start_server(engine, workers=1, max_queue=2)
    scripted_model.play(engine.tokenizer, "Done.")
    gate.clear()
    results = []
    threads = [threading.Thread(target=lambda a=a: results.append(post(server, GOOD, a))) for a in ("a", "b")]
    for thread in threads:
        thread.start()
    wait_until(lambda: in_queue(server) == 2)
    refused = post(server, GOOD, "c")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"
    gate.set()
    for thread in threads:
        thread.join(30)
    assert sorted(r.status_code for r in results) == [200, 200]
    assert engine.agent("c").stats.turns_seen == 0 and post(server, GOOD, "c").status_code == 200


def test_calls_for_one_agent_run_in_order_and_other_agents_take_turns(make_engine, scripted_model, gate, start_server):
    engine = make_engine()
    server = start_server(engine, workers=1)
    prompts = scripted_model.play(engine.tokenizer, "Ok.")
    gate.clear()
    sent = [("a", "first of a"), ("a", "second of a"), ("a", "third of a"), ("b", "only b")]
    threads = []
    for queued, (agent_id, line) in enumerate(sent, 1):
        body = {"messages": [user(line)]}
        threads.append(threading.Thread(target=post, args=(server, body, agent_id)))
        threads[-1].start()  # each request is in the queue before the next is sent
        wait_until(lambda n=queued: in_queue(server) == n)
    gate.set()
    for thread in threads:
        thread.join(30)
    served = [
        line for p in prompts for _, line in sent if p.rstrip().endswith(f"{line}<|im_end|>\n<|im_start|>assistant")
    ]
    assert served == ["first of a", "only b", "second of a", "third of a"], prompts  # b did not wait behind all of a
    assert [m["content"] for m in engine.window("a") if m["role"] == "user"] == [
        "first of a",
        "second of a",
        "third of a",
    ]


def test_concurrent_clients_over_several_agents_lose_and_duplicate_no_turn(make_engine, scripted_model, start_server):
    engine = make_engine()
    server = start_server(engine, workers=2)
    scripted_model.play(engine.tokenizer, "Yes.", "No.", "Maybe.")
    sent = [(f"agent-{i % 3}", f"line {i}") for i in range(12)]
    replies = {}

    def talk(agent_id: str, line: str) -> None:
        replies[line] = post(server, {"messages": [user(line)]}, agent_id).json()["choices"][0]["message"]["content"]

    threads = [threading.Thread(target=talk, args=pair) for pair in sent]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for agent_id in ("agent-0", "agent-1", "agent-2"):
        kept = engine.agent(agent_id).fingerprints
        lines = [line for a, line in sent if a == agent_id]
        expected = {fingerprint(user(line)) for line in lines}
        expected |= {fingerprint({"role": "assistant", "content": replies[line]}) for line in lines}
        assert len(kept) == 8 and set(kept) <= expected  # 4 exchanges, none lost or written twice
        assert {fingerprint(user(line)) for line in lines} <= set(kept)


def test_a_client_leaving_mid_stream_stops_the_reply_and_it_is_not_remembered(
    make_engine, scripted_model, gate, start_server
):
    engine = make_engine(window_tokens=400)
    server = start_server(engine)
    scripted_model.play(engine.tokenizer, "a long story " * 30)
    gate.delay = 0.05
    body = {"messages": [user("Tell me a story.")], "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers={"x-agent-id": "bard"}) as stream:
        first = next(stream.iter_lines())
        assert first.startswith("data: ")
    wait_until(lambda: idle(server), 10)  # stopped long before the 90 tokens were generated
    assert engine.window("bard") == [user("Tell me a story.")]  # the new turn stays; the cut reply does not
    gate.delay = 0.0
    scripted_model.play(engine.tokenizer, "Once upon a time.")
    assert post(server, {"messages": [user("A short one, then.")]}, "bard").status_code == 200  # the agent is free
    assert engine.stats("bard").turns_seen == 3


def test_a_client_leaving_before_a_plain_reply_stops_it_too(make_engine, scripted_model, gate, start_server):
    engine = make_engine(window_tokens=400)
    server = start_server(engine)
    scripted_model.play(engine.tokenizer, "a long story " * 30)
    gate.delay = 0.05
    with pytest.raises(httpx.ReadTimeout):
        post(server, {"messages": [user("Tell me a story.")]}, "bard", timeout=0.5)
    wait_until(lambda: idle(server), 10)
    assert engine.window("bard") == [user("Tell me a story.")]


def test_a_request_past_its_timeout_gets_504_and_its_reply_is_not_remembered(
    make_engine, scripted_model, gate, start_server
):
    engine = make_engine(window_tokens=400)
    server = start_server(engine, request_timeout=1.0)  # the script takes ~4.5 s
    scripted_model.play(engine.tokenizer, "a long story " * 30)
    gate.delay = 0.05
    response = post(server, {"messages": [user("Tell me a story.")]}, "bard")
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
    wait_until(lambda: idle(server), 10)
    assert engine.window("bard") == [user("Tell me a story.")]
    streamed = post(server, {"messages": [user("Go on.")], "stream": True}, "bard")
    assert streamed.status_code == 200 and '"code": "timeout"' in streamed.text and streamed.text.endswith("[DONE]\n\n")


# ----- memory routes, logs, shutdown, command line --------------------------------------------------


def test_memory_routes_stats_absorb_forget(make_engine, scripted_model, start_server):
    engine = make_engine()
    server = start_server(engine)
    scripted_model.play(engine.tokenizer, "Hm.")
    agents = f"{server.url}/v1/agents"
    post(server, GOOD, "sage")
    stats = httpx.get(f"{agents}/sage").json()
    assert stats["id"] == "sage" and stats["turns_seen"] == 2 and stats["resident"] and not stats["absorbing"]
    accepted = httpx.post(f"{agents}/sage/absorb", json={"text": "The old mill burned in the winter storm. " * 20})
    assert accepted.status_code == 202 and accepted.json()["status"] == "queued"
    wait_until(lambda: not httpx.get(f"{agents}/sage").json()["absorbing"])
    stats = httpx.get(f"{agents}/sage").json()
    assert stats["chunks_trained"] >= 1 and stats["tokens_written"] > 0 and stats["absorb_error"] is None
    assert httpx.post(f"{agents}/sage/absorb", json={"text": "   "}).json()["error"]["param"] == "text"
    assert [a["id"] for a in httpx.get(agents).json()["data"]] == ["sage"]
    assert httpx.delete(f"{agents}/sage").json() == {"id": "sage", "object": "agent.deleted", "deleted": True}
    gone = httpx.get(f"{agents}/sage")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "agent_not_found" and engine.agent_ids() == []
    assert httpx.delete(f"{agents}/sage").status_code == 404  # deleting again: no agent, not "deleted: false"
    assert httpx.get(f"{agents}/typo").json()["error"]["param"] == "agent_id"
    assert httpx.get(f"{agents}/..%2Fx").status_code == 404  # a path separator never reaches an agent route
    assert httpx.get(f"{agents}/.hidden").json()["error"]["code"] == "invalid_agent_id"


def test_export_and_import_move_an_agent_between_servers(make_engine, scripted_model, start_server, tmp_path):
    source, target = make_engine(store=tmp_path / "a"), make_engine(store=tmp_path / "b")
    first, second = start_server(source), start_server(target)
    scripted_model.play(source.tokenizer, "Aye.")
    for line in ("The well is dry.", "The key is under the mat.", "Bring rope."):
        post(first, {"messages": [user(line)]}, "guard")
    archive = httpx.get(f"{first.url}/v1/agents/guard/export")
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/gzip"
    imported = httpx.post(f"{second.url}/v1/agents/guard-copy/import", content=archive.content)
    assert imported.status_code == 201, imported.text
    assert imported.json()["turns_seen"] == 6 == source.stats("guard").turns_seen
    assert target.window("guard-copy") == source.window("guard")
    again = httpx.post(f"{second.url}/v1/agents/guard-copy/import", content=archive.content)
    assert again.status_code == 409
    garbage = httpx.post(f"{second.url}/v1/agents/other/import", content=b"not a tar file")
    assert garbage.status_code == 400 and "export" in garbage.json()["error"]["message"]
    assert httpx.get(f"{first.url}/v1/agents/nobody/export").status_code == 404


def test_export_without_a_store_says_how_to_get_one(make_engine, scripted_model, start_server):
    engine = make_engine()
    server = start_server(engine)
    scripted_model.play(engine.tokenizer, "Hi.")
    post(server, GOOD, "npc")
    refused = httpx.get(f"{server.url}/v1/agents/npc/export")
    assert refused.status_code == 400 and "store" in refused.json()["error"]["message"]


def test_logs_never_show_message_contents(make_engine, scripted_model, start_server, caplog):
    engine = make_engine()
    server = start_server(engine, log_level="info")
    scripted_model.play(engine.tokenizer, "The answer is swordfish.")
    with caplog.at_level("INFO"):
        post(server, {"messages": [user("The password is bluebell.")]}, "npc")
        post(server, {"messages": [user("Say it again: bluebell.")], "stream": True}, "npc")
    logged = caplog.text
    assert "agent='npc'" in logged and "completion_tokens=" in logged
    assert "bluebell" not in logged and "swordfish" not in logged


def test_shutdown_commits_every_resident_agent_and_gives_its_lease_back(make_engine, scripted_model, tmp_path):
    from templora_memory import AgentStore
    from templora_memory.server import BackgroundServer

    engine = make_engine(store=tmp_path / "store")
    scripted_model.play(engine.tokenizer, "Bye.")
    committed, commit = [], engine.store.commit

    def recorded(key, record, weights, purge=False):
        committed.append(record["agent_id"])
        commit(key, record, weights, purge)

    engine.store.commit = recorded
    with BackgroundServer(engine) as server:
        for agent_id in ("a", "b"):
            post(server, GOOD, agent_id)
        committed.clear()
    assert sorted(committed) == ["a", "b"] and engine.resident_ids() == []
    successor = make_engine(store=AgentStore(tmp_path / "store", lease_wait=0.5))  # no wait: the leases are free
    assert successor.window("a")[-1] == {"role": "assistant", "content": "Bye."}


def test_serve_takes_every_option(monkeypatch):
    args = build_parser().parse_args(
        [
            "serve",
            "--port",
            "9000",
            "--store",
            "npcs",
            "--max-queue",
            "8",
            "--window-tokens",
            "256",
            "--cors-origin",
            "*",
        ]
    )
    assert (args.host, args.port, args.store, args.max_queue, args.window_tokens) == ("127.0.0.1", 9000, "npcs", 8, 256)
    assert args.cors_origin == ["*"] and args.api_key is None and args.request_timeout == 300
