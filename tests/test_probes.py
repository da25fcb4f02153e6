"""Probe writers against written expectations: the default "statements" rules, the opt-in "shapes" rules for every
sentence shape (grammatical restatements), and the opt-in "model" writer (self-study) on the tiny model."""

from __future__ import annotations

import pytest

from templora_memory import probe_shapes as shapes
from templora_memory import probes as statements
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
