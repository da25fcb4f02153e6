"""`python -m benchmarks locomo`: does the adapter remember a conversation that fell out of the prompt? (LoCoMo)

Each conversation is streamed turn by turn into one agent (speaker_a = user, speaker_b = assistant).
Each question is then asked as the next user turn ("chat" form) and as "Question: … Answer:" after the
history as plain text ("plain" form), never written into any adapter, under six conditions:
window (no adapter), adapter, control (another conversation's adapter), retrieval (BM25 top-k earlier
turns + newest turns, same token budget as the window), adapter_retrieval (that prompt with the adapter)
and full (full history cut to the model context).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks import locomo_data as data
from templora_memory.engine import MemoryEngine
from templora_memory.generation import Sampling
from templora_memory.kv_cache import PromptCache
from templora_memory.message import Message
from templora_memory.recall import bm25_top
from templora_memory.replies import ReplyStream
from templora_memory.window import window_start

DEFAULT_DATA = common.LOCOMO_DEV
CONDITIONS = ("window", "adapter", "control", "retrieval", "adapter_retrieval", "full")
FORMS = ("chat", "plain")


def add_parser(subparsers) -> None:
    """Register `locomo`."""
    parser = subparsers.add_parser(
        "locomo", help="conversation recall on LoCoMo: answer NLL and token F1 per condition"
    )
    common.add_common_options(parser, DEFAULT_DATA, "results/locomo.json")
    parser.add_argument("--max-tokens", type=int, default=None, help="conversation tokens streamed (default: all)")
    parser.add_argument("--max-questions", type=int, default=None, help="questions per conversation (default: all)")
    parser.add_argument("--max-conversations", type=int, default=None, help="conversations evaluated (default: all)")
    parser.add_argument(
        "--conditions", default=",".join(CONDITIONS), help="comma-separated subset of " + ",".join(CONDITIONS)
    )
    parser.add_argument(
        "--forms", default=",".join(FORMS), help="question forms: chat (next user turn), plain (Question:/Answer:)"
    )
    parser.add_argument("--top-k", type=int, default=5, help="turns retrieved by BM25 (default: 5)")
    parser.add_argument("--answer-tokens", type=int, default=32, help="tokens generated per answer (default: 32)")
    parser.add_argument(
        "--full-tokens", type=int, default=None, help="prompt cap of 'full' (default: the model context)"
    )
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark from parsed options, write JSON and plot, print the table."""
    started = time.perf_counter()
    items = data.load(args.data)
    engine = common.engine_from_args(args)
    options = Options(
        conditions=_subset(args.conditions, CONDITIONS, "--conditions"),
        forms=_subset(args.forms, FORMS, "--forms"),
        top_k=args.top_k,
        answer_tokens=args.answer_tokens,
        full_tokens=args.full_tokens,
    )
    result = run(engine, items, args.max_conversations, args.max_tokens, args.max_questions, options, args.quiet)
    result["run"] = common.run_info(engine, args, started)
    common.write_json(args.out, result)
    plot(result, common.plot_path(args))
    print(table(result))
    return result


@dataclass(frozen=True)
class Options:
    """How questions are asked and scored."""

    conditions: tuple[str, ...] = CONDITIONS
    forms: tuple[str, ...] = FORMS
    top_k: int = 5
    answer_tokens: int = 32
    full_tokens: int | None = None


@dataclass
class Dialogue:
    """One conversation streamed into an agent: its messages, their token sizes, and where the window starts."""

    name: str
    agent: str
    user: str
    assistant: str
    system: list[Message]
    lines: list[data.Line]
    sizes: list[int]
    start: int

    @property
    def messages(self) -> list[Message]:
        return [line.message for line in self.lines]


