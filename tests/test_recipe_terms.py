"""The optional training terms on the tiny model: the KL term to the base model, and LIFT synthetic QA pairs."""

from __future__ import annotations

import argparse
import time

import pytest
import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer

from templora_memory import ConfigError, TempLoraConfig
from templora_memory.agent import AgentState
from templora_memory.config import add_config_options, config_from_args
from templora_memory.rendering import ChatRenderer
from templora_memory.synthetic import QAPair, QuestionWriter, parse_pair, unique_pairs
from templora_memory.trainer import IGNORE_INDEX, base_logprobs, chunk_loss, learning_rate, padded_batch, train_chunk

CAT_PAIR = " What is the cat called?\nAnswer: Whiskers\nQuestion: and then"  # as if sampled after "Question:"
SYSTEM = {"role": "system", "content": "You are the innkeeper."}


def _turns(n: int) -> list[dict]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": f"turn {i} about the blacksmith"} for i in range(n)]


PLAIN_PASSES = dict(probe_questions=0, replay_probes=0, anchor_probes=0, train_precision="fp32", context_gradients=True)
"""The next-token loss alone, in fp32 with gradients through the context: what `_train_chunk_before` computes."""


def _train_chunk_before(model, input_ids, labels, optimizer, config, first_step) -> float:
    """`train_chunk` as it was before the optional terms, to check that they change nothing when off."""
    model.train()
    losses = []
    try:
        for epoch in range(config.epochs):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(first_step + epoch, config)
            loss = model(input_ids=input_ids, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    finally:
        model.eval()
    return sum(losses) / len(losses)


def _kl_to_base(engine, agent_id: str, ids: list[int]) -> float:
    """Mean KL(p_base ‖ p_adapter) over every next-token prediction of `ids`."""
    input_ids = torch.tensor([ids])
    with torch.no_grad(), engine.bank.active(agent_id) as model:
        reference = base_logprobs(model, input_ids, input_ids)
        adapted = torch.log_softmax(model(input_ids=input_ids).logits[0, :-1].float(), dim=-1)
    return F.kl_div(adapted, reference, log_target=True, reduction="batchmean").item()


@pytest.fixture
def fixed_pairs(monkeypatch, tokenizer):
    """Generation of synthetic pairs returns CAT_PAIR (the random tiny model writes gibberish); records each call."""
    calls = []

    def fake_generate(model, prompt, sampling, eos_ids, cache=None, constraint=None):
        disabled = [m.disable_adapters for m in model.modules() if isinstance(m, LoraLayer)]
        calls.append({"seed": sampling.seed, "base_model": all(disabled), "prompt": tokenizer.decode(prompt)})
        time.sleep(0.02)
        yield from tokenizer(CAT_PAIR, add_special_tokens=False)["input_ids"]

    monkeypatch.setattr("templora_memory.synthetic.generate_tokens", fake_generate)
    return calls


# ----- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"kl_weight": -0.5}, "kl_weight=-0.5: Input should be greater than or equal to 0"),
        ({"kl_weight": 101.0}, "kl_weight=101.0: Input should be less than or equal to 100"),
        ({"synthetic_questions": -1}, "synthetic_questions=-1: Input should be greater than or equal to 0"),
        ({"synthetic_questions": 17}, "synthetic_questions=17: Input should be less than or equal to 16"),
    ],
)
def test_new_fields_are_validated(values, expected):
    with pytest.raises(ConfigError, match="invalid TempLoraConfig") as caught:
        TempLoraConfig(**values)
    assert expected in str(caught.value)


def test_synthetic_questions_are_off_and_the_kl_term_on_by_default_and_both_are_cli_options():
    assert TempLoraConfig().kl_weight == 3.0 and TempLoraConfig().synthetic_questions == 0  # kl: measured, see README
    parser = argparse.ArgumentParser()
    add_config_options(parser)
    config = config_from_args(parser.parse_args(["--kl-weight", "0.5", "--synthetic-questions", "3"]))
    assert config.kl_weight == 0.5 and config.synthetic_questions == 3


def test_a_record_written_before_questions_were_counted_still_loads():
    record = AgentState("old").record()
    del record["counters"]["questions_written"]
    assert AgentState.from_record("old", record).stats().questions_written == 0


