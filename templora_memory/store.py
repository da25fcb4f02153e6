"""`AgentStore`: each agent's memory in a local directory or an S3 bucket; one writer per agent; atomic commits.

Layout (one folder per agent, named by a hash of its id so no id can reach outside the store):

    <root>/templora-store.json              marks the root as a store (format version)
    <root>/agents/<key>/CURRENT             the pointer: {"version": <name>, "writer": <the writer's lease token>}
    <root>/agents/<key>/LEASE               who may write the agent now (see `lease.py`)
    <root>/agents/<key>/v00000007-1f2e3d4c/ adapter_model.safetensors + adapter_config.json (plain peft),
                                            optimizer.pt, replay.pt (probes kept for replay), state.json
    <root>/agents/<key>/journal/00000012-<writer>.json   one turn received since that commit

A commit writes a new version under a name no other writer uses (unchanged weight files are hard-linked, or
copied server-side), then moves the pointer last, with a conditional write that succeeds only if the pointer
is still the one this writer saw: a crash at any point leaves the previous commit whole, and the journal's
turns are replayed on the next load. Taking an agent (`acquire`) takes its lease, loads it, and writes the
pointer again with its own token: a writer that lost the lease can then neither move the pointer nor have its
journal read. A version folder, once downloaded, loads with plain `PeftModel.from_pretrained`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from templora_memory.adapter_files import ADAPTER_WEIGHTS, WEIGHT_FILES, Weights, decode_weights, encode_weights
from templora_memory.blobs import Tag, missing_credentials, open_blobs
from templora_memory.errors import LeaseLostError, StoreError
from templora_memory.lease import Lease, Leases

FORMAT_VERSION = 1
MARKER = "templora-store.json"
STATE = "state.json"
CURRENT = "CURRENT"
LEASE = "LEASE"
JOURNAL = "journal"
OLD_JOURNAL = "journal.jsonl"
"""The journal of stores written before leases: one JSON line per turn, read when the pointer names no writer."""
_VERSION = re.compile(r"v(\d{8})(-[0-9a-f]{8})?")


def store_key(agent_id: str) -> str:
    """The agent's folder name in a store: a hash of its id, so no id can reach outside the store."""
    return "agent_" + hashlib.sha256(agent_id.encode()).hexdigest()[:24]


