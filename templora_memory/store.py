"""`AgentStore`: each agent's memory on disk, one directory per agent, every write atomic.

Layout (one directory per agent, named by a hash of its id so no id can reach outside the store):

    <root>/templora-store.json          marks the directory as a store (format version)
    <root>/agents/<adapter name>/CURRENT    name of the committed version, replaced atomically
    <root>/agents/<adapter name>/v00000007/ adapter_model.safetensors + adapter_config.json (plain peft),
                                            replay.pt (probes kept for replay, when distilling),
                                            optimizer.pt, state.json (turns, window, pending tokens, config)
    <root>/agents/<adapter name>/journal.jsonl  turns received since that commit, one JSON line each

A commit writes a new version directory (unchanged weight files are hard-linked from the previous
one), fsyncs it, then atomically replaces CURRENT: a crash at any point leaves the previous commit
intact, and turns received after it are replayed from the journal on the next load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from templora_memory.errors import StoreError

FORMAT_VERSION = 1
MARKER = "templora-store.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
OPTIMIZER = "optimizer.pt"
REPLAY = "replay.pt"
STATE = "state.json"
JOURNAL = "journal.jsonl"
CURRENT = "CURRENT"
WEIGHT_FILES = (ADAPTER_WEIGHTS, ADAPTER_CONFIG, OPTIMIZER, REPLAY)


def store_key(agent_id: str) -> str:
    """The agent's directory name in a store: a hash of its id, so no id can reach outside the store."""
    return "agent_" + hashlib.sha256(agent_id.encode()).hexdigest()[:24]


@dataclass
class Weights:
    """An adapter's trained state: peft-format LoRA tensors, its peft config, and the optimizer state."""

    adapter: dict[str, torch.Tensor]
    adapter_config: dict[str, Any]
    optimizer: dict[str, Any] | None
    replay: list[dict[str, torch.Tensor]] = field(default_factory=list)
    """Taught probes kept for replay (tensors only), when context distillation keeps any."""


@dataclass
class StoredAgent:
    """One agent as last committed, plus the journaled turns received after that commit."""

    record: dict[str, Any]
    weights: Weights | None
    journal: list[tuple[int, dict[str, Any]]]


class AgentStore:
    """A directory of agent memories; safe against crashes, shared by nothing but one engine at a time."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        marker = self.root / MARKER
        if self.root.exists() and any(self.root.iterdir()) and not marker.exists():
            raise StoreError(
                f"{self.root} is not empty and has no {MARKER}, so it is not a templora-memory store; "
                "pass an empty or new directory"
            )
        (self.root / "agents").mkdir(parents=True, exist_ok=True)
        if marker.exists():
            _check_marker(marker)
        else:
            _write_atomically(marker, json.dumps({"format": "templora-memory", "version": FORMAT_VERSION}).encode())

    def __repr__(self) -> str:
        return f"AgentStore({str(self.root)!r})"

    # ----- reading ------------------------------------------------------------------------

    def directory(self, key: str) -> Path:
        """The agent's directory (`key` is its `store_key`, a hash of the id)."""
        return self.root / "agents" / key

    def has(self, key: str) -> bool:
        """Whether the agent has a committed version or journaled turns."""
        folder = self.directory(key)
        return (folder / CURRENT).exists() or (folder / JOURNAL).exists()

    def keys(self) -> list[str]:
        """Keys of every stored agent."""
        return sorted(p.name for p in (self.root / "agents").iterdir() if self.has(p.name))

    def record(self, key: str) -> dict[str, Any]:
        """The agent's last committed state without its weights (empty before the first commit)."""
        version = self._current(self.directory(key))
        return {} if version is None else _read_state(version / STATE)

    def load(self, key: str) -> StoredAgent:
        """The agent's last commit and journal; a damaged file raises StoreError naming it."""
        folder = self.directory(key)
        version = self._current(folder)
        record, weights = ({}, None) if version is None else (_read_state(version / STATE), _read_weights(version))
        return StoredAgent(record=record, weights=weights, journal=_read_journal(folder / JOURNAL))

    # ----- writing ------------------------------------------------------------------------

    def commit(self, key: str, record: dict[str, Any], weights: Weights | None) -> None:
        """Write a new version atomically; `weights=None` keeps the weight files of the previous version."""
        folder = self.directory(key)
        folder.mkdir(parents=True, exist_ok=True)
        previous = self._current(folder)
        number = int(previous.name[1:]) + 1 if previous else 1
        staging = folder / f".v{number:08d}.{uuid.uuid4().hex[:8]}.tmp"
        staging.mkdir()
        if weights is not None:
            _write_weights(staging, weights)
        elif previous is not None:
            for name in WEIGHT_FILES:
                if (previous / name).exists():
                    os.link(previous / name, staging / name)
        _write_atomically(staging / STATE, json.dumps(record, ensure_ascii=False).encode())
        _fsync_dir(staging)
        version = folder / f"v{number:08d}"
        staging.rename(version)
        _write_atomically(folder / CURRENT, version.name.encode())
        self._clear_journal(folder)
        self._remove_stale(folder, keep=version.name)

    def journal(self, key: str, seq: int, message: dict[str, Any]) -> None:
        """Append one received turn (its index among all turns the agent saw) to the journal, durably."""
        folder = self.directory(key)
        folder.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"seq": seq, "message": message}, ensure_ascii=False) + "\n"
        with open(folder / JOURNAL, "ab") as handle:
            handle.write(line.encode())
            handle.flush()
            os.fsync(handle.fileno())

    def delete(self, key: str) -> None:
        """Remove the agent's directory: renamed away first, so a crash never leaves half an agent."""
        folder = self.directory(key)
        if folder.exists():
            trash = folder.with_name(f".{key}.{uuid.uuid4().hex[:8]}.deleted")
            folder.rename(trash)
            shutil.rmtree(trash)

    def export(self, key: str, destination: str | os.PathLike) -> Path:
        """Copy the agent's committed version and journal into a new directory `destination`."""
        folder, target = self.directory(key), Path(destination).expanduser()
        version = self._current(folder)
        if version is None:
            raise StoreError(f"agent directory {folder} has no committed version to export")
        if target.exists():
            raise StoreError(f"export destination {target} already exists; pass a new directory")
        staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        shutil.copytree(version, staging)
        if (folder / JOURNAL).exists():
            shutil.copy2(folder / JOURNAL, staging / JOURNAL)
        staging.rename(target)
        return target

    def import_(self, key: str, source: str | os.PathLike) -> None:
        """Install an exported agent directory as the agent `key`, replacing nothing (the key must be free)."""
        source = Path(source).expanduser()
        _read_state(source / STATE)  # fails early, naming the file, on a damaged or foreign export
        if self.has(key):
            raise StoreError(f"the store already holds this agent at {self.directory(key)}; forget() it first")
        folder = self.directory(key)
        folder.mkdir(parents=True, exist_ok=True)
        version = folder / "v00000001"
        shutil.copytree(source, folder / ".import.tmp", ignore=shutil.ignore_patterns(JOURNAL))
        _fsync_dir(folder / ".import.tmp")
        (folder / ".import.tmp").rename(version)
        if (source / JOURNAL).exists():
            shutil.copy2(source / JOURNAL, folder / JOURNAL)
        _write_atomically(folder / CURRENT, version.name.encode())

    # ----- internals ----------------------------------------------------------------------

    def _current(self, folder: Path) -> Path | None:
        pointer = folder / CURRENT
        if not pointer.exists():
            return None
        name = pointer.read_text().strip()
        if not (name.startswith("v") and name[1:].isdigit() and (folder / name).is_dir()):
            raise StoreError(f"{pointer} names no committed version ({name[:40]!r}); the agent's directory is damaged")
        return folder / name

    def _clear_journal(self, folder: Path) -> None:
        journal = folder / JOURNAL
        if journal.exists():
            journal.unlink()
            _fsync_dir(folder)

    def _remove_stale(self, folder: Path, keep: str) -> None:
        for path in folder.iterdir():
            if path.is_dir() and path.name != keep:
                shutil.rmtree(path, ignore_errors=True)


