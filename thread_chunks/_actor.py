"""The actor that holds the user's function and runs calls on it."""

from __future__ import annotations

import contextlib
import functools
import inspect
import operator
import os
import pickle
import re
import stat
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple, TypeAlias

import cloudpickle
import ray

from ._errors import ResultError
from ._types import Args, Kwargs

Item: TypeAlias = "tuple[int, Args, Kwargs | None]"
"""One row as sent to an actor: its number, positional and keyword arguments (None when it
has none), read as ``item[ROW]``, ``item[ARGS]``, ``item[KWARGS]``.

Rows and outcomes are exact tuples, not named ones: the garbage collector stops tracking an
exact tuple that holds only atoms (numbers, strings, bytes, None) and exact tuples it no
longer tracks, but never a tuple subclass, nor a tuple holding a dict (even an empty one:
it could be filled). A run makes one of each per row, and they live across several batches,
so otherwise they reach the oldest generation and make its full passes (which visit every
object the process holds) several times a run."""

ROW: Final = 0
ARGS: Final = 1
KWARGS: Final = 2

Outcome: TypeAlias = "tuple[int, bool, Any, float, float, str, int | None]"
"""One row's outcome, as an actor reports it and the checkpoint records it: ``(row, ok,
value, started, ended, traceback, memory)``, read as ``outcome[OK]`` and so on (an exact
tuple, as :data:`Item` says why).

- ``value``: when ``ok``, the result *pickled* on the actor (a :data:`Payload`: its size is
  known, and it is unpickled only when handed out, by :func:`unpack`); otherwise the
  exception.
- ``started``, ``ended``: epoch seconds.
- ``traceback``: the remote traceback (empty on success).
- ``memory``: the call's peak memory: bytes its worker's resident memory rose above what it
  was when the call started (None where not measured; see :class:`_Meter`)."""

OK: Final = 1
VALUE: Final = 2
STARTED: Final = 3
ENDED: Final = 4
TRACEBACK: Final = 5
MEMORY: Final = 6


def failed(row: int, error: BaseException, started: float, ended: float) -> Outcome:
    """The outcome of a row that failed on the driver's side (no remote traceback)."""
    return (row, False, error, started, ended, "", None)


