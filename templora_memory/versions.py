"""The committed versions of one agent in a store: the pointer that names them, and the digests that vouch for them.

Each version folder ends with `digests.json` (the sha256 of every file in it), written after the files and before
the pointer moves, so a folder without it is a version whose writer died (removed when the agent is next taken).
The pointer names the version and the one before it; a load verifies the files against their digests and, if the
newest version is damaged, falls back to the previous one (with a warning) before giving up with
`DamagedAgentError`. Versions written before digests existed load unverified.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from templora_memory.blobs import Blobs, Tag
from templora_memory.errors import DamagedAgentError

FORMAT_VERSION = 1
STATE = "state.json"
DIGESTS = "digests.json"
_VERSION = re.compile(r"v(\d{8})(-[0-9a-f]{8})?")


@dataclass(frozen=True)
class Pointer:
    """The agent's CURRENT object: the committed version, the one before it, and the writer that holds the agent."""

    version: str | None
    writer: str | None
    tag: Tag | None = None
    previous: str | None = None

    def encode(self) -> bytes:
        return json.dumps({"version": self.version, "writer": self.writer, "previous": self.previous}).encode()

    def candidates(self) -> list[str]:
        """The versions a load may use, newest first."""
        return [v for v in (self.version, self.previous) if v is not None]


def is_version(name: str) -> bool:
    """Whether a folder name is a version's."""
    return _VERSION.fullmatch(name) is not None


def version_number(name: str | None) -> int:
    """The version's sequence number (0 for none)."""
    return int(_VERSION.fullmatch(name).group(1)) if name else 0


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(digests: dict[str, str]) -> bytes:
    """The `digests.json` of a version whose files have these digests."""
    return json.dumps({"sha256": digests}, sort_keys=True).encode()


def read_verified(blobs: Blobs, folder: str, names: tuple[str, ...]) -> tuple[dict[str, bytes | None], dict[str, str]]:
    """The version's files among `names` (None for one it lacks) and their digests, each checked against
    `digests.json` (a version without it predates digests and is taken as it is); `DamagedAgentError` naming the
    file that is missing or does not match."""
    listed = blobs.read(f"{folder}/{DIGESTS}")
    expected = _parse_manifest(listed, blobs.locate(f"{folder}/{DIGESTS}")) if listed is not None else {}
    present = [name for name in names if name in expected or not expected]  # a file the manifest omits is not in it
    files = {name: blobs.read(f"{folder}/{name}") if name in present else None for name in names}
    digests = {name: digest(data) for name, data in files.items() if data is not None}
    for name in names:
        if name in expected and files[name] is None or name == STATE and files[name] is None:
            raise DamagedAgentError(f"{blobs.locate(f'{folder}/{name}')} is missing")
        if name in expected and digests[name] != expected[name]:
            raise DamagedAgentError(f"{blobs.locate(f'{folder}/{name}')} does not match its recorded sha256")
    return files, digests


def _parse_manifest(data: bytes, where: str) -> dict[str, str]:
    try:
        digests = json.loads(data)["sha256"]
        if isinstance(digests, dict) and all(isinstance(v, str) for v in digests.values()):
            return digests
    except (ValueError, KeyError, TypeError):
        pass
    raise DamagedAgentError(f"{where} is damaged; the version's files cannot be verified")


def parse_pointer(data: bytes | None, tag: Tag | None, where: str) -> Pointer:
    """The pointer object; a bare version name is a pointer of a store written before leases."""
    if data is None:
        return Pointer(None, None, None)
    text = data.decode(errors="replace").strip()
    try:
        content = json.loads(text) if text.startswith("{") else {"version": text, "writer": None}
        version, writer, previous = content["version"], content["writer"], content.get("previous")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DamagedAgentError(f"{where} is damaged ({text[:40]!r}); the agent cannot be loaded") from None
    for name in (version, previous):
        if name is not None and not (isinstance(name, str) and is_version(name)):
            raise DamagedAgentError(f"{where} names no committed version ({str(name)[:40]!r}); it is damaged")
    if writer is not None and not isinstance(writer, str):
        raise DamagedAgentError(f"{where} is damaged (its writer is {writer!r:.40})")
    return Pointer(version, writer, tag, previous)


def parse_state(data: bytes, where: str) -> dict[str, Any]:
    """An agent's state.json: a JSON object of this format version."""
    try:
        record = json.loads(data)
    except ValueError as exc:
        raise DamagedAgentError(f"{where} is missing or damaged ({exc}); the agent cannot be loaded") from exc
    if not isinstance(record, dict) or record.get("format_version") != FORMAT_VERSION:
        raise DamagedAgentError(f"{where} is not an agent state of format version {FORMAT_VERSION}")
    return record
