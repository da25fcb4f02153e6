"""Probe writers against written expectations: the default "statements" rules, the opt-in "shapes" rules for every
sentence shape (grammatical restatements), and the opt-in "model" writer (self-study) on the tiny model."""

from __future__ import annotations

import contextlib

import pytest
import torch

from templora_memory import ConfigError, TempLoraConfig
from templora_memory import probe_shapes as shapes
from templora_memory import probes as statements
from templora_memory.distill import ProbeTeacher
from templora_memory.probe_writer import ProbeWriter
from templora_memory.probes import Probe

# ----- the default: the user's first-person statements ----------------------------------------------


@pytest.mark.parametrize(
    ("said", "restated"),
    [
        ("I was born in Oslo.", "You were born in Oslo."),
        ("Once I was a soldier and I am a potter now.", "Once you were a soldier and you are a potter now."),
        ("I wasn't at the mill.", "You weren't at the mill."),
        ("We were married in Vigo.", "You were married in Vigo."),
        ("My daughter is called Mira.", "Your daughter is called Mira."),
    ],
)
def test_the_default_restatement_agrees_with_its_swapped_subject(said, restated):
    assert statements.restate(said) == restated


def test_the_default_probes_still_come_from_the_users_statements_only():
    told = [
        {"role": "user", "content": "I was born in Oslo. Could you keep my sword for me?"},
        {"role": "assistant", "content": "The ferry leaves at nine."},
    ]
    probes = statements.probes_for(told, count=8, seed=0)
    assert probes[0] == Probe("Remind me: you were born in what?", "You were born in Oslo.")
    assert probes[1].answer == "You told me that you were born in Oslo." and len(probes) == 2


# ----- opt-in "shapes": every turn and sentence shape ------------------------------------------------


def _shaped(*turns: tuple[str, str]) -> list[Probe]:
    return shapes.probes_for([{"role": role, "content": text} for role, text in turns], count=16, seed=0)


@pytest.mark.parametrize(
    ("said", "restated"),
    [
        ("I was born in Oslo.", "You were born in Oslo."),
        ("I am a potter and I was a soldier.", "You are a potter and you were a soldier."),
        ("We were married in Vigo.", "You were married in Vigo."),
        ("Could you keep my sword for me?", "Could I keep your sword for you?"),
        ("Thank you, you are kind.", "Thank me, I am kind."),
        ("I told you my name is Ines.", "You told me your name is Ines."),
        ("I'm sure you've met my son.", "You're sure I've met your son."),
    ],
)
def test_a_shapes_restatement_swaps_speaker_and_listener_and_agrees(said, restated):
    assert shapes.restate(said) == restated


def test_a_first_person_statement_gets_a_cloze_on_its_name_and_a_recall_question():
    probes = _shaped(("user", "My sword is named Nightfall."))
    assert probes[0] == Probe("Remind me: your sword is named what?", "Your sword is named Nightfall.", "Nightfall")
    assert probes[1].answer == "You told me that your sword is named Nightfall."


def test_a_fact_inside_a_question_is_reported_with_its_name():
    (probe,) = _shaped(("user", "Have you seen my goat Bella anywhere?"))
    assert probe.answer == "You asked me: have I seen your goat Bella anywhere?" and probe.span == "Bella"
    assert probe.question in ("What did I ask you earlier?", "Do you remember what I asked you?")


def test_a_request_is_reported_in_the_assistants_voice():
    (probe,) = _shaped(("user", "Please wake me at six tomorrow."))
    assert probe.answer == "You asked me: please wake you at six tomorrow." and probe.span == "six"


def test_third_person_facts_keep_their_names_and_both_get_a_cloze():
    probes = _shaped(("user", "My cousin Rosa moved to Lisbon."))
    assert [p.question for p in probes[:2]] == [
        "Remind me: your cousin Rosa moved to what?",
        "Remind me: your cousin what moved to Lisbon?",
    ]
    assert {p.span for p in probes[:2]} == {"Rosa", "Lisbon"}


