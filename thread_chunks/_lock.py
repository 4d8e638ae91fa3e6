"""One writer at a time: a lock file beside the checkpoint (``<path>.lock``), on every
filesystem.

The lock is made whole beside it and hard-linked into place (``link`` fails when the name
exists, on NFS too, where fcntl locks may not work; where links do not, ``O_CREAT | O_EXCL``).
It names its holder: host, pid, the process's start (to tell a reused pid), since when, and a
lease the holder renews in a background thread while its store is open, with the rows done
so far (what ``inspect`` tells while it cannot read). A lock whose holder is gone is taken
over: on this host when its pid is not alive (or is another process now), from another host
when its lease expired. Taking over is one taker at a time (a second lock, ``<lock>.break``),
which removes the stale lock only if it still reads as judged: two drivers taking over one
stale lock do not both win. The holder releases it when its store closes, or at interpreter exit.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ._errors import CheckpointError, CheckpointInUseError

LEASE_SECONDS = 120.0
"""How long a lock stays valid without being renewed, for drivers on other hosts (clocks of
the nodes of a cluster agree to well within it)."""
RENEW_SECONDS = 15.0
"""How often the holder renews its lease (and the rows done)."""
_TAKE_SECONDS = 10.0
"""How long taking the lock may go on while others take it over too, before giving up."""
_BREAK_SECONDS = 30.0
"""A take-over's own marker older than this was left by a taker that died."""
_SIZE = 1024
"""The lock file's length: rewritten in place, always whole bytes of the same length."""

log = logging.getLogger("thread_chunks")


def lock_path(path: str) -> str:
    return path + ".lock"