def _check_marker(marker: Path) -> None:
    try:
        content = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{marker} is unreadable ({exc}); it is not a templora-memory store marker") from exc
    if content.get("format") != "templora-memory" or content.get("version") != FORMAT_VERSION:
        raise StoreError(f"{marker} describes {content}, not a templora-memory store of version {FORMAT_VERSION}")


def _read_state(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path} is missing or damaged ({exc}); the agent cannot be loaded") from exc
    if not isinstance(record, dict) or record.get("format_version") != FORMAT_VERSION:
        raise StoreError(f"{path} is not an agent state of format version {FORMAT_VERSION}")
    return record


def _read_weights(version: Path) -> Weights | None:
    if not (version / ADAPTER_WEIGHTS).exists():
        return None
    try:
        adapter = load_file(version / ADAPTER_WEIGHTS)
        adapter_config = json.loads((version / ADAPTER_CONFIG).read_text())
        optimizer_path = version / OPTIMIZER
        optimizer = torch.load(optimizer_path, weights_only=True) if optimizer_path.exists() else None
        replay = torch.load(version / REPLAY, weights_only=True) if (version / REPLAY).exists() else []
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise StoreError(f"the adapter files in {version} are damaged ({exc}); the agent cannot be loaded") from exc
    return Weights(adapter=adapter, adapter_config=adapter_config, optimizer=optimizer, replay=replay)


def _write_weights(folder: Path, weights: Weights) -> None:
    save_file({name: t.detach().contiguous() for name, t in weights.adapter.items()}, folder / ADAPTER_WEIGHTS)
    _fsync_file(folder / ADAPTER_WEIGHTS)
    _write_atomically(folder / ADAPTER_CONFIG, json.dumps(weights.adapter_config, indent=2).encode())
    if weights.optimizer is not None:
        torch.save(weights.optimizer, folder / OPTIMIZER)
        _fsync_file(folder / OPTIMIZER)
    if weights.replay:
        torch.save(weights.replay, folder / REPLAY)
        _fsync_file(folder / REPLAY)


def _read_journal(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Journaled turns in order; a torn last line (a crash mid-append) is ignored."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_bytes().splitlines():
        try:
            entry = json.loads(line)
            entries.append((int(entry["seq"]), entry["message"]))
        except (ValueError, KeyError, TypeError):
            continue
    return entries


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file, fsync, rename over `path`, fsync the directory."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