def run(engine, items, max_conversations, max_tokens, max_questions, options: Options, quiet=False) -> dict[str, Any]:
    """Stream the conversations, ask their questions under every condition, and summarise."""
    evaluated = items[:max_conversations]
    pool = evaluated if len(evaluated) > 1 or "control" not in options.conditions else items[:2]
    # with one conversation evaluated, the next one in the file is streamed to train its control adapter
    dialogues = [stream(engine, item, max_tokens, quiet) for item in pool]
    records = []
    for index, (item, dialogue) in enumerate(zip(evaluated, dialogues, strict=False)):
        control = dialogues[(index + 1) % len(dialogues)].agent if len(dialogues) > 1 else None
        seen = {line.dia_id for line in dialogue.lines}
        asked = data.questions(item, seen)[:max_questions]
        bar = common.progress(asked, quiet, desc=f"questions {dialogue.name}", unit="q")
        caches: dict[tuple[str, str], PromptCache] = {}  # per (condition, form): the window prefix is shared
        for question in bar:
            records.extend(ask_all(engine, dialogue, question, control, options, caches))
    return {
        "benchmark": "locomo",
        "conditions": summarize(records, options),
        "paired": paired(records),
        "conversations": [_describe(engine, d) for d in dialogues],
        "questions": records,
    }


def stream(engine: MemoryEngine, item: dict[str, Any], max_tokens: int | None, quiet: bool) -> Dialogue:
    """Write the conversation, session by session, into its own agent; keep what the window still holds."""
    name = str(item.get("sample_id", "conversation"))
    user, assistant = data.speakers(item)
    system = [
        {"role": "system", "content": f"A conversation between {user} (the user) and {assistant} (the assistant)."}
    ]
    sessions = data.lines(item)
    flat = [line for session in sessions for line in session]
    sizes = engine.turn_tokens([line.message for line in flat])
    keep = common.prefix_within(sizes, max_tokens)
    flat, sizes = flat[:keep], sizes[:keep]
    agent, sent = f"locomo-{name}", 0
    for session in common.progress(sessions, quiet, desc=f"writing {name}", unit="session"):
        batch = [line.message for line in session][: keep - sent]
        if batch:
            engine.add_turns(agent, system + batch)
        sent += len(batch)
    start = len(flat) - len(engine.window(agent))  # add_turns wrote every token the window no longer holds
    return Dialogue(name, agent, user, assistant, system, flat, sizes, start)


# ----- asking -----------------------------------------------------------------------------------


def ask_all(
    engine,
    dialogue: Dialogue,
    question: data.Question,
    control: str | None,
    options: Options,
    caches: dict[tuple[str, str], PromptCache] | None = None,
) -> list[dict]:
    """One record per (condition, form): gold-answer NLL, generated answer and its LoCoMo score.

    `caches` (one per condition and form, kept across a dialogue's questions) spare recomputing shared prefixes.
    """
    caches = caches if caches is not None else {}
    in_window = set(question.evidence) <= {line.dia_id for line in dialogue.lines[dialogue.start :]}
    adapters = {"adapter": dialogue.agent, "control": control, "adapter_retrieval": dialogue.agent}
    records = []
    for condition in options.conditions:
        if condition == "control" and control is None:
            continue
        agent = adapters.get(condition)  # None: the base model
        history = (
            dialogue.messages[dialogue.start :]
            if condition in ("window", "adapter", "control")
            else _history(engine, dialogue, question, condition, options)
        )
        for form in options.forms:
            prompt, gold = _prompt(engine, dialogue, history, question, form)
            cache = caches.setdefault((condition, form), PromptCache())
            nll, prediction = answer(engine, agent, prompt, gold, options.answer_tokens, cache)
            records.append(
                {
                    "conversation": dialogue.name,
                    "question": question.question,
                    "answer": question.answer,
                    "category": question.category,
                    "in_window": in_window,
                    "condition": condition,
                    "form": form,
                    "prompt_tokens": len(prompt),
                    "nll": round(nll, 4),
                    "prediction": prediction,
                    "score": round(data.score(prediction, question), 4),
                }
            )
    return records


def _history(engine, dialogue: Dialogue, question: data.Question, condition: str, options: Options) -> list[Message]:
    if condition in ("retrieval", "adapter_retrieval"):
        return retrieved_history(engine, dialogue, question.question, options.top_k)
    limit = min(options.full_tokens or engine.context_tokens, engine.context_tokens)
    budget = limit - options.answer_tokens - 256  # room for the system message, question and headers
    return dialogue.messages[window_start(dialogue.sizes, budget) :]


