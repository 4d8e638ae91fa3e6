"""Bad input at the boundary: every public argument is checked before anything runs, with an
error naming it and what was expected; a row's BaseException fails that row alone; warnings
point at the user's line."""

from __future__ import annotations

import asyncio
import importlib
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray

from tests import bad_input_workloads as b
from tests import workloads as w
from thread_chunks import (
    Checkpoint,
    CheckpointError,
    CheckpointFailedWarning,
    CheckpointRestartWarning,
    Chunker,
    ConcurrencyReducedWarning,
    LabelledActor,
    WorkerDiedError,
    _checkpoint,
    chunk,
    chunked,
)

pytestmark = pytest.mark.usefixtures("ray_running")

ROWS = [[i] for i in range(4)]


# -- time limits ---------------------------------------------------------------------------


def test_an_infinite_timeout_is_no_limit() -> None:
    for option in ("timeout", "placement_timeout"):
        unlimited: dict[str, Any] = {option: float("inf")}
        f = chunked(chunk_size=1, **unlimited)(w.square)
        assert f.map(ROWS) == [0, 1, 4, 9]
        assert getattr(f.options.policy(), option) is None  # no limit, as None
        f.close()


@pytest.mark.parametrize("option", ["timeout", "placement_timeout"])
@pytest.mark.parametrize("value", [1e10, float("nan"), -float("inf"), 0, True, "1"])
def test_a_time_limit_no_wait_can_take_is_refused_naming_it(option: str, value: object
                                                            ) -> None:
    expected = "at most 9223372036 seconds" if value == 1e10 else "a number of seconds > 0"
    bad: dict[str, Any] = {option: value}
    for face in (lambda: chunked(**bad)(w.square),
                 lambda: chunk(w.square, ROWS, **bad),
                 lambda: Chunker(w.square, chunk_size=1, **bad),
                 lambda: chunked(w.square).with_options(**bad)):
        with pytest.raises(ValueError, match=f"^{option}: expected {expected}"):
            face()


# -- flags are bools -----------------------------------------------------------------------


def test_per_call_flags_must_be_bools_on_every_face() -> None:
    f = chunked(chunk_size=1)(w.square)
    chunker = Chunker(w.square, chunk_size=1)
    calls: list[tuple[str, Callable[[], object]]] = [
        ("ordered", lambda: f.imap(ROWS, ordered="no")),  # type: ignore[call-overload]
        ("ordered", lambda: f.aimap(ROWS, ordered=0)),  # type: ignore[call-overload]
        ("ordered", lambda: chunker.imap(ROWS, ordered="no")),  # type: ignore[arg-type]
        ("ordered", lambda: chunker.aimap(ROWS, ordered=None)),  # type: ignore[arg-type]
        ("progress_bar", lambda: f.map(ROWS, progress_bar="yes")),  # type: ignore[call-overload]
        ("progress_bar", lambda: f.imap(ROWS, progress_bar=1)),  # type: ignore[call-overload]
        ("progress_bar", lambda: f.aimap(ROWS, progress_bar="no")),  # type: ignore[call-overload]
        ("progress_bar", lambda: asyncio.run(
            f.amap(ROWS, progress_bar="yes"))),  # type: ignore[call-overload]
        ("progress_bar", lambda: chunker(ROWS, progress_bar="yes")),  # type: ignore[arg-type]
        ("progress_bar", lambda: chunk(w.square, ROWS, progress_bar="yes")),  # type: ignore[arg-type]
        ("progress_bar", lambda: Chunker(w.square, progress_bar="yes")),  # type: ignore[arg-type]
        ("progress_bar", lambda: chunked(progress_bar="yes")),  # type: ignore[call-overload]
        ("persistent", lambda: Chunker(w.square, persistent="yes")),  # type: ignore[arg-type]
    ]
    for name, call in calls:
        with pytest.raises(TypeError, match=f"^{name}: expected a bool"):
            call()
    assert chunker.stats.calls == 0 and f.stats.calls == 0  # nothing ran
    chunker.close()
    f.close()


