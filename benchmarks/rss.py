"""The driver's peak RSS during a piece of work, sampled in a background thread.

psutil's RSS is read every ``interval`` seconds; ``shared`` is the resident part mapped from
files and shared memory (Ray's object store, memmaps), the rest is the process's own (anon)
memory. ``shm`` is the machine's shared memory (``Shmem`` in /proc/meminfo: tmpfs files
such as joblib's memmaps in /dev/shm, and Ray's object store), which holds a copy a driver
may write without mapping it. The kernel's own high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs`` where Linux allows it) is kept as a cross-check of the sampled
peak, which a short spike between two samples can escape.
"""

from __future__ import annotations

import gc
import threading
from types import TracebackType

import psutil

MB = float(2**20)


def _kernel_peak() -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return None


def _machine_shm() -> float:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("Shmem:"):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return 0.0


def _reset_kernel_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


class PeakRSS:
    """``with PeakRSS() as peak: work()``, then ``peak.rss`` (MB above the RSS just before)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.rss = self.anon = self.shared = self.shm = 0.0
        self.kernel: float | None = None
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._base = (0.0, 0.0, 0.0, 0.0)
        self._kernel_base: float | None = None

    def _read(self) -> tuple[float, float, float, float]:
        info = self._process.memory_info()
        return (info.rss / MB, (info.rss - info.shared) / MB, info.shared / MB,
                _machine_shm())

    def _sample(self) -> None:
        while True:
            self._sample_once()
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self._base = self._read()
        self._kernel_base = self._base[0] if _reset_kernel_peak() else None
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_once()
        peak = _kernel_peak()
        if self._kernel_base is not None and peak is not None:
            self.kernel = peak - self._kernel_base

    def _sample_once(self) -> None:
        rss, anon, shared, shm = self._read()
        self.rss = max(self.rss, rss - self._base[0])
        self.anon = max(self.anon, anon - self._base[1])
        self.shared = max(self.shared, shared - self._base[2])
        self.shm = max(self.shm, shm - self._base[3])