class LabelledActor:
    """Holds a function so it is copied to a worker once, not with every call.

    ``run(label, *args)`` returns ``(label, func(*args))`` so results can be put back in order.
    Subclass it to give the worker state of its own (open a dataset once, warm a cache); the
    subclass, plain or decorated with ``ray.remote``, is accepted wherever actors are
    (``actor_cls=``, ``Chunker(actors=...)``, ``chunk(..., actors=...)``). A subclass that
    overrides :meth:`run` is honoured: every call goes through it.

    Example::

        class Warm(LabelledActor):
            def __init__(self, func):
                super().__init__(func)
                self.table = load_table()  # once per worker
    """

    def __init__(self, func: Callable[..., Any] | None) -> None:
        self._func = func

    def run(self, label: Any, /, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """Call the stored function and return ``(label, result)``."""
        if self._func is None:
            raise RuntimeError("this actor holds no function yet: call set_func first")
        return label, self._func(*args, **kwargs)

    def set_func(self, func: Callable[..., Any]) -> None:
        """Replace the stored function."""
        self._func = func

    def get_func(self) -> Callable[..., Any] | None:
        """Return the stored function."""
        return self._func

    # -- used by thread-chunks' scheduler; not part of the 1.0.5 surface --------------------

    def _tc_run_batch(self, items: Sequence[Item] | bytes,
                      refs: Sequence[ray.ObjectRef[Any]] = (), mark: str = "") -> Reply:
        """Run several rows one after the other; their outcomes as one reply (read by
        :func:`read_reply`). ``items`` come as a list, or packed in one ``bytes`` object by
        the driver (:func:`thread_chunks._wire.pack_batch`) with the references in them
        beside it (``refs``). ``mark``: from when its arguments are fetched until its rows have
        run, a marker file of that name (:func:`_marker`) tells :meth:`_tc_usage` on this
        node that the call has started (the first call on a node, whose memory is read while
        it runs, is marked).

        Each result is pickled here, on its own: a result that cannot be pickled fails only
        its row (a :class:`ResultError` naming it), and the driver learns every result's size
        (batches and the ordered buffer are bounded in bytes). The reply is one ``bytes``
        object, so Ray serialises one object per batch, not one per row, plus the large
        buffers of the results (numpy arrays' data) out of band: Ray writes them into its
        object store once, and the driver reads them from there without a copy.

        An ``ObjectRef`` that is a whole argument (positional or keyword) is replaced by its
        value, as Ray does for task arguments; refs nested inside other values stay refs.
        """
        if isinstance(items, bytes):
            items = unpack_batch(items, refs)
            values = _resolve(items) if refs else {}  # every reference is among ``refs``
        else:
            values = _resolve(items)
        outcomes: list[tuple[int, bool, Any, float, float, str]] = []
        peaks: list[int] = []  # the measured peak of each row in outcomes, once measured
        buffers: list[pickle.PickleBuffer] = []
        aside = _aside(buffers)
        size = 0  # bytes of the pickled results
        busy = 0.0  # seconds inside the function
        plain = True  # every row succeeded, every result in band
        call = self._tc_call()
        meter = _meter()
        meter.reset()
        marker = _mark_start(mark) if mark else ""  # arguments fetched: it runs
        measured = time.time()
        last = len(items) - 1
        try:
            for position, (index, args, kwargs) in enumerate(items):
                start = time.time()
                try:
                    if values:
                        args, kwargs = _substitute(args, kwargs, values)
                    value = call(index, args, kwargs or {})
                except BaseException as exc:  # the user's error travels back as a value
                    if _ray_exit(exc):
                        raise
                    plain = False
                    ended = time.time()
                    busy += ended - start
                    outcomes.append((index, False, _pack_error(exc), start, ended,
                                     traceback.format_exc()))
                else:
                    ended = time.time()
                    busy += ended - start
                    try:
                        payload = _pack_out_of_band(value, buffers, aside)
                    except Exception as exc:
                        plain = False
                        error = ResultError(
                            f"row {index} of {function_name(self._func)} returned a "
                            f"{_type_name(value)}, which cannot be pickled to travel back: "
                            f"{type(exc).__name__}: {exc}")
                        outcomes.append((index, False, _pack_error(error), start, ended, ""))
                    else:
                        if isinstance(payload, bytes):
                            size += len(payload)
                        else:
                            plain = False
                            first, count = payload[1], payload[2]
                            size += len(payload[0]) + sum(
                                b.raw().nbytes for b in buffers[first:first + count])
                        outcomes.append((index, True, payload, start, ended, ""))
                    del value
                if ended - measured >= _MEASURE_EVERY or position == last:
                    peak = meter.peak()  # the peak of these rows (one, unless they are tiny)
                    peaks.extend([peak] * (len(outcomes) - len(peaks)))
                    if position != last:  # (the next call resets when it starts)
                        meter.reset()
                        measured = time.time()
        finally:
            if marker:
                with contextlib.suppress(OSError):
                    os.unlink(marker)
        rows = list(map(tuple.__add__, outcomes, ((peak,) for peak in peaks)))
        took = outcomes[-1][4] - outcomes[0][3] if outcomes else 0.0
        listed = pickle.dumps((rows, plain, size, max(peaks, default=0), busy, took),
                              protocol=5)
        return (listed, buffers) if buffers else listed

    def _tc_call(self) -> Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]:
        """How one row is run: through ``run`` when a subclass overrides it (the 1.0.5 hook),
        else the stored function directly. Ray wraps actor methods in a wrapper whose own
        parameters (``self``, ``_ray_trace_ctx``) would swallow keyword arguments of the
        same name, so the default path must not go through ``run``."""
        func = self._func
        if func is None or inspect.unwrap(type(self).run) is not _DEFAULT_RUN:
            return lambda label, args, kwargs: self.run(label, *args, **kwargs)[1]
        return lambda _label, args, kwargs: func(*args, **kwargs)

    def _tc_ready(self, func: Callable[..., Any] | None) -> NodeMemory:
        """The readiness probe: take ``func`` (through :meth:`set_func`) when given, and
        tell the node this worker runs on and its memory."""
        if func is not None:
            self.set_func(func)
        return node_memory()

    def _tc_settle(self, pids: Sequence[int]) -> NodeMemory:
        """Wait until the processes ``pids`` on this node (workers Ray killed for memory) are
        gone, then read the node's memory. Ray reports the death of a killed worker once it
        has disconnected, while the kernel may still be freeing its memory for a second or
        more (a zombie until its last thread has exited): a call started meanwhile is the
        newest task on a node still above Ray's threshold, and Ray kills it too."""
        deadline = time.monotonic() + _SETTLE_SECONDS
        left = list(pids)
        while left and time.monotonic() < deadline:
            left = [pid for pid in left if _exists(pid)]
            if left:
                time.sleep(0.01)
        return node_memory()

    def _tc_usage(self, pid: int, mark: str) -> tuple[int, float, bool, bool]:
        """What process ``pid`` on this node (a worker running a call) is doing: the private
        memory it has held at most since its call started (its high-water mark, which the
        worker reset then, less file and shared pages; its resident memory where that is
        not readable; 0 when neither is), the CPU seconds it has used, whether it is
        asleep (waiting, not starved of CPU), and whether its call marked ``mark`` has
        started (a worker Ray has not yet handed the call sleeps at its idle footprint
        too)."""
        started = os.path.exists(_marker(mark, pid))
        return (*self._usage(pid), started)

    @staticmethod
    def _usage(pid: int) -> tuple[int, float, bool]:
        try:
            with open(f"/proc/{pid}/status", "rb") as status:
                high, _, mapped = _status_fields(status.read())
            with open(f"/proc/{pid}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
            ticks = os.sysconf("SC_CLK_TCK")  # state is field 3, utime and stime 14 and 15
            return max(0, high - mapped), (int(fields[11]) + int(fields[12])) / ticks, \
                fields[0] in (b"S", b"I")
        except (OSError, ValueError, IndexError):
            pass
        try:
            import psutil

            process = psutil.Process(pid)
            times = process.cpu_times()
            return int(process.memory_info().rss), float(times.user + times.system), \
                process.status() in (psutil.STATUS_SLEEPING, psutil.STATUS_IDLE)
        except Exception:
            return 0, 0.0, False

    def _tc_identity(self) -> tuple[str, int]:
        """The Ray node id and process id of this worker."""
        return ray.get_runtime_context().get_node_id(), os.getpid()


_USER: int | None = os.getuid() if hasattr(os, "getuid") else None
"""This process's user (None where there are no user ids)."""


def _marker(mark: str, pid: int) -> str:
    """The file that tells a call marked ``mark`` runs in process ``pid`` (on its node)."""
    return os.path.join(tempfile.gettempdir(), f"thread-chunks-calls-{_USER or 0}",
                        f"{mark}.{pid}")


_MARKER_NAME = re.compile(r"[0-9a-f]{32}\.([0-9]+)")


def _mark_start(mark: str) -> str:
    """Leave the marker of a call marked ``mark`` in this process (its path; "" when it
    cannot be left: the call is then never read as started, and its node waits for it to
    end). Its directory must be this user's own, writable by no one else, and not a link;
    markers left in it by workers that died (Ray kills a worker for memory without its
    ``finally``) are removed."""
    marker = _marker(mark, os.getpid())
    directory = os.path.dirname(marker)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
        found = os.lstat(directory)
        if not stat.S_ISDIR(found.st_mode) or stat.S_IMODE(found.st_mode) & 0o022 or (
                _USER is not None and found.st_uid != _USER):
            return ""
        if os.name != "nt":  # (os.kill(pid, 0) is no test of a process there)
            for name in os.listdir(directory):
                left = _MARKER_NAME.fullmatch(name)
                if left and not _exists(int(left[1])):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(directory, name))
        with open(marker, "x"):
            pass
    except OSError:
        return ""
    return marker