def test_the_assistants_own_facts_are_recalled_as_said():
    (probe,) = _shaped(("assistant", "The ferry leaves at nine."))
    assert probe.answer == "I told you: the ferry leaves at nine." and probe.span == "nine"
    assert probe.question in ("What did you tell me earlier?", "Can you repeat what you said before?")


def test_a_fact_spread_over_two_sentences_is_restated_whole():
    probes = _shaped(("user", "I bought a mule last spring. He is called Pip."))
    assert probes[0] == Probe(
        "Remind me: you bought a mule last spring. He is called what?",
        "You bought a mule last spring. He is called Pip.",
        "Pip",
    )


def test_two_facts_in_one_sentence_each_get_a_probe_before_any_sentence_gets_a_second():
    probes = _shaped(("user", "My boat Gull is moored at Kell."), ("user", "The harbour master is Anders."))
    assert [p.span for p in probes[:3]] == ["Kell", "Anders", "Gull"]


def test_small_talk_without_names_or_values_comes_after_the_facts():
    probes = _shaped(("user", "What a lovely evening it is."), ("user", "My key opens door 14."))
    assert probes[0].span == "14"


def test_a_value_without_a_name_is_the_words_after_the_last_copula_or_preposition():
    assert shapes.salient_spans("The password is bluebell.") == ["bluebell"]
    assert shapes.salient_spans("I left my horse at the old mill.") == ["the old mill"]


def test_shapes_probes_are_seeded_and_bounded():
    told = [{"role": "user", "content": "My sword is named Nightfall. I was born in Oslo. Is the road safe?"}]
    assert shapes.probes_for(told, 8, seed=2) == shapes.probes_for(told, 8, seed=2)
    assert len(shapes.probes_for(told, 3, seed=2)) == 3 and shapes.probes_for(told, 0, seed=2) == []


def test_swapping_twice_is_the_identity_on_plain_sentences():
    for sentence in ("My horse is at the mill.", "I left your cart at the gate."):
        assert shapes.swap_person(shapes.swap_person(sentence)) == sentence


# ----- who writes: the option, and the model-written probes (self-study) -----------------------------

TURN = [{"role": "user", "content": "My sword is named Nightfall."}]


def test_the_default_writer_is_statements_and_an_unknown_writer_is_refused():
    assert TempLoraConfig().probe_writer == "statements"
    with pytest.raises(ConfigError, match="probe_writer"):
        TempLoraConfig(probe_writer="poet")


def test_the_rule_writers_are_the_rules_and_never_touch_the_model():
    told = [{"role": "user", "content": "Could you keep my sword for me? I was born in Oslo."}]
    for name, rules in (("statements", statements.probes_for), ("shapes", shapes.probes_for)):
        written = ProbeWriter(renderer=None, eos_ids=set(), writer=name).write(None, [1, 2], told, count=8, seed=4)
        assert written == rules(told, 8, seed=4) and written
    assert statements.probes_for(told, 8, seed=4) != shapes.probes_for(told, 8, seed=4)  # the question is reported


def test_the_teacher_teaches_the_probes_of_the_writer_the_config_names(make_engine):
    engine = make_engine(probe_questions=8)
    told = [
        {"role": "user", "content": "I was born in Oslo. Could you keep my sword for me?"},
        {"role": "assistant", "content": "The ferry leaves at nine."},
    ]
    system = [{"role": "system", "content": "You are the innkeeper."}]
    context = engine.render_prompt(system, told)
    for name, rules in (("statements", statements.probes_for), ("shapes", shapes.probes_for)):
        teacher = ProbeTeacher(engine.renderer, engine.config.model_copy(update={"probe_writer": name}))
        with engine.bank.active(None) as base:
            taught = teacher.teach(base, context, told, system, seed=3)
        asked = [
            ({"role": "user", "content": p.question}, {"role": "assistant", "content": p.answer})
            for p in rules(told, 8, 3)
        ]
        assert [t.answer for t in taught] == [engine.renderer.reply(system, [q], a)[1] for q, a in asked]


