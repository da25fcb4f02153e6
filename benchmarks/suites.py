"""`python -m benchmarks suites`: LangChain's standard chat-model suites on ParametricMemory and ChatHuggingFace.

Both run the default model (SmolLM2-135M-Instruct) on this machine: ParametricMemory through
tests/test_langchain_standard.py (every capability flag on), ChatHuggingFace over a transformers
pipeline through `benchmarks/chat_huggingface_suites.py` (flags at the suites' defaults).
Each suite runs in its own pytest process, from the checkout's root; outcomes are read from its JUnit XML
report. Needs the `test` and `compare` extras.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks import common
from templora_memory.errors import InvalidInputError

SUITES = {
    "ParametricMemory": "tests/test_langchain_standard.py",
    "ChatHuggingFace": "benchmarks/chat_huggingface_suites.py",
}
"""Each suite's pytest file, relative to the checkout's root (`common.REPO`)."""
OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed", "error")


def add_parser(subparsers) -> None:
    """Register `suites`."""
    parser = subparsers.add_parser("suites", help="LangChain standard suites: ParametricMemory vs ChatHuggingFace")
    parser.add_argument("--out", default="results/suites.json", help="JSON results (default: results/suites.json)")
    parser.add_argument("--only", default=",".join(SUITES), help=f"suites to run (default: {','.join(SUITES)})")
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run each suite in its own pytest process, count outcomes, write JSON, print the table."""
    started = time.perf_counter()
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    result: dict[str, Any] = {"benchmark": "suites", "suites": {name: run_suite(SUITES[name]) for name in names}}
    result["seconds"] = round(time.perf_counter() - started, 1)
    common.write_json(args.out, result)
    print_table(result)
    return result


def run_suite(path: str) -> dict[str, Any]:
    """Run one pytest file of the checkout; its outcome counts, every test's outcome, each skip or xfail's reason."""
    if not (common.REPO / path).is_file():
        raise InvalidInputError(f"{common.REPO / path} not found: the suites run from a full checkout")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        started = time.perf_counter()
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", path]
        subprocess.run(command, check=False, cwd=common.REPO)
        seconds = round(time.perf_counter() - started, 1)
        tests = read_report(report)
    counts = Counter(test["outcome"] for test in tests)
    return {"file": path, "seconds": seconds, "counts": {o: counts.get(o, 0) for o in OUTCOMES}, "tests": tests}


def read_report(report: Path) -> list[dict[str, str]]:
    """Each test case of a JUnit XML report: name, outcome (passed/failed/skipped/xfailed/error) and reason."""
    tests = []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        outcome, reason = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                reason = (child.get("message") or "").splitlines()[0][:200] if child.get("message") else ""
                kind = child.get("type") or ""
                outcome = {"failure": "failed", "error": "error"}.get(child.tag) or (
                    "xfailed" if kind == "pytest.xfail" else "skipped"
                )
        tests.append({"name": f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}", "outcome": outcome})
        if reason:
            tests[-1]["reason"] = reason
    return tests


def print_table(result: dict[str, Any]) -> None:
    """Outcome counts per suite, then every skip and xfail with its reason."""
    print(f"{'chat model':<18} " + " ".join(f"{o:>8}" for o in OUTCOMES) + f" {'seconds':>8}")
    for name, suite in result["suites"].items():
        print(f"{name:<18} " + " ".join(f"{suite['counts'][o]:>8}" for o in OUTCOMES) + f" {suite['seconds']:>8}")
    for name, suite in result["suites"].items():
        for test in suite["tests"]:
            if test["outcome"] in ("xfailed", "skipped", "failed", "error"):
                print(f"{name}: {test['outcome']:<8} {test['name']}: {test.get('reason', '')}")