_SETTLE_SECONDS = 60.0
"""The longest a worker waits for a killed worker's process to be gone (its memory free)."""

_MEASURE_EVERY = 1e-3
"""Rows of a batch are measured together until this many seconds have passed (a
measurement costs about 25 us: tiny rows share one; each longer row has its own)."""


class _Meter:
    """Measures the peak memory of the calls in this worker process.

    Linux: writing ``5`` to ``/proc/self/clear_refs`` resets the process's high-water mark
    (``VmHWM``) to its current resident memory; after the call, ``VmHWM`` is the highest
    it reached. A call's peak is that high-water mark less the resident memory when it
    started, less what file-backed and shared pages it mapped meanwhile (``RssFile``,
    ``RssShmem``): Ray's object store hands arrays over as shared pages, and pages of files
    are reclaimable, so neither is memory the call holds on its own. What is counted is the
    call's private memory, the memory Ray's memory monitor sees it add to its node.

    Elsewhere (or where ``clear_refs`` cannot be written): the worker's lifetime peak
    (``ru_maxrss``) less its size when the first call started, an upper bound.

    Resetting reads ``/proc/self/statm`` (the same counters as ``VmRSS`` and ``RssFile`` +
    ``RssShmem``, in pages, without the text of ``status``: a fifth of its cost); only the
    peak needs ``status`` (``VmHWM`` is nowhere else).
    """

    def __init__(self) -> None:
        self._clear: int | None = None
        self._status: int | None = None
        self._statm: int | None = None
        try:
            self._status = os.open("/proc/self/status", os.O_RDONLY)
            self._clear = os.open("/proc/self/clear_refs", os.O_WRONLY)
            os.write(self._clear, b"5")
        except OSError:
            self._clear = None
        if self._clear is not None:
            with contextlib.suppress(OSError):
                self._statm = os.open("/proc/self/statm", os.O_RDONLY)
        self._base = self._mapped = 0
        self._first = _max_rss()

    @property
    def readable(self) -> bool:
        return self._status is not None

    def read(self) -> tuple[int, int, int]:
        """(high-water mark, resident, file and shared pages), in bytes."""
        assert self._status is not None
        return _status_fields(os.pread(self._status, 8192, 0))

    def reset(self) -> None:
        if self._clear is not None:
            os.write(self._clear, b"5")
            if self._statm is None:
                _, self._base, self._mapped = self.read()
            else:  # size, resident, shared (file and shmem) ... in pages
                fields = os.pread(self._statm, 256, 0).split(maxsplit=3)
                self._base, self._mapped = int(fields[1]) * _PAGE, int(fields[2]) * _PAGE

    def peak(self) -> int:
        if self._clear is None:
            return max(0, _max_rss() - self._first)
        high, _, mapped = self.read()
        return max(0, high - self._base - max(0, mapped - self._mapped))


_PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
"""Bytes in a page (the unit of ``/proc/self/statm``)."""


def _status_fields(data: bytes) -> tuple[int, int, int]:
    """(high-water mark, resident, file and shared pages) in bytes, from the text of a
    ``/proc/<pid>/status``."""
    found = []
    for key in (b"VmHWM:", b"VmRSS:", b"RssFile:", b"RssShmem:"):
        at = data.find(key)
        found.append(0 if at < 0 else int(data[at + len(key):data.index(b"kB", at)]) << 10)
    return found[0], found[1], found[2] + found[3]


def _max_rss() -> int:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak << 10)  # bytes on macOS, else KiB


@functools.cache
def _meter() -> _Meter:
    return _Meter()


class NodeMemory(NamedTuple):
    """A node's memory as a worker on it reads it (bytes): what a memory budget is made of."""

    node: str
    """Ray's node id."""
    total: int
    """The node's memory (its cgroup's limit when lower)."""
    used: int
    """In use now (not counting reclaimable caches), as Ray's memory monitor counts it."""
    threshold: float
    """The fraction of ``total`` at which Ray's memory monitor kills workers
    (``RAY_memory_usage_threshold``; 1.0 when the monitor is off)."""
    worker: int = 0
    """The private memory of the worker that read it (what each actor takes idle)."""
    pid: int = 0
    """The process id of that worker."""

    def budget(self) -> int:
        """Bytes calls may add before Ray's monitor would kill: up to the threshold, less
        what is in use now, less a margin of 5 % of the node (at least 256 MiB)."""
        margin = max(self.total // 20, 256 << 20)
        return max(0, int(self.threshold * self.total) - self.used - margin)


def _exists(pid: int) -> bool:
    """Whether process ``pid`` exists here (a zombie does: its memory may not be free)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # another user's process (the pid was taken again)
    return True


def node_memory() -> NodeMemory:
    """This node's memory (see :class:`NodeMemory`), read here, on the node."""
    total = used = 0
    try:
        info = {}
        with open("/proc/meminfo", "rb") as meminfo:
            for line in meminfo:
                name, _, rest = line.partition(b":")
                info[name] = int(rest.split()[0]) << 10
        total, used = info[b"MemTotal"], info[b"MemTotal"] - info[b"MemAvailable"]
        limit = _cgroup_limit()
        if limit is not None and limit[0] < total:
            total, used = limit
    except (OSError, KeyError, ValueError, IndexError):
        try:
            import psutil

            memory = psutil.virtual_memory()
            total, used = int(memory.total), int(memory.total - memory.available)
        except Exception:
            pass
    threshold = 1.0 if os.environ.get("RAY_memory_monitor_refresh_ms") == "0" else float(
        os.environ.get("RAY_memory_usage_threshold", "0.95"))
    worker = 0
    meter = _meter()
    if meter.readable:
        _, resident, mapped = meter.read()
        worker = max(0, resident - mapped)
    return NodeMemory(ray.get_runtime_context().get_node_id(), total, used, threshold, worker,
                      os.getpid())


def _cgroup_limit() -> tuple[int, int] | None:
    """(limit, used) of this process's memory cgroup when it has a limit (v2, then v1);
    used less inactive file pages, as Ray counts it."""
    for limit_file, current_file, stat_file, inactive in (
            ("memory.max", "memory.current", "memory.stat", b"inactive_file"),
            ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes",
             "memory/memory.stat", b"total_inactive_file")):
        base = "/sys/fs/cgroup/"
        try:
            with open(base + limit_file, "rb") as f:
                raw = f.read().strip()
            if raw == b"max":
                return None
            with open(base + current_file, "rb") as f:
                current = int(f.read())
            idle = 0
            with open(base + stat_file, "rb") as f:
                for line in f:
                    name, _, value = line.partition(b" ")
                    if name == inactive:
                        idle = int(value)
            return int(raw), max(0, current - idle)
        except (OSError, ValueError):
            continue
    return None


