"""Where a store's bytes live: a local directory or an S3 bucket (through s3fs), behind one small interface.

The store asks a back-end for whole objects written atomically, reads, listings, deletions and one conditional
write (compare-and-swap) for the pointers and leases that must never be overwritten blindly. A local directory
gets them from temp files, fsync, rename and an `flock`; S3 from its PUT, which is atomic, and its conditional
PUT (`If-None-Match: *` to create, `If-Match: <etag>` to replace), which s3fs passes through to botocore.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from templora_memory.errors import StoreError, StoreUnavailableError

Tag = str
"""What a conditional write compares: a digest of the local file, the object's ETag on S3."""


_OPERATIONS = ("read", "read_tagged", "write", "swap", "children", "remove", "remove_tree", "copy")


def _medium_faults() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the medium failed: OS and connection errors, and botocore's own (s3fs lets some,
    such as `EndpointConnectionError`, through untranslated)."""
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:
        return (OSError, TimeoutError)
    return (OSError, TimeoutError, BotoCoreError)


def _faults_translated(operation: Any) -> Any:
    """`operation` raising `StoreUnavailableError` (from the original) for a fault of the medium."""

    @functools.wraps(operation)
    def translated(self: Blobs, *args: Any, **kwargs: Any) -> Any:
        try:
            return operation(self, *args, **kwargs)
        except StoreError:
            raise
        except _medium_faults() as exc:
            if missing_credentials(exc):
                raise  # not a fault of the medium: the store's opening says which variables to set
            raise StoreUnavailableError(
                f"the store at {self.url} failed ({type(exc).__name__}: {str(exc)[:200]}); retry shortly"
            ) from exc

    return translated


class Blobs(ABC):
    """Objects under one root, named by '/'-separated paths relative to it.

    Every operation of a back-end raises `StoreUnavailableError` for a fault of the medium (a network error, a
    full disk, an S3 error other than "not found"), so callers tell "retry later" from "damaged".
    """

    url: str
    """The root, as the user wrote it (for messages)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap each operation a back-end defines so that its faults come out as `StoreUnavailableError`."""
        super().__init_subclass__(**kwargs)
        for name in _OPERATIONS:
            if name in cls.__dict__:
                setattr(cls, name, _faults_translated(cls.__dict__[name]))

    @abstractmethod
    def read(self, path: str) -> bytes | None:
        """The object's bytes, or None if there is none."""

    @abstractmethod
    def read_tagged(self, path: str) -> tuple[bytes | None, Tag | None]:
        """The object's bytes and the tag a later `swap` compares (None, None if there is none)."""

    @abstractmethod
    def write(self, path: str, data: bytes) -> None:
        """Write the whole object atomically and durably: a reader sees the old bytes or the new ones."""

    @abstractmethod
    def swap(self, path: str, data: bytes, tag: Tag | None) -> Tag | None:
        """Write only if the object still has `tag` (None: only if there is no object); the new tag, or None
        if the condition failed and nothing was written."""

    @abstractmethod
    def children(self, path: str) -> list[str]:
        """Names directly under `path` (objects and folders), [] if none."""

    @abstractmethod
    def remove(self, paths: list[str]) -> None:
        """Delete these objects (missing ones are fine)."""

    @abstractmethod
    def remove_tree(self, path: str) -> None:
        """Delete everything under `path`."""

    @abstractmethod
    def copy(self, source: str, target: str) -> None:
        """Copy one object (without moving its bytes through this process where the back-end allows)."""

    def locate(self, path: str) -> str:
        """The full location of `path`, for messages."""
        return f"{self.url.rstrip('/')}/{path}"


def missing_credentials(exc: BaseException) -> bool:
    """True for botocore's errors saying no (or only part of the) AWS credentials were found."""
    return type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError")


