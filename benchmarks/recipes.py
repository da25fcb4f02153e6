"""`python -m benchmarks recipes`: compare training recipes from their `locomo` results, one row per run.

A recipe is the training part of a run's config (learning rate, epochs, rank, target modules, KL
weight, synthetic questions). For each result file this prints what the recipe changed from the
defaults, the gold-answer NLL per condition, the share of questions on which the adapter beat the
window alone and the control adapter (the same question, paired), and the training seconds per 1K
tokens written, so a sweep reads as one table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.locomo import paired
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
)


def add_parser(subparsers) -> None:
    """Register `recipes`."""
    parser = subparsers.add_parser("recipes", help="one table comparing `locomo` results of several recipes")
    parser.add_argument("results", nargs="+", help="JSON files written by `python -m benchmarks locomo --out`")
    parser.add_argument("--form", default="chat", help="question form compared (default: chat)")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Read each result, print one row per recipe, optionally write the rows."""
    rows = [row(Path(path), args.form) for path in args.results]
    print(table(rows))
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