@dataclass
class StoredAgent:
    """One agent as last committed, plus the journaled turns received after that commit."""

    record: dict[str, Any]
    weights: Weights | None
    journal: list[tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class Pointer:
    """The agent's CURRENT object: the committed version and the writer that holds the agent."""

    version: str | None
    writer: str | None
    tag: Tag | None = None

    def encode(self) -> bytes:
        return json.dumps({"version": self.version, "writer": self.writer}).encode()


@dataclass
class _Held:
    """An agent this store writes: its lease, the pointer's tag as last written, whether a journal is left."""

    lease: Lease
    pointer: Pointer
    journaled: bool
    legacy: bool = False
    """The agent was written before leases and may still have the old one-file journal."""


class AgentStore:
    """Agent memories under a local directory or `s3://bucket/prefix`; safe against crashes and rival writers.

    Example:
        >>> store = AgentStore("s3://npc-memories/prod", lease_seconds=30)  # doctest: +SKIP
        >>> MemoryEngine(store=store, max_resident=100)  # doctest: +SKIP
    """

    def __init__(
        self,
        url: str | os.PathLike,
        *,
        lease_seconds: float = 30.0,
        lease_wait: float = 40.0,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        """Open (or start) the store at `url`. An agent's lease lasts `lease_seconds` (renewed while it is in RAM);
        a process that wants an agent another one holds waits up to `lease_wait` seconds, then `AgentBusyError`.
        `storage_options` go to s3fs (endpoint_url, key, secret, ...)."""
        self.blobs = open_blobs(url, storage_options)
        self.url = self.blobs.url
        self._leases = Leases(self.blobs, lease_seconds, lease_wait)
        self._held: dict[str, _Held] = {}
        self._scratch: tempfile.TemporaryDirectory | None = None
        try:
            self._open()
        except OSError as exc:
            raise StoreError(f"cannot open the store at {self.url} ({exc}); check it exists and is writable") from exc
        except Exception as exc:
            if not missing_credentials(exc):
                raise
            raise StoreError(
                f"the store at {self.url} needs S3 credentials and found none: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and AWS_ENDPOINT_URL_S3 for an S3-compatible server "
                "(MinIO, ...), or pass storage_options={'key': ..., 'secret': ..., 'endpoint_url': ...}"
            ) from None

    @classmethod
    def temporary(cls) -> AgentStore:
        """A store in a new temporary directory, deleted with this object (where evicted agents wait when the
        engine was given no store)."""
        scratch = tempfile.TemporaryDirectory(prefix="templora-spill-")
        store = cls(scratch.name)
        store._scratch = scratch
        return store

    def __repr__(self) -> str:
        return f"AgentStore({self.url!r})"

    def _open(self) -> None:
        marker = self.blobs.read(MARKER)
        if marker is not None:
            _check_marker(marker, self.blobs.locate(MARKER))
        elif self.blobs.children(""):
            raise StoreError(
                f"{self.url} is not empty and has no {MARKER}, so it is not a templora-memory store; "
                "pass an empty or new location"
            )
        else:
            self.blobs.write(MARKER, json.dumps({"format": "templora-memory", "version": FORMAT_VERSION}).encode())

    # ----- reading (any process, no lease) --------------------------------------------------

    def locate(self, key: str) -> str:
        """Where the agent's files are (`key` is its `store_key`), for messages."""
        return self.blobs.locate(f"agents/{key}")

    def has(self, key: str) -> bool:
        """Whether the agent has a memory (a pointer) in the store."""
        return self.blobs.read(_path(key, CURRENT)) is not None

    def keys(self) -> list[str]:
        """Keys of every stored agent."""
        return [name for name in self.blobs.children("agents") if name.startswith("agent_") and self.has(name)]

    def record(self, key: str) -> dict[str, Any]:
        """The agent's last committed state without its weights (empty before the first commit)."""
        return self._commit_of(key)[1]

    # ----- writing (the lease holder) -------------------------------------------------------

    def acquire(self, key: str) -> StoredAgent | None:
        """Take the agent's lease (waiting while another process holds it), load its last commit and journal, and
        fence out earlier writers; None for an agent the store has never seen. Give it back with `release`."""
        if key in self._held:
            raise StoreError(f"this store already holds the agent in {self.locate(key)}; release it first")
        lease = self._leases.acquire(_path(key, LEASE), f"the agent in {self.locate(key)}")
        try:
            stored, held = self._fence(key, lease)
        except BaseException:
            self._leases.release(lease)
            raise
        self._held[key] = held
        return stored

    def release(self, key: str) -> None:
        """Give the agent's lease back (after its last commit), so another process may take it at once."""
        held = self._held.pop(key, None)
        if held is not None:
            self._leases.release(held.lease)

    def close(self) -> None:
        """Release every agent this store holds."""
        for key in list(self._held):
            self.release(key)

    def commit(self, key: str, record: dict[str, Any], weights: Weights | None) -> None:
        """Write a new version, then move the pointer if no other writer took the agent over (else
        `LeaseLostError`); `weights=None` keeps the weight files of the previous version."""
        held = self._holding(key)
        previous = held.pointer.version
        number = int(_VERSION.fullmatch(previous).group(1)) + 1 if previous else 1
        version = f"v{number:08d}-{held.lease.token[:8]}"
        folder = f"agents/{key}/{version}"
        if weights is not None:
            for name, data in encode_weights(weights).items():
                self.blobs.write(f"{folder}/{name}", data)
        elif previous is not None:
            kept = set(self.blobs.children(f"agents/{key}/{previous}"))
            for name in WEIGHT_FILES:
                if name in kept:
                    self.blobs.copy(f"agents/{key}/{previous}/{name}", f"{folder}/{name}")
        self.blobs.write(f"{folder}/{STATE}", json.dumps(record, ensure_ascii=False).encode())
        pointer = Pointer(version, held.lease.token)
        tag = self.blobs.swap(_path(key, CURRENT), pointer.encode(), held.pointer.tag)
        if tag is None:
            self._held.pop(key, None)
            self._leases.drop(held.lease)
            raise LeaseLostError(
                f"another writer took over the agent in {self.locate(key)} since this process loaded it (this "
                "process's lease lapsed); this call's changes were not committed. Call again: the agent is "
                "loaded afresh from its last commit"
            )
        held.pointer = Pointer(version, held.lease.token, tag)
        if held.journaled:
            self._clear_journal(key, held.legacy)
            held.journaled = held.legacy = False
        stale = [f"agents/{key}/{name}" for name in self.blobs.children(f"agents/{key}") if _is_version(name)]
        for path in stale:
            if not path.endswith(version):
                self.blobs.remove_tree(path)

    def journal(self, key: str, seq: int, message: dict[str, Any]) -> None:
        """Record one received turn (its index among all turns the agent saw) durably, before it is kept."""
        held = self._holding(key)
        self._write_entry(key, held.lease.token, seq, message)
        held.journaled = True

    def delete(self, key: str) -> None:
        """Remove the agent (held by this store): its pointer first, so it is gone at once, then its files."""
        held = self._holding(key)
        self.blobs.remove([_path(key, CURRENT)])
        del self._held[key]
        self._leases.drop(held.lease)
        self.blobs.remove_tree(f"agents/{key}")

    def export(self, key: str, destination: str | os.PathLike) -> Path:
        """Copy the agent's committed version into a new local directory `destination` (plain peft files)."""
        target = Path(destination).expanduser()
        version = self._commit_of(key)[0].version
        if version is None:
            raise StoreError(f"the agent in {self.locate(key)} has no committed version to export")
        if target.exists():
            raise StoreError(f"export destination {target} already exists; pass a new directory")
        staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        staging.mkdir(parents=True)
        for name in self.blobs.children(f"agents/{key}/{version}"):
            (staging / name).write_bytes(self.blobs.read(f"agents/{key}/{version}/{name}") or b"")
        staging.rename(target)
        return target

    def import_(self, key: str, source: str | os.PathLike) -> None:
        """Install a directory written by `export` as the agent `key`, replacing nothing (the key must be free)."""
        source = Path(source).expanduser()
        _parse_state((source / STATE).read_bytes() if (source / STATE).exists() else b"", str(source / STATE))
        if self.has(key):
            raise StoreError(f"the store already holds this agent at {self.locate(key)}; forget() it first")
        writer = uuid.uuid4().hex
        version = f"v00000001-{writer[:8]}"
        for path in sorted(p for p in source.iterdir() if p.is_file() and p.name in (*WEIGHT_FILES, STATE)):
            self.blobs.write(f"agents/{key}/{version}/{path.name}", path.read_bytes())
        if self.blobs.swap(_path(key, CURRENT), Pointer(version, writer).encode(), None) is None:
            raise StoreError(f"the store already holds this agent at {self.locate(key)}; forget() it first")

    # ----- internals ----------------------------------------------------------------------

    def _holding(self, key: str) -> _Held:
        held = self._held.get(key)
        if held is None:
            raise StoreError(f"this store does not hold the agent in {self.locate(key)}: acquire it before writing")
        return held

    def _commit_of(self, key: str) -> tuple[Pointer, dict[str, Any]]:
        """The pointer and the state it names, read again if a commit replaced the version while it was read."""
        where = self.blobs.locate(_path(key, CURRENT))
        for _ in range(5):
            data, tag = self.blobs.read_tagged(_path(key, CURRENT))
            pointer = _parse_pointer(data, tag, where)
            if pointer.version is None:
                return pointer, {}
            state = self.blobs.read(f"agents/{key}/{pointer.version}/{STATE}")
            if state is not None:
                return pointer, _parse_state(state, self.blobs.locate(f"agents/{key}/{pointer.version}/{STATE}"))
            if self.blobs.read_tagged(_path(key, CURRENT))[1] == tag:
                break  # the pointer did not move: the version it names is missing
        raise StoreError(f"{where} names no committed version ({pointer.version!r}); the agent's folder is damaged")

    def _fence(self, key: str, lease: Lease) -> tuple[StoredAgent | None, _Held]:
        """Load the last commit and its writer's journal, then write the pointer again naming this writer."""
        while True:
            pointer, record = self._commit_of(key)
            weights = self._read_weights(key, pointer.version) if pointer.version else None
            entries = self.blobs.children(f"agents/{key}/{JOURNAL}")
            journal = self._read_journal(key, entries, pointer.writer)
            for seq, message in journal:  # adopted: still replayed if this writer dies before its first commit
                self._write_entry(key, lease.token, seq, message)
            fenced = Pointer(pointer.version, lease.token)
            tag = self.blobs.swap(_path(key, CURRENT), fenced.encode(), pointer.tag)
            if tag is None:
                continue  # a commit landed meanwhile: load again
            legacy = pointer.writer is None and self.blobs.read(_path(key, OLD_JOURNAL)) is not None
            held = _Held(lease, Pointer(pointer.version, lease.token, tag), bool(entries) or legacy, legacy)
            stored = StoredAgent(record, weights, journal) if pointer.version or journal else None
            return stored, held

    def _write_entry(self, key: str, writer: str, seq: int, message: dict[str, Any]) -> None:
        entry = json.dumps({"seq": seq, "writer": writer, "message": message}, ensure_ascii=False).encode()
        self.blobs.write(f"agents/{key}/{JOURNAL}/{seq:08d}-{writer}.json", entry)

    def _read_journal(self, key: str, entries: list[str], writer: str | None) -> list[tuple[int, dict[str, Any]]]:
        """The turns the pointer's writer journaled, in order (before leases: the old one-file journal)."""
        if writer is None:
            return _journal_lines(self.blobs.read(_path(key, OLD_JOURNAL)) or b"")
        found = []
        for name in entries:
            if name.endswith(f"-{writer}.json") and (data := self.blobs.read(f"agents/{key}/{JOURNAL}/{name}")):
                found.extend(_journal_lines(data))
        return sorted(found, key=lambda entry: entry[0])

    def _clear_journal(self, key: str, legacy: bool) -> None:
        paths = [f"agents/{key}/{JOURNAL}/{name}" for name in self.blobs.children(f"agents/{key}/{JOURNAL}")]
        self.blobs.remove(paths + [_path(key, OLD_JOURNAL)] if legacy else paths)

    def _read_weights(self, key: str, version: str) -> Weights | None:
        folder = f"agents/{key}/{version}"
        files = {name: self.blobs.read(f"{folder}/{name}") for name in WEIGHT_FILES}
        if files[ADAPTER_WEIGHTS] is None:
            return None
        try:
            return decode_weights(files)
        except (OSError, ValueError, RuntimeError, SafetensorError, TypeError) as exc:
            raise StoreError(
                f"the adapter files in {self.blobs.locate(folder)} are damaged ({exc}); the agent cannot be loaded"
            ) from exc


def _path(key: str, name: str) -> str:
    return f"agents/{key}/{name}"


def _is_version(name: str) -> bool:
    return _VERSION.fullmatch(name) is not None


def _parse_pointer(data: bytes | None, tag: Tag | None, where: str) -> Pointer:
    """The pointer object; a bare version name is a pointer of a store written before leases."""
    if data is None:
        return Pointer(None, None, None)
    text = data.decode(errors="replace").strip()
    try:
        content = json.loads(text) if text.startswith("{") else {"version": text, "writer": None}
        version, writer = content["version"], content["writer"]
    except (ValueError, KeyError, TypeError):
        raise StoreError(f"{where} is damaged ({text[:40]!r}); the agent cannot be loaded") from None
    if version is not None and not _is_version(str(version)):
        raise StoreError(f"{where} names no committed version ({str(version)[:40]!r}); the agent's folder is damaged")
    return Pointer(version, writer, tag)


def _check_marker(data: bytes, where: str) -> None:
    try:
        content = json.loads(data)
    except ValueError as exc:
        raise StoreError(f"{where} is unreadable ({exc}); it is not a templora-memory store marker") from exc
    if content.get("format") != "templora-memory" or content.get("version") != FORMAT_VERSION:
        raise StoreError(f"{where} describes {content}, not a templora-memory store of version {FORMAT_VERSION}")


def _parse_state(data: bytes, where: str) -> dict[str, Any]:
    try:
        record = json.loads(data)
    except ValueError as exc:
        raise StoreError(f"{where} is missing or damaged ({exc}); the agent cannot be loaded") from exc
    if not isinstance(record, dict) or record.get("format_version") != FORMAT_VERSION:
        raise StoreError(f"{where} is not an agent state of format version {FORMAT_VERSION}")
    return record


def _journal_lines(data: bytes) -> list[tuple[int, dict[str, Any]]]:
    """Journal entries, one JSON object a line; a torn line (a crash mid-write of the old journal) is skipped."""
    entries = []
    for line in data.splitlines():
        try:
            entry = json.loads(line)
            entries.append((int(entry["seq"]), entry["message"]))
        except (ValueError, KeyError, TypeError):
            continue
    return entries


def open_store(store: AgentStore | str | os.PathLike | None, spill: bool) -> AgentStore | None:
    """The engine's store: as given, opened from a path or URL, a temporary one when only `spill` asks, or None."""
    if isinstance(store, AgentStore):
        return store
    if store is not None:
        return AgentStore(store)
    return AgentStore.temporary() if spill else None