def open_blobs(url: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> Blobs:
    """The back-end for `url`: a local directory (a path or file://) or s3://bucket/prefix."""
    text = os.fspath(url)
    if text.startswith("s3://"):
        return S3Blobs(text, storage_options or {})
    if "://" in text and not text.startswith("file://"):
        raise StoreError(
            f"store {text!r}: only local directories and s3://bucket/prefix URLs are supported (a store needs "
            "conditional writes, which these two provide); for S3-compatible services pass endpoint_url in "
            "storage_options"
        )
    if storage_options:
        raise StoreError(f"storage_options apply to s3:// stores only, not to the local directory {text!r}")
    return LocalBlobs(Path(text.removeprefix("file://")).expanduser())


class LocalBlobs(Blobs):
    """A local directory: atomic writes by temp file + fsync + rename; `swap` under an flock of the folder."""

    def __init__(self, root: Path) -> None:
        """Objects live under `root` (created on first write)."""
        self.root = root
        self.url = str(root)

    def read(self, path: str) -> bytes | None:
        """The file's bytes, or None."""
        try:
            return (self.root / path).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read_tagged(self, path: str) -> tuple[bytes | None, Tag | None]:
        """The file's bytes and their digest."""
        data = self.read(path)
        return data, _digest(data)

    def write(self, path: str, data: bytes) -> None:
        """Temp file, fsync, rename over, fsync the folder."""
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, data)

    def swap(self, path: str, data: bytes, tag: Tag | None) -> Tag | None:
        """Compare the digest and write, both under an exclusive flock on the folder's `.lock` file."""
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        with _flocked(target.parent / ".lock"):
            if _digest(self.read(path)) != tag:
                return None
            write_atomically(target, data)
        return _digest(data)

    def children(self, path: str) -> list[str]:
        """Entries of the folder."""
        try:
            return sorted(os.listdir(self.root / path))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def remove(self, paths: list[str]) -> None:
        """Unlink each file, then fsync the folders."""
        folders = set()
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                (self.root / path).unlink()
                folders.add((self.root / path).parent)
        for folder in folders:
            fsync_dir(folder)

    def remove_tree(self, path: str) -> None:
        """Rename the folder away first, so it never shows half-deleted, then delete it."""
        folder = self.root / path
        if folder.exists():
            trash = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.deleted")
            folder.rename(trash)
            shutil.rmtree(trash)

    def copy(self, source: str, target: str) -> None:
        """A hard link (the files never change once written), or a copy where links are not possible."""
        destination = self.root / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(self.root / source, destination)
        except FileExistsError:
            return
        except OSError:
            shutil.copy2(self.root / source, destination)


class S3Blobs(Blobs):
    """An S3 bucket and prefix through s3fs; conditional PUTs for `swap` (AWS S3, MinIO, moto, ...)."""

    def __init__(self, url: str, storage_options: dict[str, Any]) -> None:
        """`storage_options` go to `s3fs.S3FileSystem` (key, secret, endpoint_url, client_kwargs, ...)."""
        try:
            import s3fs
        except ImportError as exc:
            raise StoreError(
                f's3:// stores need the store extra ({exc.name} is missing): pip install "templora-memory[store]"'
            ) from None
        self.url = url.rstrip("/")
        self.prefix = self.url.removeprefix("s3://")
        if not self.prefix:
            raise StoreError(f"store {url!r} names no bucket: use s3://bucket or s3://bucket/prefix")
        # listings are never cached: a store must see other processes' objects at once
        self.fs = s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True, **storage_options)

    def _key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if path else self.prefix

    def read(self, path: str) -> bytes | None:
        """GET the object."""
        try:
            return self.fs.cat_file(self._key(path))
        except FileNotFoundError:
            return None

    def read_tagged(self, path: str) -> tuple[bytes | None, Tag | None]:
        """HEAD for the ETag, then GET. If the object changes between the two, the bytes are newer than the tag,
        and a `swap` with that tag is refused: a stale read can never win a conditional write."""
        try:
            tag = self.fs.info(self._key(path))["ETag"]
            return self.fs.cat_file(self._key(path)), tag
        except FileNotFoundError:
            return None, None

    def write(self, path: str, data: bytes) -> None:
        """PUT the object (atomic on S3)."""
        self.fs.pipe_file(self._key(path), data)

    def swap(self, path: str, data: bytes, tag: Tag | None) -> Tag | None:
        """PUT with `If-None-Match: *` (tag None) or `If-Match: tag`; a failed precondition returns None."""
        try:
            if tag is None:
                done = self.fs.pipe_file(self._key(path), data, mode="create")
            else:
                done = self.fs.pipe_file(self._key(path), data, IfMatch=tag)
        except FileExistsError:
            return None
        except OSError as exc:
            if _precondition_failed(exc):
                return None
            raise
        return done["ETag"]

    def children(self, path: str) -> list[str]:
        """LIST one level under the prefix."""
        try:
            return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(self._key(path), detail=False))
        except FileNotFoundError:
            return []

    def remove(self, paths: list[str]) -> None:
        """One batched DELETE."""
        if paths:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm([self._key(path) for path in paths])

    def remove_tree(self, path: str) -> None:
        """DELETE every object under the prefix."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._key(path), recursive=True)

    def copy(self, source: str, target: str) -> None:
        """Server-side COPY."""
        self.fs.copy(self._key(source), self._key(target))


def _precondition_failed(exc: OSError) -> bool:
    """True for S3's 412 PreconditionFailed (or 409 ConditionalRequestConflict), which s3fs turns into OSError."""
    response = getattr(exc.__cause__, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict") or status in (409, 412)


def _digest(data: bytes | None) -> Tag | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held on `path` for the block (POSIX flock)."""
    import fcntl

    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file, fsync, rename over `path`, fsync the directory."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
