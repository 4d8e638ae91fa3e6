"""The checkpoint's file, before SQLite sees it: only a regular file is ours, its header is read
without SQLite (a file we refuse gets no ``-wal``, ``-shm`` or ``-journal`` beside it), a new
one appears whole (made beside and linked into place: racing first users see one file), and
the filesystem it lives on is known (a network or cluster filesystem gets no WAL shared
memory: see ``_checkpoint.connect._connect``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import sys
import uuid
from collections.abc import Callable

from . import config
from ._errors import CheckpointError

SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_BYTES = 100
_APPLICATION_ID_AT = 68
"""Where SQLite keeps ``PRAGMA application_id`` in the file's header (4 bytes, big-endian)."""

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))

NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "smbfs", "smb2", "ceph",
    "fuse.ceph", "fuse.ceph-fuse", "panfs", "gfs2", "ocfs2", "afs", "openafs", "glusterfs",
    "fuse.glusterfs", "fuse.sshfs", "fuse.s3fs", "fuse.rclone", "fuse.gcsfuse", "fuse.juicefs",
    "fuse.beegfs", "pvfs2", "orangefs", "wekafs", "quobyte", "fuse.quobyte", "9p", "davfs",
    "fuse.davfs2", "vboxsf", "ncpfs", "coda",
    # macOS (statfs's f_fstypename)
    "afpfs", "webdav", "macfuse", "osxfuse",
})
"""Filesystem types (Linux's ``/proc/self/mountinfo``, macOS's ``f_fstypename``) on which
SQLite's WAL shared memory and its fcntl locks are not safe: shared over a network or between
nodes, or served by a FUSE daemon that may not honour them."""

_FILESYSTEM_SETTINGS = ("auto", "local", "network")


def kind_of(mode: int) -> str | None:
    """What a file of this ``st_mode`` is, when it is not a regular file."""
    return next((name for test, name in _KINDS if test(mode)), None if stat.S_ISREG(mode)
                else "not a regular file")


def existing(path: str) -> os.stat_result | None:
    """The status of the regular file at ``path``, None when there is none; a FIFO, a device,
    a socket or a directory there is a CheckpointError (nothing is opened)."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"cannot use checkpoint path {path!r}: {exc}") from exc
    kind = kind_of(status.st_mode)
    if kind is not None:
        raise CheckpointError(
            f"checkpoint path {path!r} is {kind}, not a regular file: thread-chunks keeps a "
            "checkpoint only in a regular file; choose a file's path")
    return status


def header(path: str) -> bytes:
    """The first 100 bytes of the regular file at ``path``, read without SQLite and without
    blocking (``O_NONBLOCK``: a FIFO put there meanwhile is refused, not waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path!r}: {exc}") from exc
    try:
        kind = kind_of(os.fstat(fd).st_mode)
        if kind is not None:
            raise CheckpointError(f"checkpoint path {path!r} is {kind}, not a regular file")
        return os.read(fd, _HEADER_BYTES)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path!r}: {exc}") from exc
    finally:
        os.close(fd)


def application_id(head: bytes) -> int | None:
    """The ``PRAGMA application_id`` an SQLite header holds (None: not an SQLite file)."""
    if len(head) < _HEADER_BYTES or not head.startswith(SQLITE_MAGIC):
        return None
    return int.from_bytes(head[_APPLICATION_ID_AT:_APPLICATION_ID_AT + 4], "big")


def has_wal(path: str) -> bool:
    """Whether writes not yet merged into the file wait in its ``-wal`` file."""
    try:
        return os.path.getsize(path + "-wal") > 0
    except OSError:
        return False


