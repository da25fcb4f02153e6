"""Shared pieces of the benchmarks: data paths, config options, the engine, JSON output, plots, memory."""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import random
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from templora_memory.config import TempLoraConfig, add_config_options, config_from_args
from templora_memory.engine import MemoryEngine
from templora_memory.errors import InvalidInputError
from templora_memory.readout import mean_nll  # noqa: F401 (the benchmarks call common.mean_nll)

REPO = Path(__file__).resolve().parents[1]
"""The checkout the benchmarks run from."""
SHARED_DATA = REPO.parent / "shared" / "data"
"""Evaluation data next to the checkout (PG19, LoCoMo), read in place and never copied into the repo."""
LOCOMO_DEV = str(SHARED_DATA / "locomo" / "locomo_dev.json")

# ----- command-line options ---------------------------------------------------------------


def add_common_options(
    parser: argparse.ArgumentParser, data_default: str, out_default: str, **config_defaults: object
) -> None:
    """--data, --out, --plot, --model, --quiet, and one option per `TempLoraConfig` field (defaults overridable)."""
    parser.add_argument("--data", default=data_default, help=f"input data (default: {data_default})")
    parser.add_argument("--out", default=out_default, help=f"where to write the JSON results (default: {out_default})")
    parser.add_argument("--plot", default=None, help="PNG plot path (default: the --out path with .png)")
    parser.add_argument(
        "--model", default=None, help="base model: local dir, cached HF id or .gguf (default: embedded)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_config_options(parser, **config_defaults)


def existing_data(path: str | Path, expected: str) -> Path:
    """The --data path, or an `InvalidInputError` naming it and what to pass instead when it does not exist."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"--data {path} does not exist; pass --data PATH to {expected}")
    return path


def engine_from_args(args: argparse.Namespace) -> MemoryEngine:
    """Load the engine (base model + config) the benchmark runs on, with --threads torch threads."""
    set_threads(args)
    return MemoryEngine(model=args.model, config=config_from_args(args))


def set_threads(args: argparse.Namespace) -> None:
    """Apply --threads (torch's CPU threads) when given."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def plot_path(args: argparse.Namespace) -> Path:
    """The --plot path, or the --out path with a .png suffix."""
    return Path(args.plot) if args.plot else Path(args.out).with_suffix(".png")


# ----- token budgets, scores, progress ----------------------------------------------------


def prefix_within(sizes: Sequence[int], max_tokens: int | None) -> int:
    """How many leading turns (of these token sizes) fit in `max_tokens` tokens (all of them when None)."""
    used = 0
    for index, size in enumerate(sizes):
        used += size
        if max_tokens is not None and used > max_tokens:
            return index
    return len(sizes)


def bootstrap_ci(rows: Sequence, statistic: Callable[[Sequence], float | None], resamples: int = 2000) -> list:
    """A seeded percentile-bootstrap 95 % interval of `statistic` over resamples of `rows` (paired rows stay
    paired); resamples where the statistic is undefined (None) are left out."""
    rng = random.Random(0)
    values = sorted(
        v for v in (statistic(rng.choices(rows, k=len(rows))) for _ in range(resamples) if rows) if v is not None
    )
    if not values:
        return [None, None]
    return [round(values[int(0.025 * len(values))], 4), round(values[int(0.975 * len(values)) - 1], 4)]


def relative_change(base: float, new: float) -> float | None:
    """(new − base) / base in percent; negative means `new` is lower (better for NLL and PPL)."""
    return None if not base or math.isnan(base) else round(100.0 * (new - base) / base, 2)


def progress(items: Iterable, quiet: bool, **kwargs) -> tqdm:
    """A tqdm progress bar over `items` (disabled with --quiet)."""
    return tqdm(items, disable=quiet, dynamic_ncols=True, **kwargs)


# ----- memory -------------------------------------------------------------------------------


class PeakRSS:
    """Peak resident memory of this process during a block, above its resident memory at the start (MiB).

    Linux only: freed heap is first returned to the OS (`malloc_trim`), then the kernel's high-water mark
    (VmHWM) is reset by writing 5 to /proc/self/clear_refs; `peak_mib` is VmHWM − VmRSS(start) after the block.
    Elsewhere `peak_mib` stays None.
    """

    def __init__(self) -> None:
        self.peak_mib: float | None = None
        self._start: int | None = None

    def __enter__(self) -> PeakRSS:
        _malloc_trim()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._start = _status_kib("VmRSS")
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._start is not None:
            self.peak_mib = round((_status_kib("VmHWM") - self._start) / 1024, 1)


def rss_mib() -> float | None:
    """Resident memory of this process now (MiB; None where /proc is missing)."""
    try:
        return round(_status_kib("VmRSS") / 1024, 1)
    except OSError:
        return None


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ----- results ------------------------------------------------------------------------------


def run_info(engine: MemoryEngine, args: argparse.Namespace, started: float) -> dict[str, Any]:
    """What produced a result: model, config, command options, machine and duration."""
    options = {k: v for k, v in vars(args).items() if k not in TempLoraConfig.model_fields and not callable(v)}
    return {
        "model": engine.model_name,
        "config": engine.config.model_dump(),
        "options": options,
        "seconds": round(time.perf_counter() - started, 1),
        **machine_info(),
    }


def machine_info() -> dict[str, Any]:
    """The machine a result was measured on: platform, CPUs, load average at the end, torch threads."""
    return {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "torch_threads": _torch_threads(),
    }


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write the results as indented JSON (creating the folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return path


def figure(ncols: int, width: float = 6.0, height: float = 4.0):
    """A matplotlib figure with `ncols` side-by-side axes, on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def save_figure(fig, path: Path) -> Path:
    """Save the figure as PNG and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
