"""Probe writers against written expectations: the default "statements" rules, the opt-in "shapes" rules for every
sentence shape (grammatical restatements), and the opt-in "model" writer (self-study) on the tiny model."""

from __future__ import annotations

import pytest

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
