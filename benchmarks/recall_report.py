"""The recall benchmark's summaries: absolute hits with 95 % bootstrap intervals, the share of the ceiling's hits,
gap closed only where the ceiling answers, and general ability as a paired difference."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks import common

CEILING, FLOOR = "in_context", "window"
OPENING_GAP = 1.0
"""Nats per answer token by which a reply's own opening must trail the neutral prefix to count as leading away."""


def summarize(records: list[dict], conditions, distances: list[int]) -> dict[str, Any]:
    """Per condition and distance: exact hits (with an interval), their share of the ceiling's hits on the same
    questions (paired interval), mean NLL, and the median gap closed over the questions the ceiling answers."""
    by_key = {(r["scenario"], r["question"], r["condition"]): r for r in records}
    out: dict[str, Any] = {}
    for condition in conditions:
        out[condition] = {}
        for distance in distances:
            rows = [r for r in records if r["condition"] == condition and r["chunks_back"] == distance]
            if rows:
                out[condition][str(distance)] = _cell(rows, by_key)
    return out


def _cell(rows: list[dict], by_key: dict) -> dict[str, Any]:
    hits = [float(r["exact"]) for r in rows]
    ceiling = [by_key.get((r["scenario"], r["question"], CEILING)) for r in rows]
    pairs = [(float(r["exact"]), float(c["exact"])) for r, c in zip(rows, ceiling, strict=True) if c]
    gaps = [g for r in rows if (g := _gap(by_key, r)) is not None]
    return {
        "questions": len(rows),
        "hits": int(sum(hits)),
        "exact": round(sum(hits) / len(rows), 3),
        "exact_ci95": common.bootstrap_ci(hits, statistics.fmean),
        "of_ceiling": _share(pairs),
        "of_ceiling_ci95": common.bootstrap_ci(pairs, _share),
        "nll": round(statistics.fmean(r["nll"] for r in rows), 3),
        "reply_nll": round(statistics.fmean(r["reply_nll"] for r in rows), 3),
        "misses": miss_causes(rows),
        "gap_closed_median": round(statistics.median(gaps), 3) if gaps else None,
        "gap_questions": len(gaps),
    }


def miss_causes(rows: list[dict]) -> dict[str, int]:
    """Wrong replies split by why (`benchmarks.recall.along_reply`): "opening", the answer is more than
    `OPENING_GAP` nats per token less likely after the reply's own words than after the neutral prefix (the reply
    took an opening that leads away from it); "value", it is about as likely there (the model prefers another
    value where the fact would go)."""
    misses = [r for r in rows if not r["exact"]]
    opening = sum(r["reply_nll"] - r["nll"] > OPENING_GAP for r in misses)
    return {"misses": len(misses), "opening": opening, "value": len(misses) - opening}


def _share(pairs) -> float | None:
    """This condition's hits over the ceiling's, on the same questions (None where the ceiling hit none)."""
    ceiling = sum(c for _, c in pairs)
    return round(sum(a for a, _ in pairs) / ceiling, 3) if ceiling else None


def _gap(by_key: dict, record: dict) -> float | None:
    """(window NLL − NLL) / (window NLL − in-context NLL), only where the ceiling's reply answers and it reads the
    answer as likelier than the window does; None elsewhere."""
    key = (record["scenario"], record["question"])
    floor, ceiling = by_key.get((*key, FLOOR)), by_key.get((*key, CEILING))
    if floor is None or ceiling is None or not ceiling["exact"] or floor["nll"] - ceiling["nll"] < 0.1:
        return None
    return (floor["nll"] - record["nll"]) / (floor["nll"] - ceiling["nll"])


