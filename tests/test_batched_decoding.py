"""Batched decoding: each row of a batched step gives the logits of its agent decoded alone, and a reply decoded in a
batch gets the tokens it gets alone (sampling, repetition penalty, grammars), whoever joins or leaves the batch.

Tolerances: on fp32 weights a row's logits equal the lone reply's to 1e-5 on the tiny model (summation order: the
batch adds the LoRA with batched products; 5e-5 at logits of ~20 on the default model). On the compact weights
each linear layer's output is rounded to bf16 and the kernels may block 1 and n rows differently, so rows agree to
`COMPACT_TOLERANCE` of the largest logit and pick the same greedy token: measured on the default model, its int4
rows are bit-identical to the lone reply's and bf16 rows differ by one bf16 step (0.125 at logits of ~20).
"""

from __future__ import annotations

import threading

import pytest
import torch

from templora_memory.batched_decoding import LoraSlots, batchable, batched_logits
from templora_memory.constrained import json_grammar
from templora_memory.generation import Sampling, generate_tokens, torch_step
from templora_memory.kv_cache import PromptCache
from templora_memory.reply_batch import ReplyBatch
from tests.tiny import tiny_model

FP32_TOLERANCE = 1e-5
COMPACT_TOLERANCE = 0.03
"""Largest logit difference on bf16/int4 weights, as a fraction of the largest logit (as tests/test_decoding.py)."""
AGENTS = ["a", None, "b", "c"]
"""Rows of the tests' batches: three agents with their own LoRA and one reply of the base model."""

pytestmark = pytest.mark.usefixtures("one_thread")


def _engine(make_engine, **overrides):
    """An engine whose agents a, b, c each have their own random LoRA with non-zero B (as after training)."""
    engine = make_engine(**overrides)
    generator = torch.Generator().manual_seed(3)
    for agent in ("a", "b", "c"):
        engine.agent(agent)
        with torch.no_grad():
            for parameter in engine.bank.parameters(agent):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return engine


def _prompts(n: int = len(AGENTS)) -> list[list[int]]:
    """Prompts of mixed lengths (the rows' caches differ in length)."""
    return [list(range(5 + i, 5 + i + length)) for i, length in enumerate([7, 19, 2, 12][:n])]


def _alone_logits(engine, agent, prompt: list[int], token: int) -> torch.Tensor:
    """The logits after `prompt` + `token` on the single path, the token run as its own step."""
    cache = PromptCache()
    with engine.decoder.active(engine.bank, agent) as model:
        step = torch_step(model, cache)
        step(cache.align(prompt))
        return step([token])


def _batched_logits(engine, agents, prompts, token: int) -> torch.Tensor:
    """The logits of one batched step of `token` after each prompt, rows ordered as `agents` (those with a LoRA
    first, as the batch keeps them)."""
    slots, caches = LoraSlots(engine.decoder), []
    for slot, agent in enumerate(a for a in agents if a is not None):
        slots.load(slot, engine.bank, agent)
    for i, (agent, prompt) in enumerate(zip(agents, prompts, strict=True)):
        cache = PromptCache()
        with slots.rows(*((i, i + 1) if agent is not None else (0, 0))):
            torch_step(engine.decoder.model, cache)(cache.align(prompt))
        caches.append(cache)
    with slots.rows(0, sum(a is not None for a in agents)):
        return batched_logits(engine.decoder.model, [token] * len(agents), caches)


@pytest.mark.parametrize("weights", ["fp32", "bf16", "int4"])
def test_each_row_of_a_batched_step_gives_the_logits_of_its_agent_alone(make_engine, weights):
    engine = _engine(make_engine, decode_weights=weights)
    assert engine.decoder.weights == weights
    agents = ["a", "b", "c", None]  # the rows with a LoRA come first in a batch
    prompts = _prompts()
    batched = _batched_logits(engine, agents, prompts, token=9)
    for row, (agent, prompt) in enumerate(zip(agents, prompts, strict=True)):
        alone = _alone_logits(engine, agent, prompt, token=9)
        difference = (batched[row] - alone).abs().max()
        if weights == "fp32":
            assert difference <= FP32_TOLERANCE, (agent, float(difference))
        else:
            assert difference <= COMPACT_TOLERANCE * alone.abs().max(), (agent, float(difference))
            assert batched[row].argmax() == alone.argmax()
    assert not torch.allclose(batched[0], batched[1]), "the rows' LoRAs differ, so must their logits"