# ----- KL to the base model -----------------------------------------------------------------


def test_kl_off_trains_exactly_as_before_without_a_base_forward(make_engine, monkeypatch):
    before = make_engine(seed=5, **PLAIN_PASSES)
    monkeypatch.setattr("templora_memory.trainer.train_chunk", lambda *args: _train_chunk_before(*args[:6]))
    before.add_turns("a", _turns(8))
    monkeypatch.setattr("templora_memory.trainer.train_chunk", train_chunk)

    def no_base_pass(*args):
        raise AssertionError("kl_weight=0 must not run the base model")

    monkeypatch.setattr("templora_memory.trainer.base_logprobs", no_base_pass)
    now = make_engine(seed=5, kl_weight=0.0, **PLAIN_PASSES)
    now.add_turns("a", _turns(8))
    assert now.stats("a").chunks_trained >= 3
    assert now.stats("a").last_loss == before.stats("a").last_loss
    assert all(torch.equal(a, b) for a, b in zip(now.bank.parameters("a"), before.bank.parameters("a"), strict=True))


def test_the_kl_term_adds_to_the_chunk_loss_and_is_zero_for_a_fresh_adapter(make_engine, tokenizer):
    engine = make_engine()
    ids = tokenizer("The blacksmith sells swords and shields in Oakridge.", add_special_tokens=False)["input_ids"]
    input_ids = torch.tensor([ids])
    labels = input_ids.clone()
    labels[0, :4] = IGNORE_INDEX  # the first tokens are unscored context, as in a real chunk
    engine.agent("fresh")
    with torch.no_grad(), engine.bank.active("fresh") as model:
        reference = base_logprobs(model, input_ids, labels)
        assert reference.shape == (len(ids) - 4, len(tokenizer))
        fresh = chunk_loss(model, input_ids, labels, reference, kl_weight=10.0)
        assert fresh.item() == pytest.approx(chunk_loss(model, input_ids, labels).item(), abs=1e-6)  # LoRA B = 0
    engine.add_turns("trained", _turns(8))
    with torch.no_grad(), engine.bank.active("trained") as model:
        reference = base_logprobs(model, input_ids, labels)
        ce = chunk_loss(model, input_ids, labels).item()
        assert chunk_loss(model, input_ids, labels, reference, kl_weight=10.0).item() > ce + 1e-4


def test_a_large_kl_weight_keeps_the_adapter_near_the_base_model(make_engine, tokenizer):
    text = "Once upon a time a traveller asked the innkeeper about the old castle on the hill. " * 4
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    divergence = {}
    for weight in (0.0, 50.0):
        engine = make_engine(kl_weight=weight, learning_rate=1e-2, epochs=8, warmup_chunks=0)
        engine.write_tokens("a", ids)
        divergence[weight] = _kl_to_base(engine, "a", ids)
    assert divergence[0.0] > 0.005  # without the term, a high learning rate moves the predictions away
    assert divergence[50.0] < 0.5 * divergence[0.0]  # measured: 0.004 vs 0.013


# ----- synthetic question-answer pairs ------------------------------------------------------


def test_pairs_are_parsed_from_the_continuation_of_question():
    assert parse_pair(CAT_PAIR) == QAPair("What is the cat called?", "Whiskers")
    assert parse_pair(" Who sells swords?\nAnswer: The blacksmith") == QAPair("Who sells swords?", "The blacksmith")
    assert parse_pair(" Who sells swords?\n\nAnswer:  Tom \n") == QAPair("Who sells swords?", "Tom")
    assert parse_pair(" Who sells swords?\nThe blacksmith does.") is None  # no answer
    assert parse_pair(" Who sells swords?\nAnswer:   \nmore") is None  # empty answer
    assert parse_pair("\nAnswer: Tom") is None  # no question
    assert parse_pair("") is None


def test_malformed_and_repeated_pairs_are_dropped():
    cat, smith = QAPair("What is the cat called?", "Whiskers"), QAPair("Who sells swords?", "The blacksmith")
    again = QAPair("what is the  cat called? ", "Tom")
    assert unique_pairs([cat, None, again, smith, cat]) == [cat, smith]


