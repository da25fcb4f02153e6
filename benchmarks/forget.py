"""`python -m benchmarks forget`: does forgetting a turn take its fact out of the adapter, and what does it cost?

Deletion, on the recall benchmark's scenarios (`benchmarks.recall_scenarios`; `--split tuning` by default, the split
choices may be made on): each conversation is written into an agent, then the exchange that told its newest fact is
forgotten (`MemoryEngine.forget_turns`) and the adapter rebuilt. For that fact, the answer's NLL after its neutral
prefix, the agent's window and the question in the prompt, is compared before the deletion, after the rebuild, and
with a control adapter written from the conversation without that exchange (never told it); the other facts' exact
hits are compared before and after. Each rebuild is timed twice: on an engine keeping snapshots every
`--snapshot-every` tokens, and on one keeping none (the rebuild starts from a new adapter).

Correction: "My daughter is called Mira.", a chunk of small talk, "Sorry, I misspoke: her name is Lina.", then small
talk until both left the window; the question is asked with the whole conversation in the prompt (the ceiling), with
the window and the adapter, and again after an explicit edit (the first telling forgotten, the adapter rebuilt).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

from benchmarks import common
from benchmarks.recall import DEFAULTS, ask, write
from benchmarks.recall_facts import SPLITS
from benchmarks.recall_scenarios import (
    ACKNOWLEDGEMENTS,
    PERSONAS,
    SMALL_TALK,
    Fact,
    Scenario,
    build_scenario,
    fill,
    small_talk,
)
from templora_memory.config import add_config_options, config_from_args
from templora_memory.engine import MemoryEngine

CORRECTIONS = (
    ("name", "My daughter is called {v}.", "Sorry, I misspoke: her name is {v}."),
    ("code", "The password for the cellar is {v}.", "Sorry, I misspoke: the cellar password is {v}."),
    ("place", "I left my horse at {v}.", "Sorry, I misspoke: my horse is at {v}."),
    ("number", "I have {v} sheep on my farm.", "Sorry, I misspoke: I have {v} sheep."),
)
"""Tuning-split kinds (`benchmarks.recall_facts.TUNING`), each told, then corrected in other words."""


def add_parser(subparsers) -> None:
    """Register `forget`."""
    parser = subparsers.add_parser("forget", help="forget the turn that told a fact: NLL vs a control, rebuild cost")
    parser.add_argument("--out", default="results/forget.json", help="JSON results (default: results/forget.json)")
    parser.add_argument("--model", default=None, help="base model (default: embedded)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--split", choices=sorted(SPLITS), default="tuning", help="facts to tell (default: tuning)")
    parser.add_argument("--conversations", type=int, default=2, help="recall scenarios (default: 2)")
    parser.add_argument("--distances", default="1,2", help="chunks each fact is pushed back (default: 1,2)")
    parser.add_argument("--corrections", type=int, default=3, help="correction cases, one kind each (default: 3)")
    parser.add_argument("--snapshot-every", type=int, default=128, help="snapshot_tokens of the snapshot engine")
    parser.add_argument("--scenario-seed", type=int, default=0, help="seed of the scenarios (default: 0)")
    parser.add_argument("--answer-tokens", type=int, default=24, help="greedy tokens per answer (default: 24)")
    add_config_options(parser, **DEFAULTS)
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run both measurements on two engines (snapshots on, off); write JSON and print the tables."""
    started = time.perf_counter()
    common.set_threads(args)
    config = config_from_args(args)
    snap = MemoryEngine(args.model, config.model_copy(update={"snapshot_tokens": args.snapshot_every}))
    plain = MemoryEngine(args.model, config.model_copy(update={"snapshot_tokens": 0}))
    result = run(snap, plain, args)
    result["run"] = common.run_info(snap, args, started)
    common.write_json(args.out, result)
    print(report(result))
    return result


def run(snap: MemoryEngine, plain: MemoryEngine, args) -> dict[str, Any]:
    """The deletions (`args.conversations` scenarios) and the correction cases (`args.corrections`), summarised."""
    options = SimpleNamespace(answer_tokens=args.answer_tokens, top_k=3)
    config = snap.config
    distances = sorted({int(d) for d in args.distances.split(",") if d.strip()})
    count = lambda messages: sum(snap.turn_tokens(messages))  # noqa: E731
    scenarios = [
        build_scenario(i, args.scenario_seed, distances, config.chunk_tokens, config.window_tokens, count, args.split)
        for i in range(args.conversations)
    ]
    deletions = [deletion(snap, plain, s, options) for s in common.progress(scenarios, args.quiet, desc="deleting")]
    cases = [correction(snap, i, config, options) for i in range(min(args.corrections, len(CORRECTIONS)))]
    result = {"benchmark": "forget", "split": args.split, "deletions": deletions, "corrections": cases}
    result["summary"] = summarize(deletions, cases)
    return result