def _alone_tokens(engine, agent, prompt, sampling, constraint=None) -> list[int]:
    with engine.decoder.active(engine.bank, agent) as model:
        return list(generate_tokens(model, prompt, sampling, engine.eos_ids, constraint=constraint))


def _read_together(streams) -> list[list[int]]:
    """Read every stream on its own thread at once (as the server's workers do); each one's tokens."""
    tokens: list[list[int]] = [[] for _ in streams]
    errors: list[BaseException] = []

    def read(i: int) -> None:
        try:
            tokens[i].extend(streams[i])
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(streams))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return tokens


def test_replies_read_at_once_get_the_tokens_they_get_alone(make_engine):
    engine = _engine(make_engine, decode_weights="fp32")
    samplings = [
        Sampling(max_new_tokens=12, temperature=0.9, top_p=0.9, seed=1),
        Sampling(max_new_tokens=10, repetition_penalty=1.3),
        Sampling(max_new_tokens=7, temperature=1.2, seed=5, repetition_penalty=1.1),
        Sampling(max_new_tokens=14, ignore_eos=True),
    ]
    batch = ReplyBatch(engine.decoder, engine.bank, threading.RLock())
    prompts = _prompts()
    streams = [
        batch.tokens(agent, prompt, sampling, engine.eos_ids)
        for agent, prompt, sampling in zip(AGENTS, prompts, samplings, strict=True)
    ]
    together = _read_together(streams)
    for agent, prompt, sampling, tokens in zip(AGENTS, prompts, samplings, together, strict=True):
        assert tokens == _alone_tokens(engine, agent, prompt, sampling)
    assert batch.steps > 0 and batch.rows_stepped / batch.steps > 1.5, "the replies were not decoded together"


def test_a_grammar_constrains_its_own_row_only(make_engine):
    engine = _engine(make_engine, decode_weights="fp32")
    grammar = json_grammar({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]})
    prompt = engine.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    sampling = Sampling(max_new_tokens=40, temperature=1.0, seed=2)
    free = Sampling(max_new_tokens=12, temperature=1.0, seed=2)
    batch = ReplyBatch(engine.decoder, engine.bank, threading.RLock())
    constrained, unconstrained = _read_together(
        [
            batch.tokens("a", prompt, sampling, engine.eos_ids, constraint=engine.grammars.constraint(grammar)),
            batch.tokens("b", prompt, free, engine.eos_ids),
        ]
    )
    alone = _alone_tokens(engine, "a", prompt, sampling, engine.grammars.constraint(grammar))
    assert constrained == alone and engine.tokenizer.decode(constrained).startswith("{")
    assert unconstrained == _alone_tokens(engine, "b", prompt, free)


def test_replies_join_and_leave_a_running_batch_at_token_boundaries(make_engine):
    engine = _engine(make_engine, decode_weights="fp32")
    batch = ReplyBatch(engine.decoder, engine.bank, threading.RLock(), max_rows=2)
    sampling = Sampling(max_new_tokens=10, ignore_eos=True)
    prompts = _prompts()
    first = batch.tokens("a", prompts[0], sampling, engine.eos_ids)
    head = [next(first) for _ in range(3)]
    leaving = batch.tokens("b", prompts[2], sampling, engine.eos_ids)
    left = [next(leaving), next(leaving)]
    leaving.close()  # as a reader does at a stop string: the row leaves at the next step
    later = [
        batch.tokens(agent, prompt, sampling, engine.eos_ids)
        for agent, prompt in zip([None, "c"], prompts[1:4:2], strict=True)
    ]
    rest = _read_together([first, *later])  # three readers, two rows at most: one waits for a place
    assert head + rest[0] == _alone_tokens(engine, "a", prompts[0], sampling)
    assert left == _alone_tokens(engine, "b", prompts[2], sampling)[:2]
    assert rest[1] == _alone_tokens(engine, None, prompts[1], sampling)
    assert rest[2] == _alone_tokens(engine, "c", prompts[3], sampling)


def test_when_a_reply_leaves_the_last_lora_moves_into_its_slot_and_every_row_keeps_its_own(make_engine):
    engine = _engine(make_engine, decode_weights="fp32")
    batch = ReplyBatch(engine.decoder, engine.bank, threading.RLock())
    sampling = Sampling(max_new_tokens=9, ignore_eos=True)
    prompts = _prompts(3)
    streams = [batch.tokens(agent, prompt, sampling, set()) for agent, prompt in zip("abc", prompts, strict=True)]
    heads = [[next(stream)] for stream in streams]  # slots a, b, c: 0, 1, 2
    heads = [head + [next(stream)] for head, stream in zip(heads, streams, strict=True)]
    streams[0].close()  # a leaves slot 0: c moves into it
    rest = [list(streams[1]), list(streams[2])]
    assert heads[0] == _alone_tokens(engine, "a", prompts[0], sampling)[:2]
    for agent, prompt, head, tail in zip("bc", prompts[1:], heads[1:], rest, strict=True):
        assert head + tail == _alone_tokens(engine, agent, prompt, sampling)


