"""Results kept per identity (issue 26): a changed function deletes nothing and reuses
nothing of the other version, switching back reuses its rows, the warning says what changed,
unknown is a miss, the actors run what is recorded, ``actor_cls`` and ``depends_on`` are part
of the identity, ``inspect`` lists the identities and ``prune`` removes them.

End to end through ``chunk``/``Chunker``/``@chunked`` with ``path=``, real Ray, real files;
what ran is counted with marker files."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import warnings
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import ray

from tests import identity_workloads as iw
from tests.conftest import ROOT, no_restart
from thread_chunks import (
    Checkpoint,
    CheckpointRestartWarning,
    Chunker,
    chunk,
    chunked,
    identities,
    prune,
)
from thread_chunks._checkpoint import FORMAT_VERSION, _wait_for_close

pytestmark = pytest.mark.usefixtures("ray_running")


def _runs(tmp_path: Path) -> str:
    runs = tmp_path / "runs"
    runs.mkdir(exist_ok=True)
    return str(runs)


def _rows(runs: str, *xs: int) -> list[list[object]]:
    return [[x, runs] for x in xs]


# -- switching back and forth --------------------------------------------------------------


def test_f_then_a_changed_f_then_f_again_computes_nothing_the_third_time(
        tmp_path: Path) -> None:
    ckpt, runs = tmp_path / "run.ckpt", _runs(tmp_path)

    def step(x: int, directory: str) -> int:
        iw.mark(directory, f"a{x}")
        return x + 1

    first = step

    def step(x: int, directory: str) -> int:  # type: ignore[no-redef]  # a bug fixed
        iw.mark(directory, f"b{x}")
        return x + 100

    assert chunk(first, _rows(runs, 1, 2), chunk_size=1, path=ckpt) == [2, 3]
    with pytest.warns(CheckpointRestartWarning, match="the body of 'step' changed.*kept"):
        assert chunk(step, _rows(runs, 1, 2), chunk_size=1, path=ckpt) == [101, 102]
    with no_restart():
        assert chunk(first, _rows(runs, 1, 2), chunk_size=1, path=ckpt) == [2, 3]
        assert chunk(step, _rows(runs, 1, 2), chunk_size=1, path=ckpt) == [101, 102]
    assert iw.executions(runs) == {"a1": 1, "a2": 1, "b1": 1, "b2": 1}
    held = identities(ckpt)
    assert [(entry.function, entry.results, entry.latest) for entry in held] == [
        ("step", 2, True), ("step", 2, False)]
    assert Checkpoint.load(ckpt).output == [101, 102]


def test_another_function_on_the_same_file_keeps_the_first_ones_results(
        tmp_path: Path) -> None:
    ckpt, runs = tmp_path / "run.ckpt", _runs(tmp_path)
    rows = _rows(runs, 1, 2, 3)
    chunk(iw.identity, rows, chunk_size=2, path=ckpt)
    with pytest.warns(CheckpointRestartWarning,
                      match="changed from 'identity' to 'scaled_twice'.*kept"):
        assert chunk(iw.scaled_twice, rows, chunk_size=2, path=ckpt) == [2, 4, 6]
    with no_restart():
        assert chunk(iw.identity, rows, chunk_size=2, path=ckpt) == [1, 2, 3]
    assert iw.executions(runs) == {"1": 2, "2": 2, "3": 2}  # once by each function


# -- what the warning says --------------------------------------------------------------------


def test_the_warning_names_a_changed_depends_on_and_switching_back_reuses(
        tmp_path: Path) -> None:
    ckpt, runs = tmp_path / "run.ckpt", _runs(tmp_path)
    rows = _rows(runs, 1, 2)
    assert chunk(iw.identity, rows, chunk_size=1, path=ckpt, depends_on="v1") == [1, 2]
    with pytest.warns(CheckpointRestartWarning, match=r"\(depends_on changed\)"):
        chunk(iw.identity, rows, chunk_size=1, path=ckpt, depends_on="v2")
    with no_restart():
        chunk(iw.identity, rows, chunk_size=1, path=ckpt, depends_on="v1")
    assert iw.executions(runs) == {"1": 2, "2": 2}


def test_depends_on_a_path_is_its_content(tmp_path: Path) -> None:
    ckpt, runs, data = tmp_path / "run.ckpt", _runs(tmp_path), tmp_path / "factor.txt"
    data.write_text("3")
    rows = [[1, runs, str(data)], [2, runs, str(data)]]
    f = chunked(chunk_size=1, depends_on=data)(iw.scaled)
    assert f.map(rows, path=ckpt) == [3, 6]
    assert f.map(rows, path=ckpt) == [3, 6] and f.stats.calls == 0
    data.write_text("5")  # the data changed: the function's results with it
    with pytest.warns(CheckpointRestartWarning, match="depends_on changed"):
        assert f.map(rows, path=ckpt) == [5, 10]
    assert iw.executions(runs) == {"1": 2, "2": 2}
    f.close()


def test_depends_on_is_validated_when_declared() -> None:
    import threading

    with pytest.raises(TypeError, match="depends_on: expected a value that can be encoded"):
        chunked(depends_on=threading.Lock())
    with pytest.raises(TypeError, match="depends_on"):
        Chunker(iw.identity, chunk_size=1, depends_on=threading.Lock())


# -- the identity covers actor_cls ------------------------------------------------------------


def test_actor_cls_is_part_of_the_identity(tmp_path: Path) -> None:
    ckpt, runs = tmp_path / "run.ckpt", _runs(tmp_path)
    rows = _rows(runs, 1, 2)
    assert chunk(iw.identity, rows, chunk_size=1, path=ckpt) == [1, 2]
    with pytest.warns(CheckpointRestartWarning, match=r"actor_cls changed"):
        assert chunk(iw.identity, rows, chunk_size=1, path=ckpt,
                     actor_cls=iw.Times10) == [10, 20]
    with no_restart():
        assert chunk(iw.identity, rows, chunk_size=1, path=ckpt) == [1, 2]
    assert iw.executions(runs) == {"1": 2, "2": 2}


# -- the actors run what is recorded ----------------------------------------------------------


def test_a_callable_changed_in_place_is_sent_again_and_recorded_as_it_ran(
        tmp_path: Path) -> None:
    ckpt, runs = tmp_path / "run.ckpt", _runs(tmp_path)
    model = iw.Model(2, runs)
    with Chunker(model, chunk_size=1) as chunker:
        assert chunker([[1], [2]], path=ckpt) == [2, 4]
        model.k = 3  # in place: the actors hold the old copy
        with pytest.warns(CheckpointRestartWarning):
            assert chunker([[1], [2]], path=ckpt) == [3, 6]
        assert chunker([[1], [2]]) == [3, 6]  # without path= too: they hold k = 3
        model.k = 4
        assert chunker([[1], [2]]) == [4, 8]  # changed without path=: sent again too
    with no_restart():  # a fresh Model(3) reuses what k = 3 computed, not k = 2's
        assert chunk(iw.Model(3, runs), [[1], [2]], chunk_size=1, path=ckpt) == [3, 6]
    assert iw.executions(runs) == {"2x1": 1, "2x2": 1, "3x1": 2, "3x2": 2, "4x1": 1,
                                   "4x2": 1}


# -- unknown means miss -----------------------------------------------------------------------


def test_rows_that_cannot_be_encoded_are_computed_in_every_run(tmp_path: Path) -> None:
    ckpt, runs = tmp_path / "run.ckpt", _runs(tmp_path)
    first = [[ray.put(2), runs], [ray.put(4), runs]]
    assert chunk(iw.value_of, first, chunk_size=1, path=ckpt) == [3, 5]
    other = [[ray.put(20), runs], [ray.put(40), runs]]  # same places, other values
    assert chunk(iw.value_of, other, chunk_size=1, path=ckpt) == [21, 41]
    assert chunk(iw.value_of, first, chunk_size=1, path=ckpt) == [3, 5]  # even the same list
    assert iw.executions(runs) == {"2": 2, "4": 2, "20": 1, "40": 1}


def test_a_function_that_cannot_be_identified_reuses_nothing(tmp_path: Path) -> None:
    ckpt, runs = tmp_path / "run.ckpt", _runs(tmp_path)
    rows = _rows(runs, 1, 2)
    assert chunk(partial(iw.add_ref, ray.put(10)), rows, chunk_size=1, path=ckpt) == [11, 12]
    with pytest.warns(CheckpointRestartWarning, match="cannot be identified"):
        assert chunk(partial(iw.add_ref, ray.put(20)), rows, chunk_size=1,
                     path=ckpt) == [21, 22]
    assert iw.executions(runs) == {"1": 2, "2": 2}
    held = identities(ckpt)
    assert [entry.kind for entry in held] == ["unidentifiable"] * 2


# -- rows of the table the digest decides (pass once i26-digest lands) ---------------


def test_a_method_of_another_instance_is_another_function(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    assert chunk(iw.Scaler(2).apply, [[1], [2]], chunk_size=1, path=ckpt) == [2, 4]
    assert chunk(iw.Scaler(3).apply, [[1], [2]], chunk_size=1, path=ckpt) == [3, 6]


def test_a_callable_holding_a_ref_beside_plain_state(tmp_path: Path) -> None:
    ckpt, runs, ref = tmp_path / "run.ckpt", _runs(tmp_path), ray.put(0)
    one, five = iw.Model(1, runs), iw.Model(5, runs)
    one.ref = five.ref = ref  # type: ignore[attr-defined]
    assert chunk(one, [[1], [2]], chunk_size=1, path=ckpt) == [1, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointRestartWarning)
        assert chunk(five, [[1], [2]], chunk_size=1, path=ckpt) == [5, 10]


def _module(tmp_path: Path, name: str, source: str) -> Any:
    """A module of the user's, written to ``tmp_path`` and imported (the actors get it by
    value)."""
    import importlib

    from ray import cloudpickle

    Path(tmp_path, f"{name}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(tmp_path))
    try:
        sys.modules.pop(name, None)
        module = importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))
    cloudpickle.register_pickle_by_value(module)
    return module


def test_a_fixed_helper_and_a_changed_constant_are_named(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    source = """
        K = {k}

        def helper(x):
            return x + {fix}

        def f(x):
            return helper(x) * K
    """
    old = _module(tmp_path, "user_mod_a", source.format(k=10, fix=0))
    assert chunk(old.f, [[1], [2]], chunk_size=1, path=ckpt) == [10, 20]
    fixed = _module(tmp_path, "user_mod_a", source.format(k=10, fix=1))
    with pytest.warns(CheckpointRestartWarning, match="helper user_mod_a.helper changed"):
        assert chunk(fixed.f, [[1], [2]], chunk_size=1, path=ckpt) == [20, 30]
    changed = _module(tmp_path, "user_mod_a", source.format(k=20, fix=1))
    with pytest.warns(CheckpointRestartWarning, match="constant user_mod_a.K changed"):
        assert chunk(changed.f, [[1], [2]], chunk_size=1, path=ckpt) == [40, 60]


# -- files of older formats ------------------------------------------------------------------


@pytest.mark.parametrize("version", [3, 4, 5, 6])
def test_an_older_file_is_upgraded_its_rows_listed_and_none_reused(
        tmp_path: Path, version: int) -> None:
    ckpt, runs = tmp_path / "run.ckpt", _runs(tmp_path)
    rows = _rows(runs, 1, 2, 3)
    chunk(iw.identity, rows, chunk_size=2, path=ckpt)
    iw.as_format(ckpt, version)
    assert Checkpoint.load(ckpt).output == [1, 2, 3]  # read as it is
    assert [(e.kind, e.results) for e in identities(ckpt)] == [("legacy", 3)]
    with pytest.warns(CheckpointRestartWarning, match="older thread-chunks.*never reused"):
        assert chunk(iw.identity, rows, chunk_size=2, path=ckpt) == [1, 2, 3]
    assert iw.executions(runs) == {"1": 2, "2": 2, "3": 2}  # none reused
    held = identities(ckpt)
    assert [(e.kind, e.results, e.latest) for e in held] == [
        ("identified", 3, True), ("legacy", 3, False)]
    with closing(sqlite3.connect(ckpt)) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'format_version'"
                            ).fetchone()[0] == FORMAT_VERSION == 7
    with no_restart():  # and from now on, reused as any
        chunk(iw.identity, rows, chunk_size=2, path=ckpt)
    assert iw.executions(runs) == {"1": 2, "2": 2, "3": 2}


# -- inspect and prune ----------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thread_chunks", *args], cwd=ROOT,
                          capture_output=True, text=True, check=False, timeout=120)


def test_inspect_lists_identities_and_prune_removes_them_and_shrinks_the_file(
        tmp_path: Path) -> None:
    ckpt, runs = tmp_path / "run.ckpt", _runs(tmp_path)
    rows = _rows(runs, *range(20))

    def big(x: int, directory: str) -> bytes:  # version 1
        iw.mark(directory, x)
        return bytes([x % 256]) * 200_000

    version1 = big

    def big(x: int, directory: str) -> bytes:  # type: ignore[no-redef]  # version 2
        iw.mark(directory, x)
        return bytes([(x + 1) % 256]) * 200_000

    chunk(version1, rows, chunk_size=2, path=ckpt)
    with pytest.warns(CheckpointRestartWarning):
        chunk(big, rows, chunk_size=2, path=ckpt)
    _wait_for_close(str(ckpt))
    shown = _cli("inspect", str(ckpt))
    assert shown.returncode == 0, shown.stderr
    assert "identities:   2" in shown.stdout and "<- latest run" in shown.stdout
    assert "since the one before: the body of 'big' changed" in shown.stdout
    listed = json.loads(_cli("inspect", "--json", str(ckpt)).stdout)["identities"]
    assert [(e["function"], e["results"], e["latest"]) for e in listed] == [
        ("big", 20, True), ("big", 20, False)]
    dry = _cli("prune", "--dry-run", str(ckpt))
    assert dry.returncode == 0 and f"would remove #{listed[1]['id']} big" in dry.stdout
    before = os.path.getsize(ckpt)
    assert len(identities(ckpt)) == 2  # the dry run changed nothing
    done = _cli("prune", str(ckpt))
    assert done.returncode == 0, done.stderr
    assert f"removed #{listed[1]['id']} big" in done.stdout
    assert os.path.getsize(ckpt) < before * 0.6  # half the results gone, the file shrank
    assert [(e.id, e.results) for e in identities(ckpt)] == [(listed[0]["id"], 20)]
    with no_restart():  # the latest run's results are all there
        assert chunk(big, rows, chunk_size=2, path=ckpt)[3] == bytes([4]) * 200_000
    with pytest.warns(CheckpointRestartWarning):  # the pruned version computes again
        chunk(version1, rows, chunk_size=2, path=ckpt)
    assert iw.executions(runs) == {str(i): 3 for i in range(20)}
    assert prune(ckpt, keep=2, dry_run=True) == []
    assert [e.function for e in prune(ckpt, keep=1)] == ["big"]
    with pytest.raises(ValueError, match="keep: expected a positive int"):
        prune(ckpt, keep=0)


def _in_process(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT,
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_by_hand_checkpoint_is_adopted_across_processes(tmp_path: Path) -> None:
    """``Checkpoint(...)`` written by one process; another process's run of a function of
    that name reuses its rows (1.0.5), and its own results stay under its identity."""
    ckpt, runs = tmp_path / "hand.ckpt", _runs(tmp_path)
    Checkpoint("identity", _rows(runs, 1, 2), [1, 2], [True, False], 1, 1, path=ckpt)
    script = textwrap.dedent("""
        import sys, ray
        from thread_chunks import chunk
        from tests import identity_workloads as iw
        ray.init(address="local", num_cpus=1, include_dashboard=False)
        rows = [[1, sys.argv[2]], [2, sys.argv[2]]]
        print(chunk(iw.identity, rows, chunk_size=1, path=sys.argv[1]))
    """)
    assert _in_process(script, str(ckpt), runs).strip().endswith("[1, 2]")
    assert iw.executions(runs) == {"2": 1}  # row 1 was adopted
    assert [(e.kind, e.results) for e in identities(ckpt)] == [("identified", 2)]
