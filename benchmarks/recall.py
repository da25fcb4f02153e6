"""`python -m benchmarks recall`: is a fact told once answered after it has left the prompt? (needle in dialogue)

Seeded NPC conversations (`benchmarks.recall_scenarios`) tell facts of many kinds once each, then scripted
small talk pushes them 1, 4 and 16 chunks (plus the window) back; each fact is then asked in other words, as
the next user turn, under eight conditions that read the same conversation:

- `in_context`: the whole conversation in the prompt (the model's ceiling);
- `window`: the agent's window only, no adapter (the floor);
- `adapter`: the window with the conversation's adapter;
- `control`: the window with another conversation's adapter (style without the facts);
- `retrieval`: BM25 top-k turns that left the window, then the newest turns, in the window's token budget;
- `adapter_retrieval`: that prompt with the conversation's adapter;
- `window_recall`: the library's hybrid recall (`TempLoraConfig.recall_tokens`, default here 128) on top of the
  window: the old turns BM25 matches to the question, before the window, no adapter;
- `hybrid`: that prompt with the conversation's adapter (what a memory with `recall_tokens` set answers from).

`--split tuning` runs the facts a recipe may be tuned on, `--split report` (the default) the facts that are only
reported (`benchmarks.recall_facts`: no kind, value, wording or telling template in common).

Scores (`benchmarks.recall_report`): the greedy reply contains the answer (normalised exact match), with 95 %
bootstrap intervals and as a share of the ceiling's hits on the same questions; the answer's NLL after a
neutral answer prefix ("Your daughter's name is") and, lowest, after any of the greedy reply's first words
(the reply's own opening: when that is much higher, the reply took an opening that leads away from the fact; when
it is close, the model prefers another value there); gap closed = (window NLL − NLL) / (window NLL − in-context
NLL), over the questions the ceiling answers; and general ability (`benchmarks.general_checks`, kinds the
recipe's anchors never ask) with and without the adapter, as a paired difference.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace
from typing import Any

from benchmarks import common
from benchmarks.general_checks import SETS as GENERAL_SETS
from benchmarks.recall_facts import SPLITS
from benchmarks.recall_report import near_misses, plot, summarize, summarize_general, table
from benchmarks.recall_scenarios import Scenario, build_scenario, contains_answer
from templora_memory.config import add_config_options
from templora_memory.conversation import Conversation
from templora_memory.engine import MemoryEngine
from templora_memory.generation import CHAT_REPETITION_PENALTY, Sampling
from templora_memory.kv_cache import PromptCache
from templora_memory.message import Turn, said_by_assistant
from templora_memory.recall import HybridRecall, bm25_top
from templora_memory.window import window_start

CONDITIONS = ("in_context", "window", "adapter", "control", "retrieval", "adapter_retrieval", "window_recall", "hybrid")
DEFAULTS = dict(window_tokens=256, chunk_tokens=128, train_context_tokens=128, max_new_tokens=32, recall_tokens=128)
"""The issue's setting: a small window so that 16 chunks of small talk stay cheap to write on a CPU."""
ALONG_WORDS = 12
"""Reply words after which the answer's NLL is read (`along_reply`): the opening a reply takes before its value."""