def test_the_qa_batch_scores_answer_tokens_only():
    batch = padded_batch([([1, 2, 3], [4, 5]), ([6], [7])], "cpu")
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]]
    assert batch.labels.tolist() == [[IGNORE_INDEX] * 3 + [4, 5], [IGNORE_INDEX, 7] + [IGNORE_INDEX] * 3]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]


def test_a_pair_is_rendered_in_the_agents_chat_format(tokenizer):
    writer = QuestionWriter(tokenizer, ChatRenderer(tokenizer), eos_ids=set(), count=1)
    batch = writer.batch([SYSTEM], [QAPair("What is the cat called?", "Whiskers")], "cpu")
    scored = batch.labels[0] != IGNORE_INDEX
    assert tokenizer.decode(batch.input_ids[0][~scored]) == (
        "<|im_start|>system\nYou are the innkeeper.<|im_end|>\n"
        "<|im_start|>user\nWhat is the cat called?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.decode(batch.input_ids[0][scored]) == "Whiskers<|im_end|>\n"


def test_no_pair_means_no_batch_and_no_generation(make_engine, tokenizer, fixed_pairs):
    assert QuestionWriter(tokenizer, ChatRenderer(tokenizer), eos_ids=set(), count=1).batch([SYSTEM], [], "cpu") is None
    engine = make_engine()
    engine.add_turns("a", _turns(8))
    assert fixed_pairs == [] and engine.stats("a").questions_written == 0


def _answer_nll_drop(engine, agent_id: str) -> float:
    """How much the agent's adapter lowers the NLL of "Whiskers" after the rendered question, vs the base model."""
    question = {"role": "user", "content": "What is the cat called?"}
    prompt, answer = engine.renderer.reply([SYSTEM], [question], {"role": "assistant", "content": "Whiskers"})
    name = len(engine.tokenizer("Whiskers", add_special_tokens=False)["input_ids"])  # the answer's first tokens
    nll = {who: -sum(engine.log_likelihood(who, prompt, answer)[:name]) for who in (None, agent_id)}
    return nll[None] - nll[agent_id]


@pytest.mark.parametrize("deployment", ["cascaded", "parallel"])
def test_synthetic_pairs_are_written_by_the_base_model_and_trained(make_engine, fixed_pairs, deployment):
    drops = {}
    for count in (0, 2):
        engine = make_engine(synthetic_questions=count, deployment=deployment)
        engine.add_turns("a", [SYSTEM, *_turns(8)])
        engine.wait()
        stats = engine.stats("a")
        assert stats.chunks_trained >= 3
        assert stats.questions_written == (stats.chunks_trained if count else 0)  # the two samples are the same pair
        drops[count] = _answer_nll_drop(engine, "a")
    assert list(engine.agent("a").last_questions) == [QAPair("What is the cat called?", "Whiskers")]
    assert len(fixed_pairs) == 2 * stats.chunks_trained and all(call["base_model"] for call in fixed_pairs)
    assert len({call["seed"] for call in fixed_pairs}) == len(fixed_pairs)  # each sample drawn from its own seed
    assert "turn 0 about the blacksmith" in fixed_pairs[0]["prompt"]  # the chunk's text is in the prompt
    assert stats.train_seconds >= 0.02 * len(fixed_pairs)  # writing the pairs counts as training time
    assert drops[2] > drops[0] + 0.8  # measured: 1.6 nats with the pairs, 0.3 without


@pytest.mark.parametrize("terms", [{"kl_weight": 5.0}, {"synthetic_questions": 2}])
def test_background_training_with_a_term_writes_what_cascaded_training_writes(make_engine, fixed_pairs, terms):
    cascaded, parallel = make_engine(**terms), make_engine(deployment="parallel", **terms)
    for engine in (cascaded, parallel):
        engine.add_turns("a", [SYSTEM, *_turns(8)])
        engine.wait()
    timing = {"train_seconds", "prompt_tokens"}
    assert parallel.stats("a").model_dump(exclude=timing) == cascaded.stats("a").model_dump(exclude=timing)
    ours, theirs = parallel.bank.parameters("a"), cascaded.bank.parameters("a")
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
