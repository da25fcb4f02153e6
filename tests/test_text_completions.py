"""`POST /v1/completions`: raw text completed with an agent's memory, through the official `openai` client."""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

pytestmark = pytest.mark.usefixtures("one_thread")


def _client(server, agent_id: str | None = None) -> openai.OpenAI:
    headers = {"X-Agent-Id": agent_id} if agent_id else {}
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", default_headers=headers, max_retries=0, timeout=60)


def test_a_completion_reads_the_agents_memory_and_writes_nothing(make_engine, scripted_model, start_server):
    engine = make_engine()
    server = start_server(engine)
    prompts = scripted_model.play(engine.tokenizer, "Aye.", " hollyhock.")
    bram = _client(server, "bram")
    bram.chat.completions.create(model="m", messages=[{"role": "user", "content": "The password is hollyhock."}])
    seen = engine.stats("bram").turns_seen
    done = bram.completions.create(model="m", prompt="The cellar password is", max_tokens=32)
    assert done.object == "text_completion" and done.choices[0].text == " hollyhock."
    assert done.choices[0].finish_reason == "stop" and done.usage.completion_tokens > 0
    assert prompts[-1] == "The cellar password is"  # raw text: no chat template around it
    assert engine.stats("bram").turns_seen == seen  # a completion reads memory, never writes it
    assert done.model == "tiny-llama" and bram.models.retrieve("m").id == done.model  # any name, the one model


def test_streaming_unknown_agents_and_the_base_model(make_engine, scripted_model, start_server):
    engine = make_engine()
    server = start_server(engine)
    scripted_model.play(engine.tokenizer, "Once upon a time")
    chunks = list(_client(server).completions.create(model="m", prompt="Tell me", max_tokens=32, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "Once upon a time"  # no agent named: the base model
    assert chunks[-1].choices[0].finish_reason == "stop" and engine.agent_ids() == []
    with pytest.raises(openai.NotFoundError, match="'typo' has no memory"):
        _client(server, "typo").completions.create(model="m", prompt="Hi", max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="one prompt per request"):
        _client(server).completions.create(model="m", prompt=["a", "b"], max_tokens=4)
    assert engine.agent_ids() == []  # neither request made an agent