# -- actor options -------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "error", "says"), [
    ({"num_cpus": "one"}, TypeError, "num_cpus: expected a number >= 0, got 'one'"),
    ({"num_gpus": True}, TypeError, "num_gpus: expected a number >= 0, got True"),
    ({"resources": "x"}, TypeError, "'resources'"),
    ({"resources": {"slot": -1}}, ValueError, r"resources\['slot'\]: expected a finite number"),
    ({"resources": {"slot": "1"}}, TypeError, r"resources\['slot'\]: expected a number"),
    ({"resources": {1: 1}}, TypeError, "resources: expected resource names"),
    ({"memory": -1}, ValueError, "memory: expected a finite number >= 0, got -1"),
    ({"memory": float("inf")}, ValueError, "memory: expected a finite number >= 0, got inf"),
    ({"num_cpus": float("nan")}, ValueError, "num_cpus: expected a finite number >= 0"),
    ({"num_gpus": -0.5}, ValueError, "num_gpus: expected a finite number >= 0"),
    ({"max_restarts": "x"}, TypeError, "'max_restarts'"),  # Ray's own check
    ({"no_such_option": 1}, ValueError, "no_such_option"),
    ({1: 2}, TypeError, "option names"),
    ([1, 2], TypeError, r"expected a mapping .* got \[1, 2\]"),
    ("num_cpus", TypeError, "expected a mapping"),
])
def test_bad_actor_options_fail_at_decoration_naming_the_option_and_key(
        options: Any, error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=f"^actor_options: .*{says}"):
        chunked(actor_options=options)
    with pytest.raises(error, match=f"^actor_options: .*{says}"):
        chunk(w.square, [], actor_options=options)  # even for no rows, before Ray


def test_actor_options_ray_accepts_still_pass() -> None:
    f = chunked(chunk_size=1, actor_options={"num_cpus": 0.5, "memory": 0,
                                             "resources": {}, "max_restarts": 0})(w.square)
    assert f.map(ROWS) == [0, 1, 4, 9]
    f.close()


def test_memory_per_call_no_node_holds_names_memory_per_call() -> None:
    f = chunked(chunk_size=1, memory_per_call=1 << 50)(w.square)
    with pytest.raises(ValueError, match="^memory_per_call: no node .* change memory_per_call"):
        f.map(ROWS)
    g = chunked(chunk_size=1, memory_per_call=1 << 50, actor_options={"num_cpus": 1})(w.square)
    with pytest.raises(ValueError, match="^actor_options and memory_per_call: no node"):
        g.map(ROWS)
    h = chunked(chunk_size=1, actor_options={"memory": 1 << 50})(w.square)
    with pytest.raises(ValueError, match="^actor_options: no node"):
        h.map(ROWS)


# -- actors, path, chunk_size ----------------------------------------------------------------


def test_actors_must_be_actor_handles_naming_the_index() -> None:
    with pytest.raises(TypeError, match=r"^actors\[0\]: expected a Ray actor handle.* got 1"):
        chunk(w.square, ROWS, actors=[1, 2])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"^actors\[0\]: expected a Ray actor handle.*'a'"):
        Chunker(actors=["a"])  # type: ignore[list-item]
    good = ray.remote(LabelledActor).remote(w.square)
    try:
        with pytest.raises(TypeError, match=r"^actors\[1\]: expected a Ray actor handle"):
            Chunker(actors=[good, None])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="^actors: expected a sequence"):
            chunk(None, ROWS, actors=good)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="^actors: expected at least one"):
            Chunker(actors=[])
        assert chunk(None, ROWS, actors=[good]) == [0, 1, 4, 9]  # a good one still runs
    finally:
        ray.kill(good)