def retrieved_history(engine: MemoryEngine, dialogue: Dialogue, query: str, top_k: int) -> list[Message]:
    """BM25 top-k turns from before the window (dated, in order), then the newest turns, in the window's budget."""
    budget = sum(dialogue.sizes[dialogue.start :])
    chosen, used = [], 0
    corpus = [line.message["content"] for line in dialogue.lines[: dialogue.start]]
    for index in bm25_top(corpus, query, top_k):  # best first
        (size,) = engine.turn_tokens([_dated(dialogue.lines[index])])
        if used + size <= budget:
            chosen, used = [*chosen, index], used + size
    recent = max(dialogue.start, window_start(dialogue.sizes, budget - used))
    return [_dated(dialogue.lines[i]) for i in sorted(chosen)] + dialogue.messages[recent:]


def _dated(line: data.Line) -> Message:
    """The line's message, starting with its session's date (first lines of a session already do)."""
    content = line.message["content"]
    return (
        line.message
        if not line.date or content.startswith(f"[{line.date}]")
        else {**line.message, "content": f"[{line.date}] {content}"}
    )


def _prompt(engine, dialogue: Dialogue, history: list[Message], question: data.Question, form: str):
    """(prompt ids, gold answer ids) for the chat form or the plain Question:/Answer: form."""
    gold = engine.encode(" " + question.answer)
    if form == "chat":
        ask = {"role": "user", "content": f"{dialogue.user}: {question.question}"}
        prompt = engine.render_prompt(dialogue.system, [*history, ask]) + engine.encode(f"{dialogue.assistant}:")
        return prompt, gold
    lines = "\n".join(m["content"] for m in history)
    text = f"{dialogue.system[0]['content']}\n\n{lines}\n\nQuestion: {question.question}\nAnswer:"
    return engine.encode(text), gold


def answer(
    engine: MemoryEngine,
    agent: str | None,
    prompt: list[int],
    gold: list[int],
    max_tokens: int,
    cache: PromptCache | None = None,
) -> tuple[float, str]:
    """Mean NLL of the gold answer and a greedy one-line answer, from one shared prompt pass.

    Nothing is remembered: the agent's adapter is only read. Scoring and generation share `cache`, so the
    prompt runs once; a `cache` kept for the same agent across questions also holds the previous prompt's
    states, so only the tokens after the shared prefix (the question) are run again.
    """
    cache = cache if cache is not None else PromptCache()
    nll = common.mean_nll(engine.log_likelihood(agent, prompt, gold, cache=cache))
    stream = engine.stream_completion(agent, prompt, Sampling(max_new_tokens=max_tokens), cache=cache)
    return nll, first_line(stream)


def first_line(stream: ReplyStream) -> str:
    """The first non-empty line of a streamed reply (leading newlines skipped); the stream is closed there."""
    text = ""
    for piece in stream:
        text += piece
        if "\n" in text.lstrip():
            stream.close()
            break
    return text.lstrip().split("\n")[0].strip()


# ----- results ----------------------------------------------------------------------------------


def summarize(records: list[dict], options: Options) -> dict[str, Any]:
    """Per condition: the chat form's summary at top level, the plain form's under 'plain'."""
    out = {}
    for condition in options.conditions:
        forms = {f: [r for r in records if r["condition"] == condition and r["form"] == f] for f in options.forms}
        if not any(forms.values()):
            continue
        main_form = "chat" if "chat" in forms else options.forms[0]
        out[condition] = {"form": main_form, **_summary(forms[main_form])}
        out[condition].update({f: _summary(rows) for f, rows in forms.items() if f != main_form})
    return out


PAIRS = (("adapter", "window"), ("adapter", "control"), ("control", "window"), ("adapter_retrieval", "retrieval"))
"""(condition, reference) pairs compared question by question."""


def paired(records: list[dict]) -> dict[str, dict[str, float]]:
    """Per pair and form: the share of category 1/2/4 questions whose gold NLL is lower than the reference's."""
    nll = {(r["conversation"], r["question"], r["form"], r["condition"]): r["nll"] for r in records}
    scored = {(r["conversation"], r["question"], r["form"]) for r in records if r["category"] in data.SCORED_CATEGORIES}
    out: dict[str, dict[str, float]] = {}
    for condition, reference in PAIRS:
        for form in FORMS:
            both = [k for k in scored if k[2] == form and (*k, condition) in nll and (*k, reference) in nll]
            if both:
                wins = sum(nll[(*k, condition)] < nll[(*k, reference)] for k in both)
                out.setdefault(f"{condition}_vs_{reference}", {})[form] = round(wins / len(both), 4)
    return out