def summarize_general(rows: list[dict]) -> dict[str, Any]:
    """Hits on the general questions without and with the adapter, and the paired difference in points."""
    window = {(r["scenario"], r["question"]): float(r["exact"]) for r in rows if r["condition"] == "window"}
    adapter = {(r["scenario"], r["question"]): float(r["exact"]) for r in rows if r["condition"] == "adapter"}
    pairs = [(adapter[k], window[k]) for k in sorted(window.keys() & adapter.keys())]
    difference = lambda sample: 100 * statistics.fmean(a - w for a, w in sample)  # noqa: E731
    return {
        "questions": len(pairs),
        "window": int(sum(w for _, w in pairs)),
        "adapter": int(sum(a for a, _ in pairs)),
        "difference_points": round(difference(pairs), 1) if pairs else None,
        "difference_ci95": common.bootstrap_ci(pairs, difference),
    }


def near_misses(records: list[dict], condition: str = "adapter", most: int = 8) -> list[dict]:
    """The condition's wrong replies whose answer NLL is lowest: where the fact was likely after the answer's
    opening but the reply did not take that opening (what to read when replies miss facts the adapter holds)."""
    misses = sorted((r for r in records if r["condition"] == condition and not r["exact"]), key=lambda r: r["nll"])
    return [{k: r[k] for k in ("question", "answer", "nll", "reply_nll", "reply")} for r in misses[:most]]


def table(result: dict[str, Any]) -> str:
    """Hits, share of the ceiling, NLL and gap closed per condition and distance, then general ability and cost."""
    lines = [
        f"split: {result['split']}",
        "| condition | chunks back | exact hits [95 % CI] | of ceiling's hits [95 % CI] | answer NLL | answer NLL "
        "along the reply | misses: opening / value | gap closed (median, ceiling answers) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for condition, by_distance in result["conditions"].items():
        for distance, row in by_distance.items():
            gap = "-" if row["gap_closed_median"] is None else f"{100 * row['gap_closed_median']:.0f} %"
            lines.append(
                f"| {condition} | {distance} | {row['hits']}/{row['questions']} {_interval(row['exact_ci95'])} "
                f"| {_percent(row['of_ceiling'])} {_interval(row['of_ceiling_ci95'])} | {row['nll']:.3f} "
                f"| {row['reply_nll']:.3f} | {row['misses']['opening']} / {row['misses']['value']} "
                f"| {gap} ({row['gap_questions']} q) |"
            )
    general = result["general"]
    lines.append(
        f"\ngeneral questions (disjoint from the anchors), hits: window {general['window']}/{general['questions']}, "
        f"adapter {general['adapter']}/{general['questions']}, difference {general['difference_points']} points "
        f"{_interval(general['difference_ci95'], scale=1)}"
    )
    lines.append("\nadapter misses with the lowest answer NLL (NLL, along the reply; question → reply):")
    lines += [
        f"  {m['nll']:.2f}, {m['reply_nll']:.2f} {m['question']} [{m['answer']}] → {m['reply'][:70]!r}"
        for m in result["near_misses"]
    ]
    writing = result["writing"]
    lines.append(f"writing: {writing['train_s_per_1k']} s per 1K tokens ({writing['tokens_written']} tokens)")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def _interval(bounds: list, scale: float = 100) -> str:
    low, high = bounds
    return "[-]" if low is None else f"[{scale * low:.0f}, {scale * high:.0f}]"


def plot(result: dict[str, Any], path: Path) -> Path:
    """Exact match per condition, grouped by how many chunks back the fact was."""
    fig, (axis,) = common.figure(1, width=8.0)
    conditions = list(result["conditions"])
    distances = sorted({d for rows in result["conditions"].values() for d in rows}, key=int)
    width = 0.8 / max(1, len(conditions))
    for i, condition in enumerate(conditions):
        values = [result["conditions"][condition].get(d, {}).get("exact", 0) for d in distances]
        axis.bar([j + i * width for j in range(len(distances))], values, width=width, label=condition)
    axis.set_xticks([j + 0.4 - width / 2 for j in range(len(distances))], [f"{d} chunks back" for d in distances])
    axis.set(ylabel="exact match", title=f"facts told once, asked after they left the window ({result['split']})")
    axis.legend(fontsize=7)
    return common.save_figure(fig, path)
