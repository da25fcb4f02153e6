"""No setting is silently ignored: every constructor and call honours an option, maps its alias, or refuses it."""

from __future__ import annotations

import pytest

import templora_memory.chat_model as chat_model_module
from templora_memory import ConfigError, InvalidInputError, ParametricMemory, TempLoraConfig


@pytest.fixture
def built(monkeypatch):
    """Constructors build no model here: the engine they would build is recorded instead."""
    calls = []

    def engine_factory(model=None, config=None, **options):
        calls.append({"model": model, "config": config, **options})
        return object()

    monkeypatch.setattr(chat_model_module, "MemoryEngine", engine_factory)
    return calls


def test_config_fields_at_the_top_level_go_into_the_config(built):
    memory = ParametricMemory(window_tokens=2048, chunk_tokens=256, store="somewhere")
    config = built[0]["config"]
    assert (config.window_tokens, config.chunk_tokens, built[0]["store"]) == (2048, 256, "somewhere")
    assert memory.config == config
    merged = ParametricMemory(config=TempLoraConfig(lora_rank=4), window_tokens=2048).config
    assert (merged.lora_rank, merged.window_tokens) == (4, 2048)


def test_aliases_from_chatollama_and_openai(built):
    assert ParametricMemory(num_predict=8).max_tokens == 8
    assert ParametricMemory(max_completion_tokens=9).max_tokens == 9
    assert ParametricMemory(repeat_penalty=1.3).repetition_penalty == 1.3
    with pytest.raises(InvalidInputError, match="'max_tokens' twice"):
        ParametricMemory(num_predict=8, max_tokens=9)


def test_unknown_constructor_option_names_the_accepted_ones(built):
    with pytest.raises(InvalidInputError, match="does not take 'num_ctx'.*max_tokens.*num_predict → max_tokens"):
        ParametricMemory(num_ctx=4096)
    with pytest.raises(ConfigError, match="window_tokens"):
        ParametricMemory(window_tokens=1)  # a config field at the top level is validated like one


def test_a_shared_engine_refuses_options_it_would_ignore(make_engine):
    engine = make_engine()
    with pytest.raises(ConfigError, match="store.*pass them to MemoryEngine"):
        ParametricMemory(engine=engine, store="elsewhere")
    with pytest.raises(ConfigError, match="config"):
        ParametricMemory(engine=engine, window_tokens=2048)
    assert ParametricMemory(engine=engine, config=engine.config).config is engine.config


def test_call_options_are_honoured_or_refused(make_engine, scripted_model):
    memory = ParametricMemory(engine=make_engine(), num_predict=5)
    scripted_model.play(memory.engine.tokenizer, "Hello STOP world")
    memory.invoke("hi")
    memory.invoke("hi again", num_predict=3, seed=7, top_p=0.5, temperature=0.7)
    first, second = scripted_model.samplings
    assert first.max_new_tokens == 5
    assert (second.max_new_tokens, second.seed, second.top_p, second.temperature) == (3, 7, 0.5, 0.7)
    assert memory.invoke("and again", stop_sequences=["STOP"]).content.strip() == "Hello"
    with pytest.raises(InvalidInputError, match="does not take 'num_ctx'.*accepts: max_tokens"):
        memory.invoke("hi", num_ctx=4096)


def test_llamaindex_takes_store_context_window_and_the_shared_sampling(monkeypatch, make_engine, scripted_model):
    llms = pytest.importorskip("templora_memory.integrations.llamaindex.llms")
    from llama_index.core.base.llms.types import ChatMessage

    built = []
    monkeypatch.setattr(llms, "MemoryEngine", lambda model, config, **options: built.append((config, options)))
    llms.TemploraLLM(store="npc-memories", context_window=2048, max_resident=4)
    config, options = built[0]
    assert (config.window_tokens, options) == (2048, {"store": "npc-memories", "max_resident": 4})
    with pytest.raises(InvalidInputError, match="does not take 'num_ctx'.*context_window|does not take 'num_ctx'"):
        llms.TemploraLLM(num_ctx=4096)

    llm = llms.TemploraLLM(engine=make_engine(), top_p=0.5, seed=3, stop=["STOP"])
    scripted_model.play(llm.engine.tokenizer, "Hello STOP world")
    reply = llm.chat([ChatMessage(role="user", content="hi")], temperature=0.7, num_predict=4)
    sampling = scripted_model.samplings[-1]
    assert (sampling.top_p, sampling.seed, sampling.temperature, sampling.max_new_tokens) == (0.5, 3, 0.7, 4)
    assert reply.message.content.strip() == "Hello"
    with pytest.raises(InvalidInputError, match="TemploraLLM.chat does not take 'bogus'"):
        llm.chat([ChatMessage(role="user", content="hi")], bogus=1)
