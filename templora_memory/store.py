"""`AgentStore`: each agent's memory in a local directory or an S3 bucket; one writer per agent; atomic commits.

Layout (one folder per agent, named by a hash of its id so no id can reach outside the store):

    <root>/templora-store.json              marks the root as a store (format version)
    <root>/agents/<key>/CURRENT             the pointer: {"version", "previous" (names), "writer" (a lease token)}
    <root>/agents/<key>/LEASE               who may write the agent now (see `lease.py`)
    <root>/agents/<key>/v00000007-1f2e3d4c/ adapter_model.safetensors + adapter_config.json (plain peft),
                                            optimizer.pt, replay.pt (probes kept for replay), state.json,
                                            digests.json (every file's sha256: see `versions.py`)
    <root>/agents/<key>/journal/00000012-<writer>.json   one turn received since that commit

A commit writes a new version under a name no other writer uses (unchanged weight files are hard-linked, or
copied server-side), then moves the pointer last, with a conditional write that succeeds only if the pointer
is still the one this writer saw: a crash at any point leaves the previous commit whole, and the journal's
turns are replayed on the next load. The version before the newest is kept, so a load that finds the newest
damaged falls back to it. Taking an agent (`acquire`) takes its lease, loads it, and writes the
pointer again with its own token: a writer that lost the lease can then neither move the pointer nor have its
journal read. A version folder, once downloaded, loads with plain `PeftModel.from_pretrained`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from templora_memory.adapter_files import ADAPTER_WEIGHTS, WEIGHT_FILES, Weights, decode_weights, encode_weights
from templora_memory.blobs import missing_credentials, open_blobs
from templora_memory.errors import DamagedAgentError, LeaseLostError, StoreError
from templora_memory.lease import Lease, Leases
from templora_memory.versions import (
    DIGESTS,
    FORMAT_VERSION,
    STATE,
    Pointer,
    digest,
    is_version,
    manifest,
    parse_pointer,
    parse_state,
    read_verified,
    version_number,
)

log = logging.getLogger("templora_memory.store")
MARKER = "templora-store.json"
CURRENT = "CURRENT"
LEASE = "LEASE"
JOURNAL = "journal"
OLD_JOURNAL = "journal.jsonl"
"""The journal of stores written before leases: one JSON line per turn, read when the pointer names no writer."""


def store_key(agent_id: str) -> str:
    """The agent's folder name in a store: a hash of its id, so no id can reach outside the store."""
    return "agent_" + hashlib.sha256(agent_id.encode()).hexdigest()[:24]


@dataclass
class StoredAgent:
    """One agent as last committed, plus the journaled turns received after that commit."""

    record: dict[str, Any]
    weights: Weights | None
    journal: list[tuple[int, dict[str, Any]]]