class ScriptedWriter(ProbeWriter):
    """The model's writing replaced by scripted replies, to check what is kept and what falls back."""

    def __init__(self, replies: dict[str, str]) -> None:
        super().__init__(renderer=None, eos_ids=set(), writer="model")
        self.replies = replies
        self.asked: list[str] = []

    def _generate(self, model, context, last, asked, cache) -> str:
        self.asked.append(asked)
        return next(reply for key, reply in self.replies.items() if key in asked)


class NoAdapter:
    """Stands in for the PeftModel: the writer only disables its adapter."""

    @contextlib.contextmanager
    def disable_adapter(self):
        yield


def test_a_written_question_and_an_answer_naming_the_fact_are_kept():
    writer = ScriptedWriter({"check that": "What did I call my sword? Tell me.", "call my sword": "Nightfall, sir."})
    probe = writer.write(NoAdapter(), [1, 2, 3], TURN, count=1, seed=0)[0]
    assert probe == Probe("What did I call my sword?", "Nightfall, sir.", "Nightfall")
    assert writer.asked[0].startswith("Write the short question") and 'named Nightfall."' in writer.asked[0]


def test_a_written_answer_missing_the_fact_and_a_non_question_fall_back_on_the_rules():
    (rule,) = shapes.probes_for(TURN, 1, seed=0)
    for question in ("Sword", "Tell me the name of my sword."):  # too short; not a question
        writer = ScriptedWriter({"check that": question, "Remind me": "I do not know."})
        assert writer.write(NoAdapter(), [1, 2, 3], TURN, count=1, seed=0) == [rule]


def test_a_sentence_asked_about_twice_is_written_once_and_taught_once():
    writer = ScriptedWriter({"check that": "Where does my cousin live?", "cousin live": "Rosa lives in Lisbon."})
    told = [{"role": "user", "content": "My cousin Rosa moved to Lisbon."}]
    written = writer.write(NoAdapter(), [1, 2, 3], told, count=2, seed=0)  # two clozes on the one sentence
    assert written == [Probe("Where does my cousin live?", "Rosa lives in Lisbon.", "Lisbon")]
    assert len(writer.asked) == 2  # one question, one answer


def test_the_model_writes_probes_on_the_tiny_model_reproducibly_and_falls_back_on_the_rules(make_engine, monkeypatch):
    replies, written = [], []
    generate, write = ProbeWriter._generate, ProbeWriter.write

    def generating(self, *args):
        replies.append((args[3], generate(self, *args)))
        return replies[-1][1]

    def writing(self, model, context, messages, count, seed):
        written.append((shapes.probes_for(messages, count, seed), write(self, model, context, messages, count, seed)))
        return written[-1][1]

    monkeypatch.setattr(ProbeWriter, "_generate", generating)
    monkeypatch.setattr(ProbeWriter, "write", writing)
    turns = [{"role": ("user", "assistant")[i % 2], "content": f"My cat number {i} is Tom{i}."} for i in range(6)]
    runs = []
    for _ in range(2):
        replies.clear(), written.clear()
        engine = make_engine(probe_writer="model", probe_questions=2, seed=3)
        engine.add_turns("a", turns)
        assert engine.stats("a").chunks_trained >= 1
        runs.append((list(replies), list(written), engine.bank.parameters("a")))
    (replies, written, first), (replies_again, written_again, second) = runs
    assert replies and replies[0][0].startswith("Write the short question") and any(text for _, text in replies)
    assert written and all(probes for _, probes in written)
    for rules, probes in written:  # an answer that misses its fact is the rule's, with the rule's question or not
        spans = {rule.span: rule for rule in rules}
        for probe in probes:
            assert probe.span in spans and probe.sentence == spans[probe.span].sentence
            assert probe.span.lower() in probe.answer.lower() or probe.answer == spans[probe.span].answer
    assert (replies, written) == (replies_again, written_again)  # greedy: the same probes, written alike
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