_DEFAULT_RUN = LabelledActor.run
"""``LabelledActor.run`` as defined here, before Ray wraps the methods of an actor class."""


_unpacking = threading.local()


def _ref_at(index: int) -> ray.ObjectRef[Any]:
    """A reference in a packed batch: the ``index``-th of those sent beside it."""
    refs: Sequence[ray.ObjectRef[Any]] = _unpacking.refs
    return refs[index]


def unpack_batch(payload: bytes, refs: Sequence[ray.ObjectRef[Any]]) -> list[Item]:
    """The rows of a batch packed by :func:`thread_chunks._wire.pack_batch`."""
    _unpacking.refs = refs
    try:
        rows: list[Item] = pickle.loads(payload)
    finally:
        _unpacking.refs = ()
    return rows


def _resolve(items: Sequence[Item]) -> dict[ray.ObjectRef[Any], Any]:
    """The values of the refs that are whole arguments of ``items``, fetched together.

    A ref that cannot be fetched maps to the exception, so only its rows fail.
    """
    refs = {a for item in items for a in (*item[ARGS], *(item[KWARGS] or {}).values())
            if isinstance(a, ray.ObjectRef)}
    if not refs:
        return {}
    unique = list(refs)
    try:
        return dict(zip(unique, ray.get(unique), strict=True))
    except Exception:
        values: dict[ray.ObjectRef[Any], Any] = {}
        for ref in unique:
            try:
                values[ref] = ray.get(ref)
            except Exception as exc:
                values[ref] = _Unresolved(exc)
        return values