def deletion(snap: MemoryEngine, plain: MemoryEngine, scenario: Scenario, options) -> dict[str, Any]:
    """Write the scenario, forget the exchange that told its newest fact, rebuild (timed on both engines), and ask."""
    target = min(scenario.facts, key=lambda fact: fact.chunks_back)
    at = _exchange(scenario, target)
    told = scenario.messages[at : at + 2]
    control = replace(
        scenario, name=f"{scenario.name}-control", messages=scenario.messages[:at] + scenario.messages[at + 2 :]
    )
    write(snap, control)
    write(snap, scenario)
    before = _by_question(ask(snap, scenario, None, ("adapter",), options))
    never_told = _by_question(ask(snap, replace(control, facts=[target]), None, ("adapter",), options))
    rebuilt = _forget(snap, scenario, told)
    after = _by_question(ask(snap, scenario, None, ("adapter",), options))
    write(plain, scenario)
    from_start = _forget(plain, scenario, told)
    others = [fact.question for fact in scenario.facts if fact is not target]
    return {
        "scenario": scenario.name,
        "fact": {"kind": target.kind, "value": target.value, "chunks_back": target.chunks_back},
        "nll": {
            "before": before[target.question]["nll"],
            "after": after[target.question]["nll"],
            "control": never_told[target.question]["nll"],
        },
        "hit": {"before": before[target.question]["exact"], "after": after[target.question]["exact"]},
        "others": {
            "questions": len(others),
            "before": sum(before[q]["exact"] for q in others),
            "after": sum(after[q]["exact"] for q in others),
            "nll_before": [before[q]["nll"] for q in others],
            "nll_after": [after[q]["nll"] for q in others],
        },
        "rebuild": {"snapshots": rebuilt, "no_snapshots": from_start},
    }


def correction(engine: MemoryEngine, index: int, config, options) -> dict[str, Any]:
    """Tell a fact, correct it a chunk later, push both out of the window; ask with the conversation in the prompt,
    with the window and the adapter, and again after the first telling is forgotten."""
    kind_name, telling, corrected = CORRECTIONS[index]
    kind = next(k for k in SPLITS["tuning"] if k.kind == kind_name)
    old, new = (v[0] for v in random.Random(f"correction:{index}").sample(kind.values, 2))
    first = [{"role": "user", "content": telling.format(v=old)}, {"role": "assistant", "content": ACKNOWLEDGEMENTS[0]}]
    second = [
        {"role": "user", "content": corrected.format(v=new)},
        {"role": "assistant", "content": ACKNOWLEDGEMENTS[1]},
    ]
    talk, count = small_talk(list(SMALL_TALK), random.Random(index)), lambda m: sum(engine.turn_tokens(m))  # noqa: E731
    gap, tail = fill(talk, config.chunk_tokens, count), fill(talk, config.window_tokens + 64, count)
    ask_ = kind.asks[0]
    facts = [Fact(kind_name, value, "", ask_.questions[0], ask_.answer_prefix, 1, kind.shape) for value in (new, old)]
    system = {"role": "system", "content": PERSONAS[index % len(PERSONAS)]}
    scenario = Scenario(f"correction-{index}", system, [*first, *gap, *second, *tail], facts)
    write(engine, scenario)
    told = _by_value(ask(engine, scenario, None, ("in_context", "adapter"), options), new)
    _forget(engine, scenario, first[:1])
    edited = _by_value(ask(engine, scenario, None, ("adapter",), options), new)
    return {"kind": kind_name, "old": old, "new": new, **told, "edit": edited["adapter"]}


def summarize(deletions: list[dict], cases: list[dict]) -> dict[str, Any]:
    """Sums and means over the conversations and the correction cases."""
    nll = {k: [d["nll"][k] for d in deletions] for k in ("before", "after", "control")}
    rebuilds = {k: [d["rebuild"][k] for d in deletions] for k in ("snapshots", "no_snapshots")}
    return {
        "deleted_nll_mean": {k: round(statistics.fmean(v), 3) for k, v in nll.items() if v},
        "after_minus_control": [round(a - c, 3) for a, c in zip(nll["after"], nll["control"], strict=True)],
        "deleted_hits": {k: sum(d["hit"][k] for d in deletions) for k in ("before", "after")},
        "others_hits": {k: sum(d["others"][k] for d in deletions) for k in ("before", "after")},
        "others_questions": sum(d["others"]["questions"] for d in deletions),
        "rebuild": {k: _rebuild_cost(v) for k, v in rebuilds.items()},
        "corrections": {
            condition: {value: sum(c[condition][value]["exact"] for c in cases) for value in ("new", "old")}
            for condition in ("in_context", "adapter", "edit")
        },
        "cases": len(cases),
    }


