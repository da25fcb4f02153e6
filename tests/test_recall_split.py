"""The recall benchmark's tuning and report splits share nothing, and the general questions are not the anchors."""

from __future__ import annotations

import re

from benchmarks.general_checks import GENERAL, GENERAL_TUNING
from benchmarks.recall_facts import REPORT, TUNING
from benchmarks.recall_report import OPENING_GAP, miss_causes, summarize, summarize_general
from benchmarks.recall_scenarios import build_scenario, normalise
from templora_memory.probes import ANCHORS

COMMON = set(
    "what which who where when how many much does do did is are was the a an of in on to for and with your you my "
    "that this it its at by from be can could would will there one two their them they people called after use no "
    "comes".split()
)


def _words(text: str) -> set[str]:
    return {w for w in normalise(text).split() if w not in COMMON and not w.isdigit()}


def _templates(split) -> list[str]:
    return [line for kind in split for telling in kind.tellings for line in telling if line]


def test_the_splits_share_no_kind_value_wording_or_shape():
    assert not {k.kind for k in TUNING} & {k.kind for k in REPORT}
    values = lambda split: {v for k in split for row in k.values for v in row}  # noqa: E731
    assert not values(TUNING) & values(REPORT)
    assert not set(_templates(TUNING)) & set(_templates(REPORT))
    questions = lambda split: {q for k in split for ask in k.asks for q in ask.questions}  # noqa: E731
    assert not questions(TUNING) & questions(REPORT)
    shapes = {k.shape for k in REPORT} - {k.shape for k in TUNING}
    assert {"request", "two_facts", "reported_speech", "fronted_clause", "two_sentences"} <= shapes
    assert {"npc", "question", "third_person", "statement"} <= {k.shape for k in TUNING}


def test_every_question_is_worded_unlike_the_telling_it_asks_about():
    for kind in (*TUNING, *REPORT):
        for ask in kind.asks:
            for question in ask.questions:
                for telling in _templates([kind]):
                    assert normalise(question) not in normalise(telling)


def test_a_two_fact_telling_asks_both_facts_and_an_npc_telling_is_said_by_the_npc():
    count = lambda messages: sum(len(m["content"].split()) for m in messages)  # noqa: E731
    scenarios = [build_scenario(i, 0, [1, 2], 16, 32, count, "report") for i in range(12)]
    facts = [f for s in scenarios for f in s.facts]
    two = [f for f in facts if f.shape == "two_facts"]
    assert two and all(f.value in f.telling for f in facts)
    assert len({f.question for f in two}) > 1 and len(facts) > 2 * len(scenarios)  # both facts of a telling asked
    for scenario in scenarios:
        npc = [f for f in scenario.facts if f.shape == "npc"]
        said_by = {m["content"]: m["role"] for m in scenario.messages}
        assert all(any(f.value in line and said_by[line] == "assistant" for line in said_by) for f in npc)


def test_the_general_questions_share_no_content_word_with_the_anchors():
    anchor_words = set().union(*(_words(q) | _words(a) for q, a in ANCHORS))
    for general in (GENERAL, GENERAL_TUNING):
        assert len(general) == 48 and len({q for q, _ in general}) == 48
        for question, answers in general:
            shared = (_words(question) | set().union(*map(_words, answers))) & anchor_words
            assert not shared, (question, shared)


def test_the_tuning_general_set_asks_nothing_the_report_set_asks_or_accepts():
    report_answers = {a for _, answers in GENERAL for a in answers}
    assert not {q for q, _ in GENERAL} & {q for q, _ in GENERAL_TUNING}
    assert not report_answers & {a for _, answers in GENERAL_TUNING for a in answers}


def test_gap_closed_counts_only_questions_the_ceiling_answers_and_intervals_bracket_the_rate():
    def row(question, condition, exact, nll):
        return dict(
            scenario="s", question=question, condition=condition, chunks_back=1, exact=exact, nll=nll, reply_nll=nll
        )

    records = [row("q1", "in_context", True, 1.0), row("q1", "window", False, 5.0), row("q1", "adapter", True, 2.0)]
    records += [row("q2", "in_context", False, 1.0), row("q2", "window", False, 5.0), row("q2", "adapter", False, 9)]
    cell = summarize(records, ("in_context", "window", "adapter"), [1])["adapter"]["1"]
    assert cell["gap_closed_median"] == 0.75 and cell["gap_questions"] == 1  # q2's ceiling does not answer
    assert cell["hits"] == 1 and cell["of_ceiling"] == 1.0
    low, high = cell["exact_ci95"]
    assert 0 <= low <= cell["exact"] <= high <= 1
    general = summarize_general(
        [dict(scenario="s", question=f"g{i}", condition=c, exact=(c == "window" or i < 2)) for i in range(4)
         for c in ("window", "adapter")]
    )  # fmt: skip
    assert general["window"] == 4 and general["adapter"] == 2 and general["difference_points"] == -50.0


def test_no_general_question_names_a_fact_the_benchmark_tells():
    told = {v.lower() for k in (*TUNING, *REPORT) for row in k.values for v in row}
    assert not any(re.search(rf"\b{re.escape(v)}\b", q.lower()) for q, _ in (*GENERAL, *GENERAL_TUNING) for v in told)


def test_a_miss_is_blamed_on_the_opening_only_when_the_reply_s_words_make_the_answer_much_less_likely():
    def miss(nll, reply_nll):
        return dict(exact=False, nll=nll, reply_nll=reply_nll)

    rows = [miss(2.0, 2.0 + OPENING_GAP + 0.5), miss(2.0, 2.2), miss(3.0, 1.0), dict(exact=True, nll=1, reply_nll=9)]
    assert miss_causes(rows) == {"misses": 3, "opening": 1, "value": 2}
