"""Functions for the row-keyed checkpoint tests (importable: pickled by reference)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def mark(directory: str, name: object) -> None:
    """Leave one file per execution, named after the row."""
    Path(directory, f"{name}-{os.getpid()}-{time.monotonic_ns()}").touch()


def executions(directory: str | Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in Path(directory).iterdir():
        name = entry.name.rsplit("-", 2)[0]
        counts[name] = counts.get(name, 0) + 1
    return counts


def total(values: Any, directory: str) -> float:
    """The sum of an array (or of a referenced one), counted per execution."""
    import ray

    if isinstance(values, ray.ObjectRef):
        values = ray.get(values)
    mark(directory, f"{values.dtype}:{float(values.sum())}")
    return float(values.sum())


def fail_unless(x: int, directory: str, flag: str) -> int:
    """Raise for x == 3 until the file ``flag`` exists."""
    mark(directory, x)
    if x == 3 and not os.path.exists(flag):
        raise ValueError("not yet")
    return x