def writable_directory(path: str) -> bool:
    """Whether files can be made beside ``path`` (SQLite's ``-wal``/``-shm``/``-journal``).
    ``os.access`` is not enough (root passes it on a read-only mount): the mount is asked."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.access(directory, os.W_OK):
        return False
    statvfs = getattr(os, "statvfs", None)  # not on Windows
    try:
        return statvfs is None or not statvfs(directory).f_flag & os.ST_RDONLY
    except OSError:
        return True


def create(path: str, fill: Callable[[str], None]) -> bool:
    """Make the file at ``path`` whole or not at all: ``fill`` writes a new file beside it
    (a hidden name of its own), which is then linked into place, never replacing a file
    that appeared meanwhile. True when this call made it, False when another did first.

    Where the filesystem has no hard links (some SMB and FUSE mounts), the new file is
    renamed into place once ``path`` is checked absent (not atomic there: the writer lock
    taken before, ``_lock``, still keeps racing writers apart)."""
    directory, name = os.path.split(os.path.abspath(path))
    fresh = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.new")
    try:
        os.close(os.open(fresh, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        fill(fresh)
        os.chmod(fresh, 0o600)
        try:
            os.link(fresh, path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS,
                                 errno.EMLINK, errno.EXDEV):
                raise
            if os.path.lexists(path):
                return False
            os.rename(fresh, path)
            return True
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path!r}: {exc}") from exc
    finally:
        for leftover in (fresh, fresh + "-journal"):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
            except OSError:
                pass


# -- which filesystem ------------------------------------------------------------------------


def _unescape(field: str) -> str:
    """A path as ``/proc/self/mountinfo`` writes it (space, tab, newline, backslash octal)."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _linux_type(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The filesystem type of the mount holding ``path``: the longest mount point that is a
    prefix of its real path (the last one mounted there wins)."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split(" ")
        try:
            point = _unescape(fields[4])
            fstype = fields[fields.index("-", 6) + 1]
        except (IndexError, ValueError):
            continue
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), fstype)
    return None if best is None else best[1]


class _DarwinStatfs(ctypes.Structure):
    _fields_ = [("f_bsize", ctypes.c_uint32), ("f_iosize", ctypes.c_int32),
                ("f_blocks", ctypes.c_uint64), ("f_bfree", ctypes.c_uint64),
                ("f_bavail", ctypes.c_uint64), ("f_files", ctypes.c_uint64),
                ("f_ffree", ctypes.c_uint64), ("f_fsid", ctypes.c_int32 * 2),
                ("f_owner", ctypes.c_uint32), ("f_type", ctypes.c_uint32),
                ("f_flags", ctypes.c_uint32), ("f_fssubtype", ctypes.c_uint32),
                ("f_fstypename", ctypes.c_char * 16), ("f_mntonname", ctypes.c_char * 1024),
                ("f_mntfromname", ctypes.c_char * 1024), ("f_reserved", ctypes.c_uint32 * 8)]


def _darwin_type(path: str) -> str | None:
    """``statfs(2)``'s ``f_fstypename`` (the 64-bit-inode struct, macOS 10.6+)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        statfs = getattr(libc, "statfs$INODE64", None) or libc.statfs
        found = _DarwinStatfs()
        if statfs(os.fsencode(path), ctypes.byref(found)) != 0:
            return None
        name: bytes = found.f_fstypename
        return name.decode("ascii", "replace")
    except (OSError, AttributeError, ValueError):
        return None


def filesystem_type(path: str) -> str | None:
    """The type of the filesystem that holds ``path`` (or would hold it: its directory),
    None where it cannot be told."""
    probe = path if os.path.exists(path) else os.path.dirname(os.path.abspath(path))
    platform: str = sys.platform  # as a value: this module serves both systems
    if platform.startswith("linux"):
        return _linux_type(probe)
    if platform == "darwin":
        return _darwin_type(probe)
    return None


def setting() -> str:
    """``config.checkpoint_filesystem``, checked."""
    value = config.checkpoint_filesystem
    if value not in _FILESYSTEM_SETTINGS:
        raise ValueError(
            "thread_chunks.config.checkpoint_filesystem: expected 'auto', 'local' or "
            f"'network', got {value!r}")
    return value


def on_network(path: str) -> bool:
    """Whether the checkpoint at ``path`` is treated as on a network filesystem: as
    ``config.checkpoint_filesystem`` says, or (``"auto"``) by its filesystem's type."""
    chosen = setting()
    if chosen != "auto":
        return chosen == "network"
    return (filesystem_type(path) or "").lower() in NETWORK_FILESYSTEMS
