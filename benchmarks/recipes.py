"""`python -m benchmarks recipes`: compare training recipes from their `locomo` results, one row per run.

A recipe is the training part of a run's config (learning rate, epochs, rank, target modules, KL
weight, synthetic questions, the probes' distillation, replay and anchors, the write passes). For each
result file this prints what the recipe changed from the defaults, the gold-answer NLL per condition,
the share of questions on which the adapter beat the window alone and the control adapter (the same
question, paired), and the training seconds per 1K tokens written, so a sweep reads as one table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.locomo import paired
from benchmarks.locomo_data import SCORED_CATEGORIES
from templora_memory.config import TempLoraConfig

RECIPE_FIELDS = (
    "learning_rate",
    "epochs",
    "warmup_chunks",
    "lora_rank",
    "lora_alpha",
    "target_modules",
    "kl_weight",
    "synthetic_questions",
    "probe_questions",
    "probe_writer",
    "distill_weight",
    "distill_temperature",
    "replay_probes",
    "anchor_probes",
    "lora_dropout",
    "train_precision",
    "context_gradients",
)


def add_parser(subparsers) -> None:
    """Register `recipes`."""
    parser = subparsers.add_parser("recipes", help="one table comparing `locomo` results of several recipes")
    parser.add_argument("results", nargs="+", help="JSON files written by `python -m benchmarks locomo --out`")
    parser.add_argument("--form", default="chat", help="question form compared (default: chat)")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Read each result, print one row per recipe and each one's paired difference to the first, write the rows."""
    rows = [row(Path(path), args.form) for path in args.results]
    print(table(rows))
    first = json.loads(Path(args.results[0]).read_text(encoding="utf-8"))
    for path, r in zip(args.results[1:], rows[1:], strict=True):
        r["against_first"] = paired_difference(first, json.loads(Path(path).read_text(encoding="utf-8")), args.form)
        d = r["against_first"]
        print(
            f"{path} - {args.results[0]}: adapter NLL {d['mean']:+.3f} per question ({args.form}, {d['questions']} "
            f"paired), 95 % bootstrap CI [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}], lower on {d['lower']}"
        )
    if args.out:
        common.write_json(args.out, {"benchmark": "recipes", "form": args.form, "rows": rows})
    return rows


def row(path: Path, form: str) -> dict[str, Any]:
    """One recipe's summary: its changes from the defaults, NLL per condition, paired wins, training cost."""
    result = json.loads(path.read_text(encoding="utf-8"))
    if result.get("benchmark") != "locomo":
        raise SystemExit(f"{path} is not a `locomo` benchmark result (benchmark={result.get('benchmark')!r})")
    config, defaults = result["run"]["config"], TempLoraConfig().model_dump()
    changed = {k: config[k] for k in RECIPE_FIELDS if k in config and config[k] != defaults[k]}
    nll = {name: _form(summary, form)["nll"] for name, summary in result["conditions"].items()}
    wins = paired(result["questions"])
    written = sum(c["tokens_written"] for c in result["conversations"])
    seconds = sum(c["train_seconds"] for c in result["conversations"])
    return {
        "file": str(path),
        "recipe": changed,
        "nll": nll,
        "adapter_vs_window": wins.get("adapter_vs_window", {}).get(form),
        "adapter_vs_control": wins.get("adapter_vs_control", {}).get(form),
        "train_s_per_1k": round(1000 * seconds / written, 1) if written else None,
        "threads": result["run"].get("torch_threads"),
    }


def paired_difference(first: dict, other: dict, form: str, resamples: int = 5000) -> dict[str, Any]:
    """Adapter gold NLL of `other` minus `first` on the scored questions (categories 1, 2, 4, as the NLL columns)
    both asked (same conversation and question):
    the mean, a seeded percentile-bootstrap 95 % interval, and on how many `other` was lower."""
    ours, theirs = _adapter_nll(other, form), _adapter_nll(first, form)
    diffs = [ours[key] - theirs[key] for key in sorted(ours.keys() & theirs.keys())]
    if not diffs:
        raise SystemExit("the two results share no question: compare runs over the same conversations")
    return {
        "questions": len(diffs),
        "mean": round(sum(diffs) / len(diffs), 4),
        "ci95": common.bootstrap_ci(diffs, lambda sample: sum(sample) / len(sample), resamples),
        "lower": sum(d < 0 for d in diffs),
    }


def _adapter_nll(result: dict, form: str) -> dict[tuple[str, str], float]:
    return {
        (q["conversation"], q["question"]): q["nll"]
        for q in result["questions"]
        if q["condition"] == "adapter" and q["form"] == form and q["category"] in SCORED_CATEGORIES
    }


def _form(summary: dict[str, Any], form: str) -> dict[str, Any]:
    return summary if summary["form"] == form else summary.get(form, {"nll": None})


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per recipe, NLL of window / adapter / control and the adapter's paired wins."""
    lines = [
        "| recipe (changes from defaults) | window | adapter | control | adapter < window | adapter < control "
        "| train s/1K |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        recipe = ", ".join(f"{k}={v}" for k, v in r["recipe"].items()) or "defaults"
        nll = [_number(r["nll"].get(name)) for name in ("window", "adapter", "control")]
        wins = [_share(r["adapter_vs_window"]), _share(r["adapter_vs_control"])]
        lines.append(f"| {recipe} | {' | '.join(nll)} | {' | '.join(wins)} | {_number(r['train_s_per_1k'], 1)} |")
    return "\n".join(lines)


def _number(value: float | None, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if value is not None else "-"


def _share(value: float | None) -> str:
    return f"{value:.0%}" if value is not None else "-"
