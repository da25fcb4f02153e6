"""Context distillation onto probes, on the tiny model: probe construction, the teacher, the KL, replay."""

from __future__ import annotations

import json

import torch

from templora_memory import TempLoraConfig
from templora_memory.adapter_files import REPLAY
from templora_memory.conversation import Conversation
from templora_memory.distill import TOP_K, ProbeTeacher
from templora_memory.engine import MemoryEngine
from templora_memory.message import Turn, fingerprint
from templora_memory.probes import ANCHORS, Probe, cloze, probes_for, restate, salient_span, statements
from templora_memory.store import CURRENT, store_key
from templora_memory.trainer import probe_kl
from tests.conftest import TINY_CONFIG
from tests.tiny import tiny_model

TOLD = [
    {"role": "user", "content": "My daughter is called Mira. Is the road safe? I have 12 sheep on my farm."},
    {"role": "assistant", "content": "I will remember that."},
    {"role": "user", "content": "I left my horse at the old mill."},
]
SYSTEM = {"role": "system", "content": "You are the innkeeper."}


def _turns(n: int) -> list[dict]:
    return [
        {"role": ("user", "assistant")[i % 2], "content": f"My cat number {i} is called Whiskers{i}."} for i in range(n)
    ]


# ----- probes ---------------------------------------------------------------------------------


def test_a_users_statement_is_restated_in_the_assistants_voice():
    assert restate("My daughter is called Mira.") == "Your daughter is called Mira."
    assert restate("I am going where I like.") == "You are going where you like."
    assert statements("Is it safe? My horse is at the mill. Yes.") == ["My horse is at the mill."]
    assert salient_span("My daughter is called Mira.") == "Mira" and salient_span("I own 12 sheep.") == "12"
    assert cloze("Your daughter is called Mira.", "Mira") == "Remind me: your daughter is called what?"


def test_probes_come_from_user_statements_names_first_and_are_seeded():
    probes = probes_for(TOLD, count=10, seed=1)
    answers = {p.answer for p in probes}
    assert "Your daughter is called Mira." in answers and "You have 12 sheep on your farm." in answers
    assert not any("road" in p.answer or "remember" in p.answer for p in probes)  # no questions, no assistant lines
    assert probes[0] == Probe("Remind me: your daughter is called what?", "Your daughter is called Mira.")
    assert probes_for(TOLD, count=10, seed=1) == probes and len(probes_for(TOLD, count=3, seed=1)) == 3
    assert probes_for(TOLD, count=0, seed=1) == []


def test_a_chunk_knows_which_messages_its_tokens_come_from():
    talk = Conversation()
    for message, size in zip(TOLD, (10, 5, 7), strict=True):
        talk.append(Turn(message, tuple(range(size)), fingerprint(message)))
    talk.mark_written(12, train_context_tokens=0)  # the first turn and 2 tokens of the second are written
    assert talk.pending_messages(2) == [TOLD[1]]
    assert talk.pending_messages(4) == TOLD[1:]


# ----- the teacher and the KL ----------------------------------------------------------------


def test_the_teacher_reads_the_chunk_without_gradients_and_with_the_adapter_off(make_engine):
    engine = make_engine(probe_questions=4)
    engine.add_turns("trained", _turns(12))  # an adapter that differs from the base model
    teacher = ProbeTeacher(engine.renderer, engine.config)
    context = engine.render_prompt([SYSTEM], TOLD)
    with engine.bank.active("trained") as model:
        taught = teacher.teach(model, context, TOLD, [SYSTEM], seed=3)
    with engine.bank.active(None) as base:
        again = teacher.teach(base, context, TOLD, [SYSTEM], seed=3)
        blind = teacher.teach(base, engine.encode("Hello."), TOLD, [SYSTEM], seed=3)
    assert len(taught) == 4
    for probe, same, other in zip(taught, again, blind, strict=True):
        assert not probe.top_logprobs.requires_grad
        assert probe.top_ids.shape == (len(probe.answer), TOP_K)
        assert torch.allclose(probe.top_logprobs, same.top_logprobs, atol=1e-5)  # the adapter played no part
        assert not torch.allclose(probe.top_logprobs, other.top_logprobs)  # the chunk in context did


def test_the_kl_reads_only_the_answer_tokens_and_is_zero_for_a_matching_student(make_engine):
    engine = make_engine(probe_questions=2)
    engine.add_turns("trained", _turns(12))
    teacher = ProbeTeacher(engine.renderer, engine.config)
    with engine.bank.active(None) as base:
        # the teacher reads no chunk (only the system message): the base student reads the same, so the KL is 0
        batch = teacher.batch(teacher.teach(base, engine.render_prompt([SYSTEM], []), TOLD, [SYSTEM], seed=0), "cpu")
        answer_tokens = int((batch.students.labels != -100).sum())
        assert batch.top_ids.shape == (answer_tokens, TOP_K)
        matching = probe_kl(base, batch, temperature=1.0).item()
        batch.students.input_ids[batch.students.attention_mask == 0] = 7  # padding never reaches the loss
        assert probe_kl(base, batch, temperature=1.0).item() == matching
    with engine.bank.active("trained") as student:
        assert probe_kl(student, batch, temperature=1.0).item() > 1e-4
    assert abs(matching) < 1e-5