def report(result: dict[str, Any]) -> str:
    """The printed tables: per deletion, per correction case, and the sums."""
    lines = [
        "| scenario | fact (chunks back) | NLL before | after rebuild | control | hit before/after | others' hits "
        "before/after | others' NLL before/after | rebuild s (tokens), snapshots | no snapshots | history tokens |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for d in result["deletions"]:
        fact, nll, snap, plain = d["fact"], d["nll"], d["rebuild"]["snapshots"], d["rebuild"]["no_snapshots"]
        lines.append(
            f"| {d['scenario']} | {fact['kind']} {fact['value']!r} ({fact['chunks_back']}) | {nll['before']:.3f} "
            f"| {nll['after']:.3f} | {nll['control']:.3f} | {int(d['hit']['before'])}/{int(d['hit']['after'])} "
            f"| {d['others']['before']}/{d['others']['after']} of {d['others']['questions']} "
            f"| {_nlls(d['others']['nll_before'])} / {_nlls(d['others']['nll_after'])} | {snap['seconds']:.1f} "
            f"({snap['tokens']}) | {plain['seconds']:.1f} ({plain['tokens']}) | {snap['history_tokens']} |"
        )
    lines += ["", "| correction | old → new | ceiling new/old | adapter new/old | after edit new/old | NLL new, "
              "ceiling/adapter/edit |", "| --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for c in result["corrections"]:
        cells = [f"{int(c[k]['new']['exact'])}/{int(c[k]['old']['exact'])}" for k in ("in_context", "adapter", "edit")]
        nll = " / ".join(f"{c[k]['new']['nll']:.3f}" for k in ("in_context", "adapter", "edit"))
        lines.append(f"| {c['kind']} | {c['old']} → {c['new']} | {' | '.join(cells)} | {nll} |")
    summary = result["summary"]
    lines += ["", *(f"{key}: {value}" for key, value in summary.items())]
    return "\n".join(lines)


def _nlls(values: list[float]) -> str:
    return ", ".join(f"{value:.3f}" for value in values)


def _rebuild_cost(rebuilds: list[dict]) -> dict[str, Any]:
    """Seconds and tokens over the rebuilds, and seconds per 1K tokens of history and per 1K tokens retrained."""
    seconds, tokens = sum(r["seconds"] for r in rebuilds), sum(r["tokens"] for r in rebuilds)
    history = sum(r["history_tokens"] for r in rebuilds)
    return {
        "seconds": round(seconds, 1),
        "tokens_retrained": tokens,
        "history_tokens": history,
        "s_per_1k_history": round(1000 * seconds / max(1, history), 1),
        "s_per_1k_retrained": round(1000 * seconds / max(1, tokens), 1),
    }


def _forget(engine: MemoryEngine, scenario: Scenario, told: list[dict]) -> dict[str, Any]:
    """Forget the consecutive ledger turns that say what `told` says; time the rebuild to its end."""
    agent = f"recall-{scenario.name}"
    turns = engine.turns(agent)
    texts = [m["content"] for m in told]
    at = next(i for i in range(len(turns)) if [t.content for t in turns[i : i + len(texts)]] == texts)
    started = time.perf_counter()
    forgotten = engine.forget_turns(agent, [turn.id for turn in turns[at : at + len(texts)]])
    engine.wait(agent)
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "tokens": forgotten.rebuild_tokens,
        "from": forgotten.rebuilt_from,
        "history_tokens": sum(turn.tokens for turn in turns),
        "turns": forgotten.deleted,
    }


def _exchange(scenario: Scenario, fact: Fact) -> int:
    """Where the user turn and the reply that told `fact` start (its `telling` joins their texts)."""
    pairs = enumerate(zip(scenario.messages, scenario.messages[1:], strict=False))
    return next(i for i, (a, b) in pairs if f"{a['content']} / {b['content']}" == fact.telling)


def _by_question(records: list[dict]) -> dict[str, dict]:
    return {r["question"]: r for r in records}


def _by_value(records: list[dict], new: str) -> dict[str, dict]:
    """Per condition: the record of the new value's answer and the old one's (both asked by the same question)."""
    out: dict[str, dict] = {}
    for r in records:
        out.setdefault(r["condition"], {})["new" if r["answer"] == new else "old"] = r
    return out
