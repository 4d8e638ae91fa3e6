"""Large results (issue 16): the functions, and the driver side of each case, run in a fresh
Python by tests/test_results_memory.py (``main``) and imported by benchmarks/results.py.

Every function returns one 8 MiB float64 array per row (``field``), so 80 rows make 640 MB
of results, far more than the driver should ever hold at once. Only numpy and the standard
library are imported here at module level: the workers of every peer (Ray actors,
multiprocessing and joblib processes) import this module by reference.

Peak memory is the process's own high-water mark, ``VmHWM`` in /proc/self/status (reset
through /proc/self/clear_refs where Linux allows it). ``resource.getrusage(RUSAGE_SELF)
.ru_maxrss`` is reported beside it but not relied on: Linux keeps in it the larger of the
process's peak and the peak of the process it was started from (``signal->maxrss`` survives
``exec``), so a driver started by a pytest that once held 600 MB reports at least 600 MB and
hides any growth below that. Where there is no /proc, ``ru_maxrss`` is all there is.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

ROWS = 80
"""Rows of the result sweeps: 640 MB of results in all."""
MB = 8
"""Size of one result (MiB): the ideal driver growth of a sweep that streams its results."""
HEAD_SECONDS = 4.0
"""How long row 0 of ``slow_head_field`` sleeps while the other rows finish."""
INPUT_MB = 20
"""Size of the array each row of the ``carried-N`` cases brings along (MiB)."""
CHUNK_SIZE = 2
RESULT = "RESULT "
"""The prefix of the one line of JSON a case prints on stdout."""

Field = npt.NDArray[np.float64]


# -- the functions the workers run ----------------------------------------------------------

def field(i: int, mb: int = MB) -> Field:
    """``mb`` MiB of float64, every element ``i``."""
    return np.full(mb * 2**20 // 8, float(i))


def slow_head_field(i: int, mb: int = MB) -> Field:
    """``field``, but row 0 sleeps ``HEAD_SECONDS`` first: in ordered mode every other result
    arrives before it and waits behind it."""
    if i == 0:
        time.sleep(HEAD_SECONDS)
    return field(i, mb)


def counted_field(i: int, marks: str, mb: int = MB) -> Field:
    """``field``, leaving one file in the folder ``marks`` per call that really ran."""
    Path(marks, f"{i}-{os.getpid()}-{time.monotonic_ns()}").touch()
    return field(i, mb)


def first_plus(block: Field, i: int) -> float:
    """A small result from a row that brings a large array of its own."""
    return float(block[0]) + i


def input_block(i: int, mb: int = INPUT_MB) -> Field:
    """The array row ``i`` of a ``carried-N`` case brings: ``mb`` MiB, every element ``i``."""
    return np.full(mb * 2**20 // 8, float(i))


# -- measuring -------------------------------------------------------------------------------

def _status_kib(name: str) -> int | None:
    """A ``kB`` line of /proc/self/status (None where there is none)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def maxrss_mb() -> float:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` in MB (KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def own_peak_mb() -> float:
    """This process's own peak RSS (MB): VmHWM, else ru_maxrss."""
    hwm = _status_kib("VmHWM")
    return maxrss_mb() if hwm is None else hwm / 2**10


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # VmHWM := the RSS now
    except OSError:
        return False
    return True


def machine_shm_mb() -> float:
    """The machine's shared memory in use (``Shmem`` in /proc/meminfo, MB): tmpfs files, Ray's
    object store among them. Any process on the machine moves it: a reading, not a bound."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("Shmem:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    return 0.0


class PeakGrowth:
    """``with PeakGrowth() as peak: work()``, then how far this process's peak RSS rose above
    where it stood just before (MB): ``peak.mb`` by VmHWM (above the RSS then, when the peak
    can be reset; above the earlier peak otherwise), ``peak.maxrss_mb`` by ``ru_maxrss``, and,
    sampled every ``interval`` seconds, ``peak.anon_mb`` (the process's own memory: heap,
    copies) and ``peak.shared_mb`` (pages mapped from Ray's object store and files)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.mb = self.maxrss_mb = self.anon_mb = self.shared_mb = 0.0
        self._base = self._maxrss_base = self._anon_base = self._shared_base = 0.0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _split() -> tuple[float, float]:
        anon = _status_kib("RssAnon") or 0
        shared = (_status_kib("RssFile") or 0) + (_status_kib("RssShmem") or 0)
        return anon / 2**10, shared / 2**10

    def _sample(self) -> None:
        while True:
            anon, shared = self._split()
            self.anon_mb = max(self.anon_mb, anon - self._anon_base)
            self.shared_mb = max(self.shared_mb, shared - self._shared_base)
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> PeakGrowth:
        gc.collect()
        _reset_peak()
        self._base, self._maxrss_base = own_peak_mb(), maxrss_mb()
        self._anon_base, self._shared_base = self._split()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.mb = own_peak_mb() - self._base
        self.maxrss_mb = maxrss_mb() - self._maxrss_base

    def report(self) -> dict[str, float]:
        """The growths as JSON fields."""
        return {"growth_mb": self.mb, "maxrss_growth_mb": self.maxrss_mb,
                "anon_mb": self.anon_mb, "shared_mb": self.shared_mb}


# -- the cases, each run in a fresh driver by main() -----------------------------------------

def _start_ray() -> None:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)


def _drain(results: Any, expected: range, first: Callable[[], object] | None = None) -> int:
    """Check and drop each result (row ``i`` is ``field(i)``, rows ``expected`` in order),
    calling ``first`` once the first one is in; how many came."""
    count = 0
    for i, value in zip(expected, results, strict=True):
        if count == 0 and first is not None:
            first()
        assert value[0] == float(i), (i, value[0])
        count += 1
        del value
    return count


def sweep(case: str, folder: str, rows: int = ROWS) -> dict[str, Any]:
    """One sweep of ``rows`` 8 MB results through ordered ``.imap`` on warmed-up actors; the
    driver's peak RSS growth over it. Cases:

    - ``streamed``: ``field``, no checkpoint;
    - ``checkpointed``: the same with ``path=folder/ckpt``;
    - ``slow-head``: ``slow_head_field``: the other results arrive while row 0 sleeps;
    - ``write`` / ``reused``: ``counted_field`` (marks in ``folder/marks``) with
      ``path=folder/ckpt``: ``write`` records every row, ``reused`` (a later run, another
      process) should find them all and run nothing. Both report the calls run and the marks.
    """
    from thread_chunks import chunked

    _start_ray()
    ckpt = os.path.join(folder, "ckpt")
    out: dict[str, Any] = {"case": case}
    if case in ("streamed", "checkpointed", "slow-head"):
        f = chunked(chunk_size=CHUNK_SIZE, progress_bar=False)(
            slow_head_field if case == "slow-head" else field)
        _drain(f.imap([[i] for i in (1, 2)]), range(1, 3))  # actors started, function held
        shm = machine_shm_mb()

        def held() -> None:  # slow-head: what the machine holds once row 0 is done
            out["shm_at_first_mb"] = machine_shm_mb() - shm

        with PeakGrowth() as peak:
            out["rows"] = _drain(f.imap([[i] for i in range(rows)],
                                        path=ckpt if case == "checkpointed" else None),
                                 range(rows), held)
        f.close()
    elif case in ("write", "reused"):
        marks, warm = os.path.join(folder, "marks"), os.path.join(folder, f"warm-{case}")
        os.makedirs(marks, exist_ok=True)
        os.makedirs(warm, exist_ok=True)
        g = chunked(chunk_size=CHUNK_SIZE, progress_bar=False)(counted_field)
        _drain(g.imap([[i, warm] for i in (1, 2)]), range(1, 3))
        with PeakGrowth() as peak:
            out["rows"] = _drain(g.imap([[i, marks] for i in range(rows)], path=ckpt),
                                 range(rows))
        out.update(calls=g.stats.calls, marks=len(os.listdir(marks)))
        g.close()
    else:
        raise ValueError(f"unknown case {case!r}")
    out.update(peak.report())
    return out


def carried(folder: str, rows: int) -> dict[str, Any]:
    """``rows`` rows ``[input_block(i), i]`` (each its own 20 MB array, built before the
    measurement: the inputs are in the baseline) through ``first_plus`` with
    ``path=folder/ckpt``: the driver's growth (copies of the inputs), then what
    ``Checkpoint.load`` shows of the rows."""
    from thread_chunks import Checkpoint, chunked

    _start_ray()
    f = chunked(chunk_size=CHUNK_SIZE, progress_bar=False)(first_plus)
    assert f.map([[np.zeros(4), i] for i in range(2)]) == [0.0, 1.0]
    inputs = [[input_block(i), i] for i in range(rows)]
    with PeakGrowth() as peak:
        count = 0
        for i, value in enumerate(f.imap(inputs, path=os.path.join(folder, "ckpt"))):
            assert value == 2.0 * i, (i, value)
            count += 1
    f.close()
    parameters = Checkpoint.load(os.path.join(folder, "ckpt")).parameters
    return {"case": f"carried-{rows}", "rows": count, **peak.report(),
            "input_mb": rows * INPUT_MB,
            "parameters": len(parameters),
            "arrays_kept": sum(isinstance(row[0], np.ndarray) for row in parameters),
            "small_arguments": [row[1] for row in parameters]}


def inspect_checkpoint(folder: str) -> dict[str, Any]:
    """``thread-chunks inspect --json folder/ckpt`` in this process; its JSON and the peak
    RSS of the whole process (imports included)."""
    from thread_chunks.__main__ import main as cli

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli(["inspect", "--json", os.path.join(folder, "ckpt")])
    return {"case": "inspect", "exit": code, "summary": json.loads(printed.getvalue()),
            "peak_mb": own_peak_mb(), "maxrss_mb": maxrss_mb()}


def main(case: str, folder: str) -> None:
    """Run ``case`` (a ``sweep`` case, ``carried-N`` or ``inspect``); print its JSON line."""
    if case == "inspect":
        out = inspect_checkpoint(folder)
    elif case.startswith("carried-"):
        out = carried(folder, int(case.removeprefix("carried-")))
    else:
        out = sweep(case, folder)
    print(RESULT + json.dumps(out), flush=True)
