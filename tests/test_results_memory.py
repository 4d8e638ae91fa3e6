"""Large results in bounded memory (issue 16): 80 rows of 8 MB results (640 MB in all)
streamed through ``.imap``, checkpointed, held behind a slow head row, reused from a
checkpoint and inspected; rows that bring 20 MB arrays of their own, checkpointed.

Each case runs in a fresh driver process (``results_workloads.main``: its own Ray with 2
CPUs, actors warmed up first), which measures its own peak RSS growth over the measured work
and prints one line of JSON. A fresh process, because a process keeps the heap and the
object-store pages it once touched, which would hide a later case's growth. The consumer
checks one element of each result and drops it. Memory is counted, never time.

The peak is the process's own (VmHWM), not ``ru_maxrss``, which under pytest also holds
pytest's own peak (see ``results_workloads``). Where a case cannot avoid pages of Ray's
object store in the driver (a put per row of a large argument), the bound is on the driver's
own memory (``anon_mb``: RSS less shared pages); the other bounds are on the whole RSS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests import results_workloads as rw
from tests.conftest import run_script
from thread_chunks._checkpoint import summary

ROWS = rw.ROWS
MB = float(2**20)


def measured(case: str, folder: Path, timeout: float = 240) -> dict[str, Any]:
    """Run ``case`` of ``results_workloads.main`` in a fresh driver; the JSON it printed."""
    proc = run_script(f"""
        from tests.results_workloads import main
        main({case!r}, {str(folder)!r})
        """, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(rw.RESULT)]
    assert lines, f"case {case} printed no result:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(lines[-1].removeprefix(rw.RESULT))
    return result


@pytest.mark.parametrize(("case", "bound_mb"), [
    ("streamed", 256),  # ideal: one result, 8 MB
    ("slow-head", 320),  # ordered: row 0 sleeps 4 s, the other 79 finish meanwhile
])
def test_large_results_streamed_through_imap_grow_the_driver_little(
        case: str, bound_mb: float, tmp_path: Path) -> None:
    out = measured(case, tmp_path)
    assert out["rows"] == ROWS  # every result came, in order, and was right
    assert out["growth_mb"] <= bound_mb, json.dumps(out)


def test_large_results_checkpointed_as_they_come_are_not_copied_by_the_driver(
        tmp_path: Path) -> None:
    """With ``path=`` every byte of every result is read, to write it to the file, so the
    driver maps every page of Ray's object store the 80 results passed through: how many
    distinct pages that is follows Ray's reuse of freed space, not what the driver holds
    (144-282 MB in 16 runs here, more on a loaded machine; a consumer reading every page
    without a checkpoint maps 640 MB). Those pages are the object store's, counted there
    once; the bound is on the driver's own memory: a result or two being written, not the
    sweep's 640 MB, with a loose bound on the pages mapped (all 80 results kept would map
    640 MB of them)."""
    out = measured("checkpointed", tmp_path)
    assert out["rows"] == ROWS
    assert out["anon_mb"] <= 64, json.dumps(out)  # measured: 26 MB
    # and the pages it maps stay well under the sweep's 640 MB: results are not all kept
    assert out["shared_mb"] <= 480, json.dumps(out)
    recorded = summary(tmp_path / "ckpt")  # the driver has exited: its file is closed
    assert recorded["done"] == recorded["rows_stored"] == ROWS, json.dumps(recorded)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose checkpoint ``ckpt`` holds all 80 results (640 MB) of ``counted_field``,
    written by an earlier driver, and ``marks``: one file per call that ran."""
    folder = tmp_path_factory.mktemp("written")
    out = measured("write", folder)
    assert out["rows"] == out["calls"] == out["marks"] == ROWS
    return folder


def test_a_sweep_reused_from_its_checkpoint_streams_the_results(written: Path) -> None:
    out = measured("reused", written)  # the same rows again, in a new driver
    assert out["rows"] == ROWS  # every result right, in order
    assert out["calls"] == 0 and out["marks"] == ROWS, json.dumps(out)  # none ran again
    assert out["growth_mb"] <= 256, json.dumps(out)


def test_inspect_summarises_a_large_checkpoint_in_little_memory(written: Path) -> None:
    out = measured("inspect", written)  # thread-chunks inspect --json, in a process of its own
    assert out["exit"] == 0
    summary = out["summary"]
    assert summary["done"] == summary["total"] == ROWS, json.dumps(summary)
    assert summary["failed"] == 0 and summary["rows_stored"] == ROWS, json.dumps(summary)
    # importing thread-chunks (and Ray) alone makes about 80 MB of it
    assert out["peak_mb"] <= 200, json.dumps(out)


@pytest.mark.parametrize("rows", [30, 60])  # 600 MB and 1.2 GB of inputs
def test_rows_with_large_arrays_of_their_own_are_not_copied_into_the_checkpoint(
        rows: int, tmp_path: Path) -> None:
    """Each row ``[block, i]`` brings its own 20 MB array; the run keeps a checkpoint. The
    inputs are built before the measurement: growth is what the run copies. Each array is
    put into the object store once (as any large argument): with calls this fast the driver
    then maps about the inputs' size of object-store pages (580 MB of 600 with no checkpoint
    at all), so the bound is on its own memory."""
    out = measured(f"carried-{rows}", tmp_path)  # no exception (sqlite3.DataError)
    inputs_mb = rows * rw.INPUT_MB
    file_mb = sum(part.stat().st_size for part in tmp_path.glob("ckpt*")) / MB
    shown = f"checkpoint {file_mb:.0f} MB: {json.dumps(out)}"
    assert out["rows"] == rows
    assert file_mb < 0.1 * inputs_mb, shown
    assert out["anon_mb"] < 0.5 * inputs_mb, shown
    # Checkpoint.load still shows every row, each array by a placeholder, not the array
    assert out["parameters"] == rows and out["arrays_kept"] == 0, shown
    assert out["small_arguments"] == list(range(rows)), shown