def _start_of(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, ``/proc``), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    """Whether process ``pid`` of this host still runs, and is the one that started at
    ``start`` (a pid is reused)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    except OSError:
        return True
    now = _start_of(pid)
    return start is None or now is None or now == start


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp).isoformat(sep=" ", timespec="seconds")


@dataclass
class Holder:
    """What a lock file says about the run that holds it."""

    host: str
    pid: int
    start: str | None
    since: float
    renewed: float
    expires: float
    rows_done: int
    rows_total: int
    token: str

    @classmethod
    def parse(cls, raw: bytes) -> Holder | None:
        try:
            data: dict[str, Any] = json.loads(raw.decode("utf-8"))
            return cls(str(data["host"]), int(data["pid"]), data.get("start"),
                       float(data["since"]), float(data["renewed"]), float(data["expires"]),
                       int(data.get("rows_done", 0)), int(data.get("rows_total", 0)),
                       str(data["token"]))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None

    def dump(self) -> bytes:
        text = json.dumps(self.__dict__).encode()
        return text.ljust(_SIZE - 1) + b"\n"

    def gone(self) -> bool:
        """Whether the run that holds this lock is gone: on this host, its process; on
        another, its lease expired."""
        if self.host == socket.gethostname():
            return not _alive(self.pid, self.start)
        return time.time() > self.expires

    def describe(self) -> str:
        who = "this process" if (self.host == socket.gethostname()
                                 and self.pid == os.getpid()) else f"pid {self.pid}"
        total = f" of {self.rows_total}" if self.rows_total else ""
        return (f"a run on host {self.host} ({who}) holds it since {_when(self.since)}; "
                f"{self.rows_done}{total} rows done at its last renewal, "
                f"{_when(self.renewed)}")


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"cannot read the lock {path!r}: {exc}") from exc


def holder(path: str) -> Holder | None:
    """The live run holding the checkpoint at ``path`` (its lock, not gone), or None."""
    for _ in range(3):  # a lock being rewritten reads whole the next time
        raw = _read(lock_path(path))
        if raw is None:
            return None
        found = Holder.parse(raw)
        if found is not None:
            return None if found.gone() else found
        time.sleep(0.05)
    return None


def _in_use(path: str, found: Holder | None, raw: bytes) -> CheckpointInUseError:
    if found is None:
        what = f"its lock {lock_path(path)!r} is held but unreadable ({raw[:60]!r})"
        return CheckpointInUseError(
            f"checkpoint {path!r} is in use by another run: {what}; only one run writes a "
            "checkpoint at a time: wait for it to end, or use another path", path=path)
    return CheckpointInUseError(
        f"checkpoint {path!r} is in use by another run: {found.describe()}. Only one run "
        "writes a checkpoint at a time: wait for it to end, or use another path (a run that "
        f"is gone is noticed: on its host by its pid, elsewhere once its lease of "
        f"{LEASE_SECONDS:.0f} s, renewed every {RENEW_SECONDS:.0f} s, expires)",
        path=path, host=found.host, pid=found.pid, since=found.since, renewed=found.renewed,
        rows_done=found.rows_done)


class WriterLock:
    """This process's lock on one checkpoint, renewed until :meth:`release`."""

    def __init__(self, path: str, me: Holder) -> None:
        self.path = path
        self.file = lock_path(path)
        self._me = me
        self.rows_done: Callable[[], int] = lambda: 0
        """The rows done so far, told in the lease when it is renewed."""
        self._stop = threading.Event()
        self.lost = False
        """Another run took the lock over (our lease ran out while we were alive)."""
        self._thread = threading.Thread(target=self._renew_until_released, daemon=True,
                                        name="thread-chunks checkpoint lease")
        self._thread.start()
        with _held_lock:
            _held.add(self)

    @classmethod
    def acquire(cls, path: str, rows_total: int = 0) -> WriterLock:
        """Take the lock of ``path``, or raise :class:`CheckpointInUseError` naming its live
        holder; a lock left by a run that is gone is taken over."""
        file = lock_path(path)
        now = time.time()
        me = Holder(socket.gethostname(), os.getpid(), _start_of(os.getpid()), now, now,
                    now + LEASE_SECONDS, 0, rows_total, uuid.uuid4().hex)
        deadline = time.time() + _TAKE_SECONDS
        while time.time() < deadline:
            if _create(file, me.dump()):
                return cls(path, me)
            raw = _read(file)
            if raw is None:
                continue  # released meanwhile
            found = Holder.parse(raw)
            if found is None:  # being written now, or damaged: judge it by its age
                try:
                    age = time.time() - os.stat(file).st_mtime
                except FileNotFoundError:
                    continue
                if age < LEASE_SECONDS:
                    time.sleep(0.05)
                    if _read(file) == raw:
                        raise _in_use(path, None, raw)
                    continue
            elif not found.gone():
                raise _in_use(path, found, raw)
            log.warning("checkpoint %s: taking over the lock of a run that is gone (%s)",
                        path, "unreadable" if found is None else found.describe())
            _remove_stale(file, raw, me.token)
        raise CheckpointInUseError(
            f"checkpoint {path!r}: its lock {file!r} changed hands too often to be taken; "
            "another run is starting on it", path=path)

    def _renew_until_released(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            if not self.renew():
                return

    def renew(self) -> bool:
        """Extend the lease (and tell the rows done); False when the lock is no longer ours."""
        now = time.time()
        self._me.renewed, self._me.expires = now, now + LEASE_SECONDS
        try:
            self._me.rows_done = int(self.rows_done())
        except Exception:  # a count is a courtesy: never stop renewing for it
            pass
        try:
            if not self._ours():
                return self._lose("another run took its lock over")
            fd = os.open(self.file, os.O_WRONLY)
            try:
                os.pwrite(fd, self._me.dump(), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except FileNotFoundError:
            return self._lose("its lock file is gone")
        except (OSError, CheckpointError) as exc:
            log.warning("checkpoint %s: renewing the lock failed (%s)", self.path, exc)
        return True

    def _ours(self) -> bool:
        """Whether the lock file names this lock (its token: inode numbers are not to be
        trusted on every filesystem, FUSE's among them)."""
        for _ in range(3):
            raw = _read(self.file)
            if raw is None:
                return False
            found = Holder.parse(raw)
            if found is not None:
                return found.token == self._me.token
            time.sleep(0.05)  # being rewritten
        return False

    def _lose(self, why: str) -> bool:
        if not self._stop.is_set():
            self.lost = True
            log.warning("checkpoint %s: %s; this run stops saving to it", self.path, why)
        return False

    def release(self) -> None:
        """Let the lock go (the file is removed only while it is ours)."""
        if self._stop.is_set():
            return
        self._stop.set()
        with _held_lock:
            _held.discard(self)
        try:
            if self._ours():
                os.unlink(self.file)
        except (OSError, CheckpointError):
            pass


def _create(file: str, content: bytes) -> bool:
    """Make the lock file with ``content``, whole; False when it exists."""
    fresh = f"{file}.{uuid.uuid4().hex[:12]}.new"
    try:
        with open(fresh, "xb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(fresh, file)
        except FileExistsError:
            return False
        except OSError:  # no hard links here: an exclusive create, then the content
            try:
                fd = os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            try:
                os.write(fd, content)
                os.fsync(fd)
            finally:
                os.close(fd)
        return True
    except OSError as exc:
        raise CheckpointError(
            f"cannot take the checkpoint's lock {file!r}: {exc} (a run writes its checkpoint "
            "only where it can create files beside it)") from exc
    finally:
        try:
            os.unlink(fresh)
        except OSError:
            pass


def _remove_stale(file: str, judged: bytes, token: str) -> None:
    """Remove the lock ``file`` judged stale from its content ``judged``, one taker at a
    time: the taker holds ``<lock>.break`` (made as the lock is) and removes the lock only
    if it still reads as judged, so a lock another taker made meanwhile is never removed.
    A ``.break`` left by a taker that died is removed once :data:`_BREAK_SECONDS` old."""
    breaker = file + ".break"
    if not _create(breaker, token.encode()):
        try:
            if time.time() - os.stat(breaker).st_mtime > _BREAK_SECONDS:
                os.unlink(breaker)
        except OSError:
            pass
        time.sleep(0.01)  # another driver is taking over: judge the lock again
        return
    try:
        if _read(file) == judged:
            os.unlink(file)
    except FileNotFoundError:
        pass
    finally:
        try:
            os.unlink(breaker)
        except OSError:
            pass


_held: set[WriterLock] = set()
_held_lock = threading.Lock()


@atexit.register
def _release_all() -> None:
    """Locks still held when the interpreter exits (a store never closed) are let go."""
    with _held_lock:
        held = list(_held)
    for lock in held:
        lock.release()