@dataclass
class _Held:
    """An agent this store writes: its lease, the pointer's tag as last written, whether a journal is left."""

    lease: Lease
    pointer: Pointer
    journaled: bool
    legacy: bool = False
    """The agent was written before leases and may still have the old one-file journal."""
    loaded: str | None = None
    """The version whose files were loaded (the newest good one), which the next commit builds on."""
    digests: dict[str, str] | None = None
    """The sha256 of each file of `loaded`."""


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
        """The agent's last committed state without its weights (empty before the first commit); the previous
        version's if the newest is damaged, and `DamagedAgentError` if both are."""
        return self._commit_of(key)[2]

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

    def check(self, key: str) -> None:
        """Raise unless this process may still serve the agent it holds: `LeaseLostError` once another writer took
        it over (it is no longer held), `StoreUnavailableError` while its lease could not be renewed."""
        held = self._held.get(key)
        if held is None:
            return
        try:
            self._leases.check(held.lease)
        except LeaseLostError:
            self._held.pop(key, None)
            raise

    def close(self) -> None:
        """Release every agent this store holds."""
        for key in list(self._held):
            self.release(key)

    def commit(self, key: str, record: dict[str, Any], weights: Weights | None, purge: bool = False) -> None:
        """Write a new version, then move the pointer if no other writer took the agent over (else
        `LeaseLostError`); `weights=None` keeps the weight files of the previous version; `purge` keeps no version
        but the new one (nothing to fall back on: what the earlier ones held is gone)."""
        held = self._holding(key)
        version = f"v{version_number(held.pointer.version) + 1:08d}-{held.lease.token[:8]}"
        folder = f"agents/{key}/{version}"
        digests: dict[str, str] = {}
        if weights is not None:
            for name, data in encode_weights(weights).items():
                self.blobs.write(f"{folder}/{name}", data)
                digests[name] = digest(data)
        elif held.loaded is not None:
            for name in WEIGHT_FILES:
                if name in held.digests:
                    self.blobs.copy(f"agents/{key}/{held.loaded}/{name}", f"{folder}/{name}")
                    digests[name] = held.digests[name]
        state = json.dumps(record, ensure_ascii=False).encode()
        self.blobs.write(f"{folder}/{STATE}", state)
        digests[STATE] = digest(state)
        self.blobs.write(f"{folder}/{DIGESTS}", manifest(digests))  # last: a folder without it is partial
        previous = None if purge else held.loaded
        pointer = Pointer(version, held.lease.token, previous=previous)
        tag = self.blobs.swap(_path(key, CURRENT), pointer.encode(), held.pointer.tag)
        if tag is None:
            self._held.pop(key, None)
            self._leases.drop(held.lease)
            raise LeaseLostError(
                f"another writer took over the agent in {self.locate(key)} since this process loaded it (this "
                "process's lease lapsed); this call's changes were not committed. Call again: the agent is "
                "loaded afresh from its last commit"
            )
        held.pointer = Pointer(version, held.lease.token, tag, previous)
        held.loaded, held.digests = version, digests
        if held.journaled:
            self._clear_journal(key, held.legacy)
            held.journaled = held.legacy = False
        self._remove_stale(key, held.pointer)

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
        version = self._commit_of(key)[1]
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
        parse_state((source / STATE).read_bytes() if (source / STATE).exists() else b"", str(source / STATE))
        if self.has(key):
            raise StoreError(f"the store already holds this agent at {self.locate(key)}; forget() it first")
        writer = uuid.uuid4().hex
        version = f"v00000001-{writer[:8]}"
        digests = {}
        for path in sorted(p for p in source.iterdir() if p.is_file() and p.name in (*WEIGHT_FILES, STATE)):
            data = path.read_bytes()
            self.blobs.write(f"agents/{key}/{version}/{path.name}", data)
            digests[path.name] = digest(data)
        self.blobs.write(f"agents/{key}/{version}/{DIGESTS}", manifest(digests))
        if self.blobs.swap(_path(key, CURRENT), Pointer(version, writer).encode(), None) is None:
            raise StoreError(f"the store already holds this agent at {self.locate(key)}; forget() it first")

    # ----- internals ----------------------------------------------------------------------

    def _holding(self, key: str) -> _Held:
        held = self._held.get(key)
        if held is None:
            raise StoreError(f"this store does not hold the agent in {self.locate(key)}: acquire it before writing")
        return held

    def _commit_of(self, key: str) -> tuple[Pointer, str | None, dict[str, Any]]:
        """The pointer, the newest good version it names and that version's state, read again if a commit
        replaced the version while it was read."""
        where = self.blobs.locate(_path(key, CURRENT))
        while True:
            data, tag = self.blobs.read_tagged(_path(key, CURRENT))
            pointer = parse_pointer(data, tag, where)
            if pointer.version is None:
                return pointer, None, {}
            try:
                version, files, _ = self._newest_good(key, pointer, (STATE,))
                return pointer, version, files[STATE]
            except DamagedAgentError:
                if self.blobs.read_tagged(_path(key, CURRENT))[1] == tag:
                    raise  # the pointer did not move: the versions it names are damaged

    def _newest_good(
        self, key: str, pointer: Pointer, names: tuple[str, ...]
    ) -> tuple[str, dict[str, Any], dict[str, str]]:
        """The first of the pointer's versions whose files (`names`) match their digests and parse: its name, its
        files (state.json parsed, weights decoded) and their digests; falling back is logged as a warning."""
        problems = []
        for version in pointer.candidates():
            folder = f"agents/{key}/{version}"
            try:
                files, digests = read_verified(self.blobs, folder, names)
                loaded = {STATE: parse_state(files[STATE], self.blobs.locate(f"{folder}/{STATE}"))}
                if ADAPTER_WEIGHTS in names:
                    loaded[ADAPTER_WEIGHTS] = self._decode(files, folder)
            except DamagedAgentError as exc:
                problems.append(str(exc))
                continue
            if problems:
                log.warning(
                    "the newest version of the agent in %s is damaged (%s); loaded the previous one, %s: "
                    "the changes of the damaged commit are lost",
                    self.locate(key),
                    problems[0],
                    version,
                )
            return version, loaded, digests
        raise DamagedAgentError(
            f"the agent in {self.locate(key)} is damaged and has no good version left: {'; '.join(problems)}"
        )

    def _fence(self, key: str, lease: Lease) -> tuple[StoredAgent | None, _Held]:
        """Load the newest good commit and its writer's journal, write the pointer again naming this writer, and
        remove the version folders the pointer does not name (left by writers that died mid-commit)."""
        while True:
            data, tag = self.blobs.read_tagged(_path(key, CURRENT))
            pointer = parse_pointer(data, tag, self.blobs.locate(_path(key, CURRENT)))
            version, record, weights, digests = None, {}, None, {}
            if pointer.version is not None:
                version, files, digests = self._newest_good(key, pointer, (*WEIGHT_FILES, STATE))
                record, weights = files[STATE], files[ADAPTER_WEIGHTS]
            entries = self.blobs.children(f"agents/{key}/{JOURNAL}")
            journal = self._read_journal(key, entries, pointer.writer)
            for seq, message in journal:  # adopted: still replayed if this writer dies before its first commit
                self._write_entry(key, lease.token, seq, message)
            fenced = Pointer(pointer.version, lease.token, previous=pointer.previous)
            tag = self.blobs.swap(_path(key, CURRENT), fenced.encode(), pointer.tag)
            if tag is None:
                continue  # a commit landed meanwhile: load again
            fenced = Pointer(pointer.version, lease.token, tag, pointer.previous)
            self._remove_stale(key, fenced)
            legacy = pointer.writer is None and self.blobs.read(_path(key, OLD_JOURNAL)) is not None
            held = _Held(lease, fenced, bool(entries) or legacy, legacy, version, digests)
            stored = StoredAgent(record, weights, journal) if pointer.version or journal else None
            return stored, held

    def _remove_stale(self, key: str, pointer: Pointer) -> None:
        """Delete the version folders the pointer names neither as newest nor as previous."""
        for name in self.blobs.children(f"agents/{key}"):
            if is_version(name) and name not in pointer.candidates():
                self.blobs.remove_tree(f"agents/{key}/{name}")

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

    def _decode(self, files: dict[str, bytes | None], folder: str) -> Weights | None:
        """A version's weights from its files (None when it has no adapter)."""
        if files[ADAPTER_WEIGHTS] is None:
            return None
        try:
            return decode_weights(files)
        except (OSError, ValueError, RuntimeError, SafetensorError, TypeError, KeyError) as exc:
            raise DamagedAgentError(f"the adapter files in {self.blobs.locate(folder)} are damaged ({exc})") from exc


def _path(key: str, name: str) -> str:
    return f"agents/{key}/{name}"


def _check_marker(data: bytes, where: str) -> None:
    try:
        content = json.loads(data)
    except ValueError as exc:
        raise StoreError(f"{where} is unreadable ({exc}); it is not a templora-memory store marker") from exc
    if content.get("format") != "templora-memory" or content.get("version") != FORMAT_VERSION:
        raise StoreError(f"{where} describes {content}, not a templora-memory store of version {FORMAT_VERSION}")


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
