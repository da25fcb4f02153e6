"""Temp-Lora mechanics on a tiny in-process Llama: chunks, labels, window, dedup, isolation, forget."""

from __future__ import annotations

import pytest
import torch

from templora_memory import InvalidInputError, TempLoraConfig, UnknownAgentError
from templora_memory.generation import Sampling
from templora_memory.trainer import IGNORE_INDEX, build_example, learning_rate


def _turns(n: int, start: int = 0) -> list[dict]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": f"turn {i} about the blacksmith"} for i in range(start, start + n)]


def _stream_tokens(engine, messages) -> list[int]:
    """The conversation's token stream exactly as the engine renders it turn by turn."""
    tokens, previous = [], None
    for message in messages:
        tokens.extend(engine.renderer.turn(message, previous).tokens)
        previous = message
    return tokens


def _base_state(engine) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in engine.bank.model.named_parameters() if "lora_" not in n}


def test_build_example_masks_the_training_context():
    input_ids, labels = build_example(context=list(range(100)), chunk=[7, 8, 9], train_context_tokens=4, device="cpu")
    assert input_ids.tolist() == [[96, 97, 98, 99, 7, 8, 9]]
    assert labels.tolist() == [[IGNORE_INDEX] * 4 + [7, 8, 9]]
    short_ids, short_labels = build_example(context=[1, 2], chunk=[3], train_context_tokens=4, device="cpu")
    assert short_ids.tolist() == [[1, 2, 3]] and short_labels.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 3]]