class _BrokenGrammar:
    """A constraint whose mask fails (as a grammar engine's error would)."""

    finished = False

    def mask(self, logits):
        raise ValueError("the grammar cannot go on")


def test_a_failed_pick_ends_only_its_own_reply(make_engine):
    engine = _engine(make_engine, decode_weights="fp32")
    batch = ReplyBatch(engine.decoder, engine.bank, threading.RLock())
    sampling = Sampling(max_new_tokens=6, ignore_eos=True)
    prompts = _prompts(2)
    broken = batch.tokens("a", prompts[0], sampling, set(), constraint=_BrokenGrammar())
    healthy = batch.tokens("b", prompts[1], sampling, set())
    first = next(healthy)
    with pytest.raises(ValueError, match="cannot go on"):
        next(broken)
    assert [first, *healthy] == _alone_tokens(engine, "b", prompts[1], sampling)


def test_a_reply_keeps_its_own_cache_for_the_next_call(make_engine):
    engine = _engine(make_engine, decode_weights="fp32")
    batch = ReplyBatch(engine.decoder, engine.bank, threading.RLock())
    sampling = Sampling(max_new_tokens=6, ignore_eos=True)
    caches = [PromptCache(), PromptCache()]
    prompts = _prompts(2)
    replies = _read_together(
        [batch.tokens(a, p, sampling, set(), c) for a, p, c in zip(["a", "b"], prompts, caches, strict=True)]
    )
    for cache, prompt, reply in zip(caches, prompts, replies, strict=True):
        assert cache.ids == prompt + reply[:-1]  # every token fed but the last picked, as on the single path
        assert cache.past.get_seq_length() == len(cache.ids)
    follow, computed = prompts[0] + replies[0] + [11, 12], caches[0].computed_tokens
    again = list(batch.tokens("a", follow, sampling, set(), caches[0]))
    assert again == _alone_tokens(engine, "a", follow, sampling)
    assert caches[0].computed_tokens == computed + 3 + 5  # the reply's last token and the 2 new, then 5 fed


def test_a_failed_step_ends_every_row_with_its_error_and_the_batch_goes_on(make_engine, monkeypatch):
    engine = _engine(make_engine, decode_weights="fp32")
    batch = ReplyBatch(engine.decoder, engine.bank, threading.RLock())
    sampling = Sampling(max_new_tokens=6, ignore_eos=True)
    caches = [PromptCache(), PromptCache()]
    streams = [batch.tokens(a, p, sampling, set(), c) for a, p, c in zip(["a", None], _prompts(2), caches, strict=True)]
    for stream in streams:
        next(stream)  # each prompt runs alone: both rows are in the batch now

    def broken(*_):
        raise RuntimeError("out of memory")

    monkeypatch.setattr("templora_memory.reply_batch.batched_logits", broken)
    for stream in streams:
        with pytest.raises(RuntimeError, match="out of memory"):
            list(stream)
    monkeypatch.undo()
    assert list(batch.tokens("a", _prompts(1)[0], sampling, set(), caches[0])) == _alone_tokens(
        engine, "a", _prompts(1)[0], sampling
    )


def test_models_whose_attention_rows_cannot_reproduce_decode_one_at_a_time(tokenizer):
    model = tiny_model(tokenizer)
    assert batchable(model)
    model.config.sliding_window = 16
    assert not batchable(model)


def test_the_default_model_decodes_a_batch_as_it_decodes_each_reply_alone(real_engine):
    engine = real_engine
    generator = torch.Generator().manual_seed(0)
    agents = ["batch-real-a", "batch-real-b", None]
    try:
        for agent in agents[:2]:
            engine.agent(agent)
            with torch.no_grad():
                for parameter in engine.bank.parameters(agent):
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
        text = engine.encode("The miller's daughter walked to the old castle on the hill, where the innkeeper said ")
        prompts = [text[:30], text[:11], text[:22]]
        token = engine.encode(" that")[0]
        batched = _batched_logits(engine, agents, prompts, token)
        for row, (agent, prompt) in enumerate(zip(agents, prompts, strict=True)):
            alone = _alone_logits(engine, agent, prompt, token)
            assert (batched[row] - alone).abs().max() <= COMPACT_TOLERANCE * alone.abs().max()
            assert batched[row].argmax() == alone.argmax()
        batch = ReplyBatch(engine.decoder, engine.bank, threading.RLock())
        sampling = Sampling(max_new_tokens=8, ignore_eos=True)
        together = _read_together([batch.tokens(a, p, sampling, set()) for a, p in zip(agents, prompts, strict=True)])
        assert together == [_alone_tokens(engine, a, p, sampling) for a, p in zip(agents, prompts, strict=True)]
    finally:
        for agent in agents[:2]:
            engine.forget(agent)