def add_parser(subparsers) -> None:
    """Register `recall`."""
    parser = subparsers.add_parser("recall", help="needle in dialogue: facts told once, asked after they left")
    parser.add_argument("--out", default="results/recall.json", help="JSON results (default: results/recall.json)")
    parser.add_argument("--plot", default=None, help="PNG plot path (default: the --out path with .png)")
    parser.add_argument(
        "--model", default=None, help="base model: local dir, cached HF id or .gguf (default: embedded)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--split", choices=sorted(SPLITS), default="report", help="facts to tell (default: report)")
    parser.add_argument("--conversations", type=int, default=6, help="scenarios generated (default: 6)")
    parser.add_argument(
        "--general-questions", type=int, default=6, help="general questions per conversation (default: 6)"
    )
    parser.add_argument("--distances", default="1,4,16", help="chunks each fact is pushed back (default: 1,4,16)")
    parser.add_argument("--scenario-seed", type=int, default=0, help="seed of the generated scenarios (default: 0)")
    parser.add_argument("--answer-tokens", type=int, default=24, help="greedy tokens per answer (default: 24)")
    parser.add_argument("--top-k", type=int, default=3, help="turns retrieved by BM25 (default: 3)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help="subset of " + ",".join(CONDITIONS))
    add_config_options(parser, **DEFAULTS)
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run from parsed options; write JSON and plot, print the table."""
    started = time.perf_counter()
    engine = common.engine_from_args(args)
    conditions = tuple(c for c in args.conditions.split(",") if c)
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        raise common.InvalidInputError(f"--conditions {sorted(unknown)} unknown; choose from {', '.join(CONDITIONS)}")
    distances = sorted({int(d) for d in args.distances.split(",") if d.strip()})
    result = run(engine, args.conversations, distances, args.scenario_seed, conditions, args)
    result["run"] = common.run_info(engine, args, started)
    common.write_json(args.out, result)
    plot(result, common.plot_path(args))
    print(table(result))
    return result


def run(engine: MemoryEngine, conversations: int, distances: list[int], seed: int, conditions, options) -> dict:
    """Write every scenario into its own agent, ask its facts under each condition, and summarise."""
    config = engine.config
    count = lambda messages: sum(engine.turn_tokens(messages))  # noqa: E731
    scenarios = [
        build_scenario(i, seed, distances, config.chunk_tokens, config.window_tokens, count, options.split)
        for i in range(conversations)
    ]
    writing = [write(engine, s) for s in common.progress(scenarios, options.quiet, desc="writing", unit="conv")]
    records, general = [], []
    for index, scenario in enumerate(common.progress(scenarios, options.quiet, desc="asking", unit="conv")):
        control = _agent(scenarios[(index + 1) % len(scenarios)]) if len(scenarios) > 1 else None
        records += ask(engine, scenario, control, conditions, options)
        general += check_general(engine, scenario, _general_questions(index, options), options.answer_tokens)
    return {
        "benchmark": "recall",
        "split": options.split,
        "conditions": summarize(records, conditions, distances),
        "general": summarize_general(general),
        "near_misses": near_misses(records),
        "writing": _cost(writing),
        "questions": records,
        "general_checks": general,
    }


def _cost(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Tokens written and training seconds over every scenario, and seconds per 1K tokens written."""
    tokens, seconds = sum(s["tokens_written"] for s in stats), sum(s["train_seconds"] for s in stats)
    return {
        "tokens_written": tokens,
        "train_seconds": round(seconds, 1),
        "train_s_per_1k": round(1000 * seconds / max(1, tokens), 2),
    }


def _agent(scenario: Scenario) -> str:
    return f"recall-{scenario.name}"


def write(engine: MemoryEngine, scenario: Scenario) -> dict[str, Any]:
    """Stream the conversation into its agent and write everything the window no longer holds."""
    agent = _agent(scenario)
    engine.add_turns(agent, [scenario.system, *scenario.messages])
    engine.wait(agent)
    return engine.stats(agent).model_dump()


def ask(engine: MemoryEngine, scenario: Scenario, control: str | None, conditions, options) -> list[dict]:
    """One record per (fact, condition): does the greedy reply contain the answer, and the answer's NLL."""
    agent = _agent(scenario)
    window = engine.window(agent)
    left = scenario.messages[: len(scenario.messages) - len(window)]
    agents = {"adapter": agent, "control": control, "adapter_retrieval": agent, "hybrid": agent}
    caches: dict[str, PromptCache] = {}
    records = []
    for fact in scenario.facts:
        question = {"role": "user", "content": fact.question}
        history = {
            "in_context": scenario.messages,
            "retrieval": retrieved(engine, left, window, fact.question, options.top_k),
        }
        history["adapter_retrieval"] = history["retrieval"]
        history["window_recall"] = history["hybrid"] = [*recalled(engine, left, window, question), *window]
        for condition in conditions:
            if condition == "control" and control is None:
                continue
            turns = engine.renderer.turns([*history.get(condition, window), question])
            prompt = engine.renderer.prompt([scenario.system], turns)
            cache = caches.setdefault(condition, PromptCache())
            sampling = chat_sampling(options.answer_tokens, turns)
            reply, nll = answer(engine, agents.get(condition), prompt, fact, sampling, cache)
            along = along_reply(engine, agents.get(condition), prompt, reply, fact.value, cache)
            records.append(
                {
                    "scenario": scenario.name,
                    "kind": fact.kind,
                    "shape": fact.shape,
                    "chunks_back": fact.chunks_back,
                    "question": fact.question,
                    "answer": fact.value,
                    "condition": condition,
                    "prompt_tokens": len(prompt),
                    "reply": reply,
                    "exact": contains_answer(reply, fact.value),
                    "nll": round(nll, 4),
                    "reply_nll": along["nll"],
                    "reply_opening": along["opening"],
                }
            )
    return records


def retrieved(engine: MemoryEngine, left: list[dict], window: list[dict], query: str, top_k: int) -> list[dict]:
    """BM25 top-k turns from those that left the window (in order), then the newest turns, in the window's budget."""
    budget = sum(engine.turn_tokens(window))
    chosen, used = [], 0
    for index in bm25_top([m["content"] for m in left], query, top_k):
        (size,) = engine.turn_tokens([left[index]])
        if used + size <= budget:
            chosen, used = [*chosen, index], used + size
    sizes = engine.turn_tokens(window)
    recent = window_start(sizes, budget - used)
    return [left[i] for i in sorted(chosen)] + window[recent:]


def recalled(engine: MemoryEngine, left: list[dict], window: list[dict], question: dict) -> list[dict]:
    """The turns the library's hybrid recall puts before the window for this question (recall_tokens budget)."""
    if not engine.config.recall_tokens:
        return []
    recall, fresh = HybridRecall(engine.renderer, engine.config.recall_tokens), SimpleNamespace(archive_index=None)
    archived = Conversation(archive=list(left))
    return [turn.message for turn in recall.turns(archived, engine.renderer.turns([*window, question]), fresh)]


def chat_sampling(max_tokens: int, turns: list[Turn]) -> Sampling:
    """Greedy, with the chat model's repetition penalty counting what it counts in a reply: the assistant's turns."""
    return Sampling(max_tokens, repetition_penalty=CHAT_REPETITION_PENALTY, penalised=said_by_assistant(turns))


def answer(
    engine, agent: str | None, prompt: list[int], fact, sampling: Sampling, cache: PromptCache
) -> tuple[str, float]:
    """The greedy reply (as the chat model decodes) and the answer's mean NLL after the neutral prefix."""
    start = prompt + engine.encode(fact.answer_prefix)
    nll = common.mean_nll(engine.log_likelihood(agent, start, engine.encode(" " + fact.value), cache=cache))
    reply = "".join(engine.stream_completion(agent, prompt, sampling, cache=cache)).strip()
    return reply, nll


def along_reply(engine, agent: str | None, prompt: list[int], reply: str, value: str, cache: PromptCache) -> dict:
    """The answer's lowest mean NLL right after any of the reply's first `ALONG_WORDS` words, and those words: how
    close the reply's own path came to saying the fact (against the neutral prefix's NLL, whether a miss is the
    opening the reply took or the value it prefers there)."""
    words = reply.split()[:ALONG_WORDS]
    best = {"nll": float("inf"), "opening": ""}
    for count in range(len(words) + 1):
        opening = " ".join(words[:count])
        said = engine.encode(" " + value if count else value[:1].upper() + value[1:])
        nll = common.mean_nll(engine.log_likelihood(agent, prompt + engine.encode(opening), said, cache=cache))
        if nll < best["nll"]:
            best = {"nll": round(nll, 4), "opening": opening}
    return best


def _general_questions(index: int, options) -> list[tuple[str, tuple[str, ...]]]:
    """Conversation `index`'s share of its split's general questions: the next `general_questions` of them, in turn."""
    count, general = options.general_questions, GENERAL_SETS[options.split]
    return [general[(index * count + j) % len(general)] for j in range(count)]


def check_general(engine: MemoryEngine, scenario: Scenario, questions, max_tokens: int) -> list[dict]:
    """Everyday questions never about the conversation, after the agent's window, with and without its adapter."""
    agent, window = _agent(scenario), engine.window(_agent(scenario))
    rows = []
    for question, expected in questions:
        turns = engine.renderer.turns([*window, {"role": "user", "content": question}])
        prompt, sampling = engine.renderer.prompt([scenario.system], turns), chat_sampling(max_tokens, turns)
        for condition, reader in (("window", None), ("adapter", agent)):
            reply = "".join(engine.stream_completion(reader, prompt, sampling)).strip()
            rows.append(
                {
                    "scenario": scenario.name,
                    "question": question,
                    "condition": condition,
                    "reply": reply,
                    "exact": any(contains_answer(reply, answer) for answer in expected),
                }
            )
    return rows