def _summary(rows: list[dict]) -> dict[str, Any]:
    """nll / f1 over categories 1, 2, 4; per category; questions outside the window; adversarial apart."""
    scored = [r for r in rows if r["category"] in data.SCORED_CATEGORIES]
    categories = {
        data.CATEGORY_NAMES[c]: _means([r for r in rows if r["category"] == c])
        for c in (*data.SCORED_CATEGORIES, data.ADVERSARIAL)
    }
    return {
        **_means(scored),
        "by_category": categories,
        "outside_window": _means([r for r in scored if not r["in_window"]]),
    }


def _means(rows: list[dict]) -> dict[str, Any]:
    if not rows:
        return {"nll": None, "f1": None, "n": 0}
    return {
        "nll": round(statistics.fmean(r["nll"] for r in rows), 4),
        "f1": round(statistics.fmean(r["score"] for r in rows), 4),
        "n": len(rows),
    }


def _describe(engine: MemoryEngine, dialogue: Dialogue) -> dict[str, Any]:
    return {
        "name": dialogue.name,
        "turns": len(dialogue.lines),
        "tokens": sum(dialogue.sizes),
        "window_turns": len(dialogue.lines) - dialogue.start,
        **engine.stats(dialogue.agent).model_dump(exclude={"agent_id"}),
    }


def _subset(text: str, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [c for c in chosen if c not in allowed]
    if unknown or not chosen:
        raise SystemExit(f"{option} {text!r}: choose from {','.join(allowed)}")
    return chosen


def table(result: dict[str, Any]) -> str:
    """NLL and F1 per condition and form, over categories 1/2/4, outside the window, and adversarial."""
    lines = [
        f"{'condition':<10} {'form':<6} {'nll':>7} {'f1':>7} {'n':>4}  "
        f"{'out-nll':>7} {'out-f1':>7} {'out-n':>5}  {'adv-acc':>7}"
    ]
    for name, summary in result["conditions"].items():
        for form, s in [(summary["form"], summary), *((f, summary[f]) for f in FORMS if f in summary)]:
            out, adv = s["outside_window"], s["by_category"]["adversarial"]
            lines.append(
                f"{name:<10} {form:<6} {_f(s['nll'])} {_f(s['f1'])} {s['n']:>4}  "
                f"{_f(out['nll'])} {_f(out['f1'])} {out['n']:>5}  {_f(adv['f1'])}"
            )
    for name, shares in result.get("paired", {}).items():
        lower = ", ".join(f"{share:.0%} ({form})" for form, share in shares.items())
        lines.append(f"{name.replace('_vs_', ' vs ')}: lower gold NLL on {lower} of the questions")
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return f"{value:>7.3f}" if value is not None else f"{'-':>7}"


def plot(result: dict[str, Any], path: Path) -> Path:
    """Gold-answer NLL (left) and answer F1 (right) per condition, one bar per question form."""
    fig, axes = common.figure(2)
    names = list(result["conditions"])
    forms = [result["conditions"][names[0]]["form"]] + [
        f for f in FORMS if names and f in result["conditions"][names[0]]
    ]
    width = 0.8 / max(1, len(forms))
    for axis, metric in zip(axes, ("nll", "f1"), strict=True):
        for j, form in enumerate(forms):
            values = [_form(result["conditions"][n], form)[metric] or 0.0 for n in names]
            axis.bar([i + j * width for i in range(len(names))], values, width=width, label=f"{form} form")
        axis.set_xticks([i + width * (len(forms) - 1) / 2 for i in range(len(names))], names)
        axis.set(
            ylabel=metric,
            title=f"LoCoMo categories 1/2/4: {'gold-answer NLL (lower is better)' if metric == 'nll' else 'token F1'}",
        )
        axis.legend()
    return common.save_figure(fig, path)


def _form(summary: dict[str, Any], form: str) -> dict[str, Any]:
    return summary if summary["form"] == form else summary[form]