class _Unresolved:
    def __init__(self, error: Exception) -> None:
        self.error = error


def _substitute(args: tuple[Any, ...], kwargs: dict[str, Any] | None,
                values: dict[ray.ObjectRef[Any], Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    def value(a: Any) -> Any:
        if not isinstance(a, ray.ObjectRef):
            return a
        got = values[a]
        if isinstance(got, _Unresolved):
            raise got.error
        return got

    return tuple(value(a) for a in args), {k: value(v) for k, v in (kwargs or {}).items()}


def function_name(func: object) -> str:
    """The name shown in messages and recorded in checkpoints."""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    return str(name) if name else type(func).__name__


def _type_name(value: object) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else \
        f"{kind.__module__}.{kind.__qualname__}"


Payload: TypeAlias = "bytes | Packed"
"""A pickled result: ``bytes``, or a :class:`Packed` pickle whose large buffers stayed out of
band."""
Reply: TypeAlias = "bytes | tuple[bytes, list[Any]]"
"""What one call of ``_tc_run_batch`` returns: its outcomes pickled, and the out-of-band
buffers of their results, when there are any."""
OUT_OF_BAND_BYTES = 64 << 10
"""Buffers of a result (a numpy array's data) of at least this size travel out of band."""


class Packed(NamedTuple):
    """A result pickled with its large buffers out of band: they arrive as zero-copy views
    of Ray's object store (which holds them until the result is handed out and dropped)."""

    header: bytes
    buffers: tuple[Any, ...]
    nbytes: int


def weight(payload: Payload) -> int:
    """The bytes a pickled result takes."""
    return payload.nbytes if isinstance(payload, Packed) else len(payload)


def in_band(payload: Payload) -> bytes:
    """A pickled result as one standalone pickle (what a checkpoint stores)."""
    return pack(unpack(payload)) if isinstance(payload, Packed) else payload


def _aside(buffers: list[pickle.PickleBuffer]) -> Callable[[pickle.PickleBuffer], bool]:
    """The pickler's buffer callback that puts buffers of :data:`OUT_OF_BAND_BYTES` or more
    into ``buffers`` (out of band) and keeps the others in the pickle."""

    def aside(buffer: pickle.PickleBuffer) -> bool:
        if buffer.raw().nbytes < OUT_OF_BAND_BYTES:
            return True  # in band
        buffers.append(buffer)
        return False

    return aside


def _pack_out_of_band(value: object, buffers: list[pickle.PickleBuffer],
                      aside: Callable[[pickle.PickleBuffer], bool]
                      ) -> bytes | tuple[bytes, int, int]:
    """``value`` pickled, its buffers of :data:`OUT_OF_BAND_BYTES` or more appended to
    ``buffers`` (by ``aside``, made by :func:`_aside` for them): the pickle alone, or
    (pickle, first buffer, count)."""
    first = len(buffers)
    try:
        header = pickle.dumps(value, protocol=5, buffer_callback=aside)
    except Exception:
        del buffers[first:]
        return pack(value)
    return header if len(buffers) == first else (header, first, len(buffers) - first)


def pack(value: object) -> bytes:
    """``value`` pickled: the standard pickler (fast, C) first; cloudpickle for what it cannot
    do (lambdas, local classes). What neither can pickle raises."""
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:
        return cloudpickle.dumps(value, protocol=5)


def unpack(payload: Payload) -> Any:
    """A value :func:`pack` pickled, or a :class:`Packed` result (its arrays are then
    read-only views of Ray's object store, as Ray's own results are)."""
    if isinstance(payload, Packed):
        return pickle.loads(payload.header, buffers=payload.buffers)
    return pickle.loads(payload)


def _ray_exit(exc: BaseException) -> bool:
    """Whether ``exc`` is Ray ending this actor (``ray.actor.exit_actor()``: a SystemExit
    Ray marks), which must reach Ray. Any other exception the function raises, a
    BaseException too (``KeyboardInterrupt``, ``asyncio.CancelledError``, ``SystemExit``
    from ``sys.exit()``), fails its row alone: the other rows of the batch still run."""
    return isinstance(exc, SystemExit) and hasattr(exc, "ray_terminate_msg")


def _pack_error(exc: BaseException) -> bytes:
    """``exc`` pickled when it survives the round trip, else a RuntimeError describing it."""
    try:
        payload = pack(exc)
        unpack(payload)
    except Exception:
        return pack(RuntimeError(f"{_type_name(exc)}: {exc} (the original exception could "
                                 "not be pickled)"))
    return payload


class Replied(NamedTuple):
    """One :meth:`LabelledActor._tc_run_batch` reply, read (by :func:`read_reply`)."""

    outcomes: list[Outcome]
    ok: bool
    """Every row succeeded."""
    size: int
    """Bytes of the pickled results (of the rows that succeeded)."""
    peak: int
    """The highest peak memory measured among the rows."""
    busy: float
    """Seconds spent inside the function, all rows together."""
    took: float
    """Seconds from the first row's start to the last row's end."""


def consecutive(outcomes: Sequence[Outcome]) -> bool:
    """Whether ``outcomes`` are of rows n, n + 1, n + 2, ... (checked in C)."""
    if not outcomes:
        return False
    first = outcomes[0][ROW]
    return all(map(operator.eq, map(_ROW, outcomes), range(first, first + len(outcomes))))


_ROW = operator.itemgetter(ROW)
"""An :data:`Outcome`'s (or an :data:`Item`'s) row (in C)."""


def read_reply(reply: Reply) -> Replied:
    """The outcomes of one :meth:`LabelledActor._tc_run_batch` reply: successes keep their
    pickled result (unpickled when handed out), failures carry their exception. A reply
    whose rows all succeeded with results in band (the common case) costs no Python per row
    here."""
    listed, buffers = (reply, []) if isinstance(reply, bytes) else reply
    rows: list[tuple[Any, ...]]
    rows, plain, size, peak, busy, took = pickle.loads(listed)
    outcomes: list[Outcome] = rows  # the actor's 7-tuples
    if plain:
        return Replied(outcomes, True, size, peak, busy, took)
    ok = True
    for position, outcome in enumerate(outcomes):
        value = outcome[VALUE]
        if outcome[OK]:
            if type(value) is tuple:
                header, first, count = value
                views = tuple(buffers[first:first + count])
                nbytes = len(header) + sum(memoryview(v).nbytes for v in views)
                value = Packed(header, views, nbytes)
            else:
                continue
        else:
            ok = False
            try:
                value = unpack(value)
            except Exception as exc:
                value = RuntimeError(f"the exception raised by row {outcome[ROW]} could not "
                                     f"be unpickled here: {type(exc).__name__}: {exc}")
        outcomes[position] = (outcome[ROW], outcome[OK], value, outcome[STARTED],
                              outcome[ENDED], outcome[TRACEBACK], outcome[MEMORY])
    return Replied(outcomes, ok, size, peak, busy, took)


RemoteLabelledActor = ray.remote(LabelledActor)
"""``ray.remote(LabelledActor)``: the actor class thread-chunks creates by default."""
