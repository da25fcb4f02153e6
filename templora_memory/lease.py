"""Leases: one writer per agent across processes and machines, through a small object in the store.

A lease object holds its owner (host:pid), a random token and an expiry (wall-clock seconds). It is taken with
a conditional write (created if absent, replaced if expired, released, or left by a dead process on this host),
renewed in the background while the agent is resident, and released when the agent leaves RAM. Whoever finds
it held waits, then gets `AgentBusyError`. A lease alone cannot stop a writer that was paused past its expiry:
the store also fences every commit on the agent's pointer (see `store.py`), so such a writer's commit is refused.
Clocks of the machines sharing a store must agree to well within the lease's length.

Renewal survives any error (an unreachable store, a bug in a client library): each failure is logged with the
agent and the error, and retried sooner, with backoff, until the lease would run out. A lease not renewed in time
stops being `usable` a margin before it expires, so the agent stops being served (see `check`) before another
process may take it; if renewal succeeds later and no one took the lease meanwhile, serving resumes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from templora_memory.blobs import Blobs, Tag
from templora_memory.errors import AgentBusyError, ConfigError, LeaseLostError, StoreUnavailableError

log = logging.getLogger("templora_memory.lease")
HOST = socket.gethostname()
MARGIN = 0.1
"""The share of a lease's length before its expiry at which this process stops using it (clock skew, pauses)."""
FIRST_RETRY = 0.2
"""Seconds before the first retry of a failed renewal; doubled at each failure, up to a sixth of the lease."""


@dataclass
class Lease:
    """A lease this process holds on one path."""

    path: str
    token: str
    tag: Tag
    expires: float
    what: str = ""
    """The agent it is for, in words (for logs and errors)."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    """Renewal and release of this lease take turns."""


@dataclass(frozen=True)
class Holder:
    """Who a lease object names, as read from the store."""

    owner: str
    expires: float

    def free(self) -> bool:
        """Expired, released, or held by a process of this host that no longer runs."""
        if self.expires <= time.time():
            return True
        host, _, pid = self.owner.rpartition(":")
        return host == HOST and pid.isdigit() and not _alive(int(pid))


class Leases:
    """The leases one store holds: taken with a wait, renewed by a daemon thread, released on request."""

    def __init__(self, blobs: Blobs, seconds: float, wait: float) -> None:
        """`seconds`: a lease's length (renewed every third of it); `wait`: how long `acquire` waits for one."""
        if not seconds > 0 or not wait >= 0:
            raise ConfigError(f"lease_seconds must be positive and lease_wait >= 0, got {seconds!r} and {wait!r}")
        self.blobs, self.seconds, self.wait = blobs, seconds, wait
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    def acquire(self, path: str, what: str) -> Lease:
        """Take the lease at `path`, waiting up to `wait` seconds while a live holder has it; `what` names the
        agent in the error."""
        deadline, pause = time.monotonic() + self.wait, 0.05
        while True:
            data, tag = self.blobs.read_tagged(path)
            holder = _holder(data)
            if holder is None or holder.free():
                lease = Lease(path, uuid.uuid4().hex, "", time.time() + self.seconds, what)
                new_tag = self.blobs.swap(path, _encode(lease), tag)
                if new_tag is not None:
                    lease.tag = new_tag
                    self._hold(lease)
                    return lease
                continue  # another process took it between our read and write: look again
            if time.monotonic() >= deadline:
                raise AgentBusyError(
                    f"{what} is being written by {holder.owner} (its lease at {self.blobs.locate(path)} runs "
                    f"{max(0.0, holder.expires - time.time()):.0f} s more and is renewed while that process keeps "
                    f"the agent); waited {self.wait:g} s. Retry later, stop that process, or send this agent's "
                    "calls to the process that holds it (Ray Serve routes them by agent id: README, 'Scaling out')"
                )
            time.sleep(pause)
            pause = min(0.5, pause * 2)

    def release(self, lease: Lease) -> None:
        """Stop renewing and mark the lease free (if it is still ours), so the next writer need not wait."""
        self.drop(lease)
        with lease.lock:
            self.blobs.swap(lease.path, _encode(lease, expires=0.0), lease.tag)

    def drop(self, lease: Lease) -> None:
        """Stop renewing a lease whose object is gone or no longer ours."""
        with self._lock:
            if self._held.get(lease.path) is lease:
                del self._held[lease.path]

    def check(self, lease: Lease) -> None:
        """Raise unless this process may still act on the lease: `LeaseLostError` once another writer took it,
        `StoreUnavailableError` while it cannot be renewed (near or past its expiry, one renewal is tried first)."""
        if self._held.get(lease.path) is lease and lease.expires - time.time() < MARGIN * self.seconds:
            self._renew(lease)  # the background renewal fell behind (a paused process, a store that was down)
        if self._held.get(lease.path) is not lease:
            raise LeaseLostError(f"another writer took over {lease.what} (this process's lease lapsed)")
        left = lease.expires - time.time()
        if left < MARGIN * self.seconds:
            state = f"expires in {left:.1f} s" if left > 0 else f"expired {-left:.1f} s ago"
            raise StoreUnavailableError(
                f"this process could not renew its lease on {lease.what} (the store did not answer; it {state}), "
                "so it stops serving the agent until renewal succeeds; retry shortly"
            )

    def _hold(self, lease: Lease) -> None:
        """Keep the lease renewed from now on (starting the renewal thread if none runs)."""
        with self._lock:
            self._held[lease.path] = lease
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_all, name="templora-leases", daemon=True)
                self._renewer.start()

    def _renew_all(self) -> None:
        """Every third of a lease's length, extend each lease held (failed ones sooner, with backoff); end when
        none is held. No error ends this thread."""
        retry = FIRST_RETRY
        while True:
            with self._lock:
                held = list(self._held.values())
                if not held:
                    self._renewer = None
                    return
            failed = [lease for lease in held if not self._renew(lease)]
            retry = min(retry * 2, self.seconds / 6) if failed else FIRST_RETRY
            time.sleep(retry if failed else self.seconds / 3)

    def _renew(self, lease: Lease) -> bool:
        """Extend one lease; if its object changed, another writer took it over and it is dropped. False when the
        renewal failed (logged) and should be tried again soon."""
        with lease.lock:
            if self._held.get(lease.path) is not lease:
                return True  # released meanwhile
            expires = time.time() + self.seconds
            try:
                tag = self.blobs.swap(lease.path, _encode(lease, expires), lease.tag)
            except Exception as exc:  # noqa: BLE001 - any failure: try again soon, the thread must live on
                left = lease.expires - time.time()
                log.warning("could not renew the lease on %s (%.1f s left): %r", lease.what, left, exc)
                return False
            if tag is None:
                log.warning("the lease on %s was taken over by another writer; its commits will be refused", lease.what)
                self.drop(lease)
                return True
            if lease.expires < time.time() + MARGIN * self.seconds:
                log.info("renewed the lease on %s again", lease.what)
            lease.tag, lease.expires = tag, expires
            return True


def _encode(lease: Lease, expires: float | None = None) -> bytes:
    owner = f"{HOST}:{os.getpid()}"
    expiry = lease.expires if expires is None else expires
    return json.dumps({"owner": owner, "token": lease.token, "expires": expiry}).encode()


def _holder(data: bytes | None) -> Holder | None:
    """The lease object's holder; a damaged object counts as no holder (it is replaced by a conditional write)."""
    if data is None:
        return None
    try:
        content = json.loads(data)
        return Holder(str(content["owner"]), float(content["expires"]))
    except (ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
