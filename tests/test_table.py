"""Results as a table (``Checkpoint.to_pandas``), each row's state (``inspect --rows``), and
what ``inspect`` says of a run that is on, stopped or killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import ray

from tests import workloads as w
from tests.conftest import ROOT, wait_until_recorded
from thread_chunks import Checkpoint, NotStored, _checkpoint, chunk
from thread_chunks.__main__ import _text
from thread_chunks._inflight import InFlight, Running

pytestmark = pytest.mark.usefixtures("ray_running")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thread_chunks", *args], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=60)


def _closed(path: Path) -> None:
    """Let this process's store of ``path`` finish closing (it records the run's end)."""
    _checkpoint._wait_for_close(str(path))


def _rows_listed(stdout: str) -> dict[int, list[str]]:
    """``inspect --rows``' listing: row -> its fields (state first)."""
    lines = stdout.split("\nrow ", 1)[1].splitlines()[1:]
    return {int(line.split()[0]): line.split(None, 4)[1:] for line in lines}


def test_a_failed_row_and_reused_rows_in_the_table_and_the_row_list(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    assert chunk(w.fail_on, [[0], [1]], chunk_size=2, path=ckpt) == [0, 1]
    out = chunk(w.fail_on, [[0], {"x": 1}, [3], [4, 5]], chunk_size=2, path=ckpt,
                on_error="return")
    assert out[:2] == [0, 1] and isinstance(out[2], ValueError) and out[3] == 4
    _closed(ckpt)

    listed = _cli("inspect", str(ckpt), "--rows")
    assert listed.returncode == 0, listed.stderr
    rows = _rows_listed(listed.stdout)
    assert [rows[i][0] for i in range(4)] == ["done", "done", "failed", "done"]
    assert rows[0][-1] == rows[1][-1] == "reused" and rows[3][-1] != "reused"
    assert rows[2][-1] == "ValueError: bad value 3"
    as_json = json.loads(_cli("inspect", str(ckpt), "--rows", "--json").stdout)
    assert [(r["row"], r["state"], r["reused"]) for r in as_json["rows"]] == [
        (0, "done", True), (1, "done", True), (2, "failed", False), (3, "done", False)]
    assert as_json["rows"][2]["error"] == "ValueError: bad value 3"

    table = Checkpoint.load(ckpt).to_pandas()
    assert list(table.columns) == ["x", "bad", "result", "status", "error", "started", "ended",
                                   "seconds", "memory", "actor"]
    assert table.index.name == "row" and list(table.index) == [0, 1, 2, 3]
    assert list(table["x"]) == [0, 1, 3, 4]  # a dict row bound by name
    assert list(table["bad"]) == [3, 3, 3, 5]  # the default applied where not given
    assert list(table["status"]) == ["done", "done", "failed", "done"]
    assert table["result"][0] == 0 and table["result"][3] == 4
    assert pd.isna(table["result"][2])
    assert table["error"][2] == "ValueError: bad value 3" and pd.isna(table["error"][0])
    assert (table["seconds"] >= 0).all() and str(table["started"].dt.tz) == "UTC"
    assert (table["ended"] >= table["started"]).all()
    assert table["actor"].notna().all() and str(table["memory"].dtype) == "Int64"


def test_a_dict_result_is_spread_and_names_never_clash(tmp_path: Path) -> None:
    def fit(status: str, lr: float = 0.1) -> dict[str, float]:
        return {"loss": lr * 2, "status": 1.0}

    ckpt = tmp_path / "fit.ckpt"
    chunk(fit, [["a"], ["b", 0.5]], chunk_size=2, path=ckpt)
    table = Checkpoint.load(ckpt).to_pandas()
    assert list(table.columns)[:6] == ["status", "lr", "result.loss", "result.status",
                                       "run.status", "error"]
    assert list(table["status"]) == ["a", "b"]  # the parameter keeps its name
    assert list(table["run.status"]) == ["done", "done"]
    assert list(table["result.loss"]) == [0.2, 1.0]
    assert table.to_numpy().shape == (2, 11)


def test_without_a_stored_signature_columns_are_positions_and_keywords(
        tmp_path: Path) -> None:
    ckpt = tmp_path / "hand.ckpt"
    Checkpoint("f", [[1, 2], {"y": 3}], [10, None], [True, False], 1, 1, ckpt)
    view = Checkpoint.load(ckpt)
    table = view.to_pandas()
    assert list(table.columns)[:4] == ["arg0", "arg1", "y", "result"]
    assert list(table["status"]) == ["done", "not run"]
    assert table["arg0"][0] == 1 and table["y"][1] == 3

    def f(x: int, y: int = 7) -> int:
        return x

    bound = view.to_pandas(func=f)
    assert list(bound.columns)[:3] == ["x", "y", "result"]
    assert list(bound["y"]) == [2, 3] and bound["x"][0] == 1 and bound["x"].isna()[1]


def test_a_large_argument_stays_its_description(tmp_path: Path) -> None:
    def energy(field: np.ndarray, scale: float) -> float:
        return float(field.sum()) * scale

    ckpt = tmp_path / "fields.ckpt"
    chunk(energy, [[np.full(2**18, 1.0), 0.5]], chunk_size=1, path=ckpt)
    table = Checkpoint.load(ckpt).to_pandas()
    assert isinstance(table["field"][0], NotStored) and table["scale"][0] == 0.5
    assert table["result"][0] == 2**17


def test_without_pandas_the_error_says_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "hand.ckpt"
    Checkpoint("f", [[1]], [1], [True], 1, 1, ckpt)
    view = Checkpoint.load(ckpt)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install 'thread-chunks\[table\]'"):
        view.to_pandas()


def test_a_running_row_is_seen_from_a_second_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver runs one actor; row 2 blocks until a gate opens that never does: another
    process lists rows 0 and 1 done, row 2 running, row 4 waiting; after kill -9 of the
    driver the file says it got no update since, without an ETA."""
    ckpt, gate, open_gate = tmp_path / "run.ckpt", tmp_path / "gate", tmp_path / "open"
    open_gate.touch()
    paths = [open_gate, open_gate, gate, open_gate, open_gate]
    script = f"""
import thread_chunks
from tests import workloads as w
rows = [[i, {[str(p) for p in paths]!r}[i], 120.0] for i in range(5)]
thread_chunks.chunk(w.behind_gate, rows, chunk_size=1, batch_size=1, path={str(ckpt)!r},
                    progress_bar=False)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_recorded(driver, ckpt, 2)
        deadline = time.time() + 60
        while True:  # row 2 is sent right after row 1 is recorded
            listed = _cli("inspect", str(ckpt), "--rows")
            assert listed.returncode == 0, listed.stderr
            rows = _rows_listed(listed.stdout)
            if rows[2][0] == "running" or time.time() > deadline:
                break
            time.sleep(0.1)
        assert [rows[i][0] for i in (0, 1, 2, 4)] == ["done", "done", "running", "waiting"]
        assert rows[3][0] in ("running", "waiting")  # queued behind row 2, or not yet sent
        assert "state:        running" in listed.stdout
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.communicate()
    monkeypatch.setattr("thread_chunks._checkpoint.inspection.QUIET_SECONDS", 0.0)
    info = _checkpoint.summary(ckpt)
    assert info["state"] == "quiet" and info["eta_seconds"] is None
    assert info["done"] == 2 and info["running"] >= 1
    assert "no update since" in _text(info)


def test_a_stopped_run_has_no_eta_and_says_when_it_stopped(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(ValueError, match="bad value 0"):
        chunk(w.fail_on, [[i, 0] for i in range(30)], chunk_size=1, batch_size=1, path=ckpt)
    _closed(ckpt)
    info = _checkpoint.summary(ckpt)
    assert info["state"] == "stopped" and info["eta_seconds"] is None
    assert info["run_ended"] >= info["run_started"] and info["done"] < 30
    assert info["running"] == 0
    text = _cli("inspect", str(ckpt)).stdout
    assert "state:        stopped at " in text and "eta:          -" in text
    rows = _rows_listed(_cli("inspect", str(ckpt), "--rows").stdout)
    assert "running" not in {fields[0] for fields in rows.values()}  # marks cleared at close


def test_a_run_stopped_by_ctrl_c_says_so(tmp_path: Path) -> None:
    runs, ckpt = tmp_path / "runs", tmp_path / "run.ckpt"
    runs.mkdir()
    script = f"""
import thread_chunks
from tests import workloads as w
rows = [[i, {str(runs)!r}, 0.2] for i in range(40)]
thread_chunks.chunk(w.slow_count, rows, chunk_size=2, batch_size=1, path={str(ckpt)!r},
                    progress_bar=False)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_recorded(driver, ckpt, 4)
    driver.send_signal(signal.SIGINT)
    driver.communicate(timeout=60)
    assert driver.returncode != 0
    info = _checkpoint.summary(ckpt)
    assert info["state"] == "stopped" and info["eta_seconds"] is None, info
    assert info["run_ended"] is not None and info["running"] == 0
    assert 4 <= info["done"] < 40
    assert "state:        stopped at " in _text(info)


def test_inspect_explains_repeated_and_reused_rows_and_what_was_not_measured(
        tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    rows: list[Any] = [[1.0, 2.0]] * 100
    chunk(w.add, rows, chunk_size=2, path=ckpt)
    _closed(ckpt)
    first = _checkpoint.summary(ckpt)
    assert (first["state"], first["done"], first["rows_stored"]) == ("finished", 100, 1)
    assert first["distinct_calls_latest_run"] == 1
    assert first["rate_per_second"] is None and first["eta_seconds"] is None  # too few to rate
    text = _text(first)
    assert "100 rows (1 distinct call), 0 reused, 100 computed" in text
    assert "rate:         - (measured over at least 10 calls and 2 s)" in text
    chunk(w.add, rows, chunk_size=2, path=ckpt)  # every row reused: no call measured
    _closed(ckpt)
    again = _checkpoint.summary(ckpt)
    assert again["reused_latest_run"] == 100 and again["calls_latest_run"] == 0
    assert again["call_memory_median"] is None
    assert "call memory:  -" in _text(again) and "rate:         -\n" in _text(again)


def test_reading_leaves_no_wal_or_shm_beside_the_file(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    chunk(w.square, [[i] for i in range(5)], chunk_size=2, path=ckpt)
    _closed(ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]
    before = ckpt.read_bytes()
    assert _cli("inspect", str(ckpt), "--rows").returncode == 0
    assert Checkpoint.load(ckpt).done == 5 and _checkpoint.summary(ckpt)["done"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]
    assert ckpt.read_bytes() == before


def test_the_summary_is_printed_when_the_plot_cannot_be(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    chunk(w.square, [[i] for i in range(3)], chunk_size=2, path=ckpt)
    _closed(ckpt)
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from thread_chunks.__main__ import main\n"
            f"sys.exit(main(['inspect', {str(ckpt)!r}, '--plot', 'out.png']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=60)
    assert proc.returncode == 1
    assert "done:         3 / 3" in proc.stdout
    assert "pip install 'thread-chunks[plot]'" in proc.stderr
    assert not (tmp_path / "out.png").exists()


def test_the_table_has_a_numpy_form(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    chunk(w.add, [[i, 10] for i in range(4)], chunk_size=2, path=ckpt)
    view = Checkpoint.load(ckpt)
    assert np.array(view.output).tolist() == [10, 11, 12, 13]
    frame: pd.DataFrame = view.to_pandas()
    assert frame[["x", "y", "result"]].to_numpy().tolist() == [
        [i, 10, i + 10] for i in range(4)]


def test_rows_in_flight_are_kept_as_spans() -> None:
    flight = InFlight()
    flight.sent([0, 1, 2, 3])
    flight.sent([4, 5])
    flight.sent([9, 7])  # retries: any rows, any order
    assert list(Running(flight.blob()).rows()) == [0, 1, 2, 3, 4, 5, 7, 9]
    flight.finished([0, 1, 2, 3])  # the usual batch: its span goes at once
    flight.finished([7])
    flight.finished([5])  # part of a span
    running = Running(flight.blob())
    assert list(running.rows()) == [4, 9] and len(running) == 2
    assert 4 in running and 5 not in running and 3 not in running
    flight.finished([4, 9])
    assert flight.blob() == b"" and not Running(flight.blob())
    assert not Running(None) and not Running(b"\x01")  # no value, or not ours: none