def test_learning_rate_warms_up_linearly_then_stays():
    config = TempLoraConfig(learning_rate=1.0, warmup_chunks=2, epochs=2)  # 4 warm-up steps
    assert [learning_rate(s, config) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert learning_rate(0, TempLoraConfig(learning_rate=1e-4, warmup_chunks=0)) == 1e-4


def test_chunks_are_written_at_delta_with_previous_tokens_as_input(make_engine, monkeypatch):
    engine = make_engine(chunk_tokens=32, train_context_tokens=16, window_tokens=160)
    seen = []
    real_train = __import__("templora_memory.trainer", fromlist=["train_chunk"]).train_chunk

    def spy(model, input_ids, labels, *args, **kwargs):
        seen.append((input_ids[0].tolist(), labels[0].tolist()))
        return real_train(model, input_ids, labels, *args, **kwargs)

    monkeypatch.setattr("templora_memory.trainer.train_chunk", spy)
    messages = _turns(10)
    engine.add_turns("a", messages)
    stream = _stream_tokens(engine, messages)
    stats = engine.stats("a")
    assert stats.chunks_trained == len(stream) // 32 == len(seen) >= 3
    assert stats.tokens_written == 32 * stats.chunks_trained
    assert stats.tokens_pending == len(stream) % 32
    for k, (ids, labels) in enumerate(seen):
        chunk = stream[32 * k : 32 * (k + 1)]
        prefix = stream[max(0, 32 * k - 16) : 32 * k]
        assert ids == prefix + chunk
        assert labels == [IGNORE_INDEX] * len(prefix) + chunk


def test_prompt_stays_in_window_and_unwritten_turns_stay_in_prompt(make_engine):
    engine = make_engine(chunk_tokens=32, window_tokens=96, train_context_tokens=32)
    history = []
    for i in range(12):
        history.append({"role": "user", "content": f"question {i}: what did the blacksmith sell?"})
        reply = "".join(engine.respond("a", history, Sampling(max_new_tokens=6)))
        history.append({"role": "assistant", "content": reply})
        prompt = engine.prompt_ids("a")
        state = engine.agent("a")
        in_window = sum(len(t.tokens) for t in state.turns[-len(engine.window("a")) :])
        assert len(prompt) <= 96
        assert engine.stats("a").tokens_pending <= in_window  # nothing unwritten left the prompt
    window = engine.window("a")
    assert window[-1] == history[-1] and len(window) < len(history)  # newest turns kept, oldest dropped
    assert engine.stats("a").chunks_trained >= 3


def test_a_reply_penalises_what_the_assistant_said_in_the_window_not_the_user(make_engine, scripted_model):
    engine = make_engine(chunk_tokens=32, window_tokens=96, train_context_tokens=32)
    scripted_model.play(engine.tokenizer, "The anvil costs nine.", "Nine silver.")
    history = [{"role": "user", "content": "What does the anvil cost?"}]
    history.append({"role": "assistant", "content": engine.respond("a", history, Sampling(8)).result().content})
    assert scripted_model.samplings[-1].penalised == ()  # nothing said yet; the question's words are free
    history.append({"role": "user", "content": "Again, the anvil's price?"})
    engine.respond("a", history, Sampling(8)).result()
    said = engine.renderer.turns(history)[1].tokens
    assert scripted_model.samplings[-1].penalised == said  # the assistant's turn, template tokens and all: no user's


def test_no_turn_is_written_twice_when_chains_resend_history(make_engine):
    engine = make_engine()
    history = []
    for i in range(6):
        history.append({"role": "user", "content": f"message {i}"})
        "".join(engine.respond("a", history, Sampling(max_new_tokens=4)))
        history.append({"role": "assistant", "content": engine.window("a")[-1]["content"]})
    stats = engine.stats("a")
    assert stats.turns_seen == len(history) == 12
    assert stats.tokens_written + stats.tokens_pending == len(_stream_tokens(engine, history))
    engine.add_turns("a", history)  # the whole history again: nothing new
    assert engine.stats("a") == stats
    assert engine.add_turns("a", history[-2:] + [{"role": "user", "content": "new"}]) == [
        {"role": "user", "content": "new"}
    ]


def test_agents_have_independent_adapters_and_base_weights_never_change(make_engine):
    engine = make_engine()
    base = _base_state(engine)
    engine.add_turns("a", _turns(12))
    engine.agent("b")
    assert engine.stats("a").chunks_trained >= 2
    probe = engine.tokenizer("the blacksmith sells swords")["input_ids"]
    base_lp = engine.log_likelihood(None, probe[:2], probe[2:])
    assert engine.log_likelihood("b", probe[:2], probe[2:]) == pytest.approx(base_lp, abs=1e-6)
    assert engine.log_likelihood("a", probe[:2], probe[2:]) != pytest.approx(base_lp, abs=1e-3)
    after = _base_state(engine)
    assert all(torch.equal(base[n], after[n]) for n in base)
    marker = f"lora_B.{engine.bank.slot('b')}."
    b_up_weights = [p for n, p in engine.bank.model.named_parameters() if marker in n]
    assert b_up_weights and all(not p.any() for p in b_up_weights)  # untouched: LoRA B still zero


def test_forget_destroys_the_adapter_and_frees_its_weights(make_engine):
    engine = make_engine()
    before = sum(p.numel() for p in engine.bank.model.parameters())
    engine.add_turns("a", _turns(8))
    name = engine.bank.slot("a")
    assert name in engine.bank.model.peft_config
    assert sum(p.numel() for p in engine.bank.model.parameters()) > before
    assert engine.forget("a") is True
    assert name not in engine.bank.model.peft_config
    assert sum(p.numel() for p in engine.bank.model.parameters()) == before
    assert not engine.exists("a") and engine.forget("a") is False


def test_absorb_writes_all_text_before_the_first_turn(make_engine):
    engine = make_engine(chunk_tokens=32)
    text = "Once upon a time a traveller asked the innkeeper about the old castle. " * 6
    n_tokens = len(engine.tokenizer(text, add_special_tokens=False)["input_ids"])
    stats = engine.absorb("npc", text, progress=False)
    assert stats.tokens_written == n_tokens and stats.tokens_pending == 0
    assert stats.chunks_trained == -(-n_tokens // 32)
    with pytest.raises(InvalidInputError, match="non-empty string"):
        engine.absorb("npc", "   ")


def test_training_is_reproducible_for_the_same_seed(make_engine):
    losses = []
    for _ in range(2):
        engine = make_engine(seed=3)
        engine.add_turns("a", _turns(8))
        losses.append(engine.stats("a").last_loss)
    assert losses[0] == losses[1]


def test_bad_inputs_raise_clear_errors(make_engine):
    engine = make_engine(window_tokens=64, chunk_tokens=32)
    with pytest.raises(InvalidInputError, match="agent_id must be a non-empty string"):
        engine.add_turns("", _turns(1))
    with pytest.raises(InvalidInputError, match="longer than 128 characters"):
        engine.add_turns("x" * 200, _turns(1))
    with pytest.raises(InvalidInputError, match="longer than window_tokens=64"):
        engine.add_turns("a", [{"role": "user", "content": "word " * 200}])
    with pytest.raises(InvalidInputError, match="no conversation turn"):
        list(engine.respond("fresh", [{"role": "system", "content": "hi"}], Sampling(max_new_tokens=2)))


def test_reads_of_an_unknown_agent_raise_and_create_nothing(make_engine):
    engine = make_engine()
    assert not engine.exists("typo")
    with pytest.raises(UnknownAgentError, match="'typo' has no memory.*exists"):
        engine.stats("typo")
    with pytest.raises(UnknownAgentError):
        engine.window("typo")
    assert not engine.exists("typo") and engine.agent_ids() == []
    engine.add_turns("known", _turns(2))
    assert engine.exists("known") and engine.stats("known").turns_seen == 2