# ----- in the write path ---------------------------------------------------------------------


def test_probes_change_the_adapter_and_training_stays_reproducible(make_engine):
    runs = []
    for _ in range(2):
        engine = make_engine(probe_questions=3, replay_probes=5, seed=4)
        engine.add_turns("a", [SYSTEM, *_turns(16)])
        runs.append(engine)
    state = runs[0].agent("a")
    assert state.stats.chunks_trained >= 4
    weights = [runs[i].bank.parameters("a") for i in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))  # deterministic under the seed
    plain = make_engine(seed=4)
    plain.add_turns("a", [SYSTEM, *_turns(16)])
    assert not all(torch.equal(a, b) for a, b in zip(weights[0], plain.bank.parameters("a"), strict=True))


def test_the_replay_reservoir_is_bounded_and_survives_a_restart(make_engine, tmp_path):
    first = make_engine(store=tmp_path, probe_questions=3, replay_probes=4)
    first.add_turns("a", [SYSTEM, *_turns(16)])
    assert first.stats("a").chunks_trained >= 4
    first.close()  # as at a process's exit
    second = make_engine(store=tmp_path, probe_questions=3, replay_probes=4)
    uninterrupted = make_engine(probe_questions=3, replay_probes=4)
    uninterrupted.add_turns("a", [SYSTEM, *_turns(16)])
    more = _turns(30)[16:]
    uninterrupted.add_turns("a", more)
    second.add_turns("a", more)  # same reservoir, seeds and optimizer: training goes on identically
    pairs = zip(uninterrupted.bank.parameters("a"), second.bank.parameters("a"), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    folder = tmp_path / "agents" / store_key("a")
    version = json.loads((folder / CURRENT).read_text())["version"]
    kept = torch.load(folder / version / REPLAY, weights_only=True)
    assert second.stats("a").chunks_trained * 3 > 4 and len(kept) == 4  # more were taught than the bound keeps


def test_background_training_with_probes_writes_what_cascaded_training_writes(make_engine):
    cascaded = make_engine(probe_questions=3, replay_probes=4)
    parallel = make_engine(probe_questions=3, replay_probes=4, deployment="parallel")
    for engine in (cascaded, parallel):
        engine.add_turns("a", [SYSTEM, *_turns(16)])
        engine.wait()
    ours, theirs = parallel.bank.parameters("a"), cascaded.bank.parameters("a")
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


# ----- anchors ------------------------------------------------------------------------------------


def test_anchors_are_taught_by_the_base_model_reading_what_the_student_reads(make_engine):
    engine = make_engine(anchor_probes=3)
    engine.add_turns("trained", _turns(12))
    teacher = ProbeTeacher(engine.renderer, engine.config)
    with engine.bank.active("trained") as model:
        anchors = teacher.anchor(model, [SYSTEM], seed=5)
    with engine.bank.active(None) as base:
        again = teacher.anchor(base, [SYSTEM], seed=5)
        assert [a.prompt for a in teacher.anchor(base, [SYSTEM], seed=6)] != [a.prompt for a in anchors]
        assert probe_kl(base, teacher.batch(anchors, "cpu"), temperature=1.0).item() < 1e-5  # the base is the target
    assert len(anchors) == 3
    for anchor, same in zip(anchors, again, strict=True):
        assert anchor.prompt == same.prompt and torch.allclose(anchor.top_logprobs, same.top_logprobs, atol=1e-5)


def test_anchors_hold_the_adapter_to_the_base_model_on_generic_questions(tokenizer):
    drift = {}
    for anchor_probes in (0, 8):
        model = tiny_model(tokenizer)
        with torch.no_grad():  # peaked predictions, as a trained model has (the random tiny one is near uniform)
            model.lm_head.weight.mul_(30)
        config = TempLoraConfig(**{**TINY_CONFIG, "anchor_probes": anchor_probes, "probe_questions": 0})
        engine = MemoryEngine(config=config, loaded=(model, tokenizer, "tiny-peaked"))
        engine.add_turns("a", [SYSTEM, *_turns(16)])
        teacher = ProbeTeacher(engine.renderer, config.model_copy(update={"anchor_probes": len(ANCHORS)}))
        with engine.bank.active("a") as student:
            batch = teacher.batch(teacher.anchor(student, [SYSTEM], seed=0), "cpu")  # every anchor, taught by the base
            drift[anchor_probes] = probe_kl(student, batch, temperature=1.0).item()
    assert drift[8] < 0.5 * drift[0]