def test_path_must_be_a_str_or_pathlike(tmp_path: Path) -> None:
    f = chunked(chunk_size=1)(w.square)
    chunker = Chunker(w.square, chunk_size=1)
    for call in (lambda: chunk(w.square, ROWS, path=3),  # type: ignore[arg-type]
                 lambda: Chunker(w.square, path=3),  # type: ignore[arg-type]
                 lambda: chunker(ROWS, path=3),  # type: ignore[arg-type]
                 lambda: f.map(ROWS, path=3),  # type: ignore[call-overload]
                 lambda: f.imap(ROWS, path=b"x"),  # type: ignore[call-overload]
                 lambda: f.aimap(ROWS, path=[str(tmp_path)])):  # type: ignore[call-overload]
        with pytest.raises(TypeError, match="^path: expected a str or os.PathLike"):
            call()
    with pytest.raises(TypeError, match="^path: expected a str or os.PathLike"):
        Checkpoint.load(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^func: expected a callable"):
        chunker.aimap(ROWS, func=3)  # type: ignore[arg-type]
    assert f.map(ROWS, path=tmp_path / "ok.ckpt") == [0, 1, 4, 9]
    assert chunker.stats.calls == 0
    chunker.close()
    f.close()


def test_chunk_size_error_mentions_auto() -> None:
    bad: Any
    for bad in (0, -1, 1.5, "many"):
        with pytest.raises(ValueError, match="^chunk_size: expected a positive int or 'auto'"):
            chunked(chunk_size=bad)


# -- a checkpoint whose result cannot be unpickled -----------------------------------------


def test_loading_a_result_whose_module_is_gone_names_the_row(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    (tmp_path / "vanishing_results.py").write_text("class Result:\n    value = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("vanishing_results")
    ckpt = tmp_path / "run.ckpt"
    Checkpoint("f", [[0], [1], [2]], [0, module.Result(), None], [True, True, False], 2, 2,
               path=ckpt)
    args = tmp_path / "args.ckpt"
    Checkpoint("f", [[0], [module.Result()]], [0, 1], [True, True], 2, 2, path=args)
    monkeypatch.delitem(sys.modules, "vanishing_results")
    (tmp_path / "vanishing_results.py").unlink()
    with pytest.raises(CheckpointError, match=r"the result of row 1 cannot be unpickled here "
                                              r"\(ModuleNotFoundError: .*vanishing_results"):
        Checkpoint.load(ckpt)
    with pytest.raises(CheckpointError, match=r"the parameters cannot be unpickled here "
                                              r"\(ModuleNotFoundError: .*vanishing_results"):
        Checkpoint.load(args)


# -- a row's BaseException fails that row alone ----------------------------------------------


@pytest.mark.parametrize("kind", ["cancelled", "interrupt", "user", "exit"])
def test_a_rows_base_exception_is_returned_and_its_batch_kept(kind: str, tmp_path: Path
                                                              ) -> None:
    ckpt = tmp_path / "run.ckpt"
    rows = [[i, kind] for i in range(8)]
    out = chunk(b.stop_on, rows, chunk_size=2, batch_size=4, path=ckpt, on_error="return")
    expected = {"cancelled": asyncio.CancelledError, "interrupt": KeyboardInterrupt,
                "user": b.UserStop, "exit": SystemExit}[kind]
    assert type(out[3]) is expected
    assert "thread-chunks: raised by row 3" in "\n".join(getattr(out[3], "__notes__", []))
    assert out[:3] + out[4:] == [0, 10, 20, 40, 50, 60, 70]
    view = Checkpoint.load(ckpt)  # every row's outcome recorded
    assert view.completed == [True] * 3 + [False] + [True] * 4
    assert type(view.failed[3]) is expected
    f = chunked(chunk_size=1, batch_size=8)(b.stop_on)
    assert [type(v) for v in f.map(rows, on_error="return")] == [int] * 3 + [expected] + [int] * 4


def test_a_rows_base_exception_is_raised_as_the_users_class_naming_the_row(tmp_path: Path
                                                                           ) -> None:
    ckpt = tmp_path / "run.ckpt"
    rows = [[i, "user"] for i in range(8)]
    with pytest.raises(b.UserStop, match="stopped at 3") as caught:
        chunk(b.stop_on, rows, chunk_size=1, batch_size=8, path=ckpt)
    assert "thread-chunks: raised by row 3: stop_on(3, 'user')" in "\n".join(
        getattr(caught.value, "__notes__", []))
    view = Checkpoint.load(ckpt)  # the rest of its batch still ran and was recorded
    assert view.completed == [True] * 3 + [False] + [True] * 4
    assert isinstance(view.failed[3], b.UserStop)
    # a rerun computes only that row again (and it fails again)
    with pytest.raises(b.UserStop):
        chunk(b.stop_on, rows, chunk_size=1, batch_size=8, path=ckpt)
    assert Checkpoint.load(ckpt).reused == 7


def test_rays_own_exit_actor_still_ends_the_actor() -> None:
    # Ray's exit_actor() raises a SystemExit it marks: that one is not a row's failure
    out = chunk(b.exit_actor_on, [[0], [1], [2]], chunk_size=1, batch_size=1,
                max_worker_deaths=1, on_error="return")
    assert out[0] == 0 and out[2] == 2
    assert isinstance(out[1], WorkerDiedError)


# -- warnings point at the user's line -------------------------------------------------------


def test_concurrency_reduced_warning_points_at_the_users_line() -> None:
    # each actor holds a whole CPU and the suite's Ray has 2: the pool shrinks, with a warning
    def fresh() -> Any:
        return chunked(chunk_size=3, actor_options={"num_cpus": 1})(w.square)

    with fresh() as f, pytest.warns(ConcurrencyReducedWarning) as records:
        assert f.map(ROWS) == [0, 1, 4, 9]
    assert [r.filename for r in records] == [__file__]
    with fresh() as f, pytest.warns(ConcurrencyReducedWarning) as records:
        assert list(f.imap(ROWS)) == [0, 1, 4, 9]
    assert [r.filename for r in records] == [__file__]

    async def sweep() -> list[int]:
        with fresh() as f:
            result: list[int] = await f.amap(ROWS)
            return result

    with pytest.warns(ConcurrencyReducedWarning) as records:
        assert asyncio.run(sweep()) == [0, 1, 4, 9]
    assert [r.filename for r in records] == [__file__]


def test_checkpoint_restart_warning_points_at_the_users_line(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    assert chunk(w.square, ROWS, chunk_size=1, path=ckpt) == [0, 1, 4, 9]
    with pytest.warns(CheckpointRestartWarning) as records:
        assert chunk(w.add, ROWS, chunk_size=1, path=ckpt) == [0, 1, 2, 3]
    assert [r.filename for r in records] == [__file__]
    # each run of a function the file holds no results of (switching back would reuse them)
    f = chunked(chunk_size=1)(w.negate)
    with pytest.warns(CheckpointRestartWarning) as records:
        assert list(f.imap(ROWS, path=ckpt)) == [0, -1, -2, -3]
    assert [r.filename for r in records] == [__file__]
    g = chunked(chunk_size=1)(w.cube)

    async def sweep() -> list[int]:  # the checkpoint is opened in a worker thread
        return await g.amap(ROWS, path=ckpt)

    with pytest.warns(CheckpointRestartWarning) as records:
        assert asyncio.run(sweep()) == [0, 1, 8, 27]
    assert [r.filename for r in records] == [__file__]
    f.close()
    g.close()


@pytest.mark.skipif(not hasattr(sqlite3.Connection, "setlimit"), reason="Python 3.11+")
def test_checkpoint_failed_warnings_point_at_the_users_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite's 1 GB, scaled
    monkeypatch.setattr("thread_chunks._checkpoint.connect.MAX_RECORD_BYTES", 1 << 20)
    with chunked(chunk_size=2)(w.sized) as f, \
            pytest.warns(CheckpointFailedWarning, match="row 2's result") as records:
        f.map([[i, 2, 2 << 20] for i in range(4)], path=tmp_path / "large.ckpt")
    assert [r.filename for r in records] == [__file__]
    monkeypatch.setattr("thread_chunks._checkpoint.connect.BUSY_TIMEOUT_MS", 50)
    ckpt = tmp_path / "locked.ckpt"
    with pytest.warns(CheckpointFailedWarning, match="no longer saved") as records:
        chunk(w.lock_checkpoint, [[i, str(ckpt), 5] for i in range(6)], chunk_size=2, path=ckpt,
              batch_size=1)
    assert [r.filename for r in records] == [__file__]


def test_every_warning_of_the_library_goes_through_warn_user() -> None:
    # a plain warnings.warn with a fixed stacklevel points into the library from some callers
    package = Path(_checkpoint.__file__).parent.parent  # thread_chunks, with its subpackages
    plain = [f"{path.relative_to(package)}:{number}" for path in sorted(package.rglob("*.py"))
             if path.name != "_errors.py"
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if "warnings.warn(" in line]
    assert plain == []