def test_agents_answered_at_once_reply_as_they_do_one_at_a_time(make_engine):
    lines = ["Hello there! What is your name?", "My cat is called Whiskers.", "Tell me about the old castle."]
    sampling = Sampling(max_new_tokens=8, temperature=0.8, seed=4, repetition_penalty=1.1)

    def conversation(engine, agent: str, line: str) -> list[str]:
        """Three turns with the agent (its first chunk trains before the third reply), the replies' texts."""
        return [
            engine.respond(agent, [{"role": "user", "content": f"{line} ({i})"}], sampling).result().text
            for i in range(3)
        ]

    alone = make_engine()
    expected = {agent: conversation(alone, agent, line) for agent, line in zip("abc", lines, strict=True)}
    together, replies = make_engine(), {}
    threads = [
        threading.Thread(target=lambda a=agent, said=line: replies.update({a: conversation(together, a, said)}))
        for agent, line in zip("abc", lines, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert replies == expected
    assert together.replies.rows_stepped > together.replies.steps > 0, "no two replies were decoded together"
    trained = [alone.stats(agent).chunks_trained for agent in "abc"]
    assert min(trained) >= 1 and [together.stats(agent).chunks_trained for agent in "abc"] == trained


def _cached_batch(make_engine, count: int, new_tokens: int):
    """An fp32 engine, a batch over it, `count` prompts for agents "a", "b", ..., the last agent's prompt already in
    the returned cache (one token decoded), and the sampling of the replies under test."""
    engine = _engine(make_engine, decode_weights="fp32")
    batch = ReplyBatch(engine.decoder, engine.bank, threading.RLock())
    prompts, cache = _prompts(count), PromptCache()
    list(batch.tokens("abc"[count - 1], prompts[-1], Sampling(max_new_tokens=1), set(), cache))
    return engine, batch, Sampling(max_new_tokens=new_tokens, ignore_eos=True), prompts, cache


def test_a_reply_whose_prompt_is_in_its_cache_joins_the_batched_step_at_once(make_engine):
    engine, batch, sampling, prompts, cache = _cached_batch(make_engine, 2, 5)  # b's prompt is in its cache
    first = batch.tokens("a", prompts[0], sampling, set())
    heads = [next(first)]  # a's prompt runs alone
    again = batch.tokens("b", prompts[1], sampling, set(), cache)
    heads.append(next(again))  # b has only its prompt's last token to run: no step of its own, a row at once
    assert (batch.steps, batch.rows_stepped) == (1, 2)
    rest = _read_together([first, again])
    for agent, prompt, head, tail in zip("ab", prompts, heads, rest, strict=True):
        assert [head, *tail] == _alone_tokens(engine, agent, prompt, sampling)


def test_replies_joining_in_one_step_with_and_without_a_prefill_each_keep_their_own_lora(make_engine):
    engine, batch, sampling, prompts, cache = _cached_batch(make_engine, 3, 6)  # c's prompt is in its cache
    first = batch.tokens("a", prompts[0], sampling, set())
    head = next(first)
    joining = [batch.tokens("b", prompts[1], sampling, set()), batch.tokens("c", prompts[2], sampling, set(), cache)]
    tails: list[list[int]] = [[], []]
    readers = [threading.Thread(target=lambda i=i: tails[i].extend(joining[i])) for i in range(2)]
    with batch._stepping:  # b (a prefill, slot 1) and c (one token, slot 2) wait, then join in one step
        for count, reader in enumerate(readers, 1):
            reader.start()
            while len(batch._waiting) < count:
                threading.Event().wait(0.01)
    rest = list(first)
    for reader in readers:
        reader.join()
    assert [head, *rest] == _alone_tokens(engine, "a", prompts[0], sampling)
    for agent, prompt, tail in zip("bc", prompts[1:], tails, strict=True):
        assert tail == _alone_tokens(engine, agent, prompt, sampling), agent
