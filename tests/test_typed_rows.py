"""Typed rows: ``f.row(...)`` is checked by type checkers (tests/typing) and bound to the
signature when made; it runs and is checkpointed exactly as the equivalent plain row."""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any

import pytest

from tests import workloads as w
from thread_chunks import Checkpoint, Chunker, chunk, chunked
from thread_chunks._rows import TypedRow

pytestmark = pytest.mark.usefixtures("ray_running")


def test_typed_rows_run_as_the_equivalent_plain_rows() -> None:
    f = chunked(chunk_size=2)(w.scaled)
    typed = [f.row(1.0), f.row(2.0, 3), f.row(x=4.0, n=2), f.row(1.0, offset=0.5),
             f.row(2.0, n=2, offset=1.0)]
    assert f.map(typed) == [1.0, 6.0, 8.0, 1.5, 5.0]
    plain: list[Any] = [[1.0], [2.0, 3], {"x": 4.0, "n": 2}]
    assert f.map([*plain, *typed[3:]]) == f.map(typed)  # mixed in one list
    assert list(f.imap(iter(typed), ordered=False)) != []  # any iterable, lazily


@pytest.mark.parametrize(("args", "kwargs", "problem"), [
    ((), {}, "missing a required argument: 'x'"),
    ((1.0, 2, 3.0), {}, "too many positional arguments"),
    ((1.0,), {"z": 1}, "got an unexpected keyword argument 'z'"),
    ((1.0,), {"x": 2.0}, "multiple values for argument 'x'"),
    ((1.0, 2, 0.5), {}, "too many positional arguments"),  # offset is keyword-only
])
def test_a_wrong_call_is_a_type_error_where_the_row_is_made(
        args: tuple[object, ...], kwargs: dict[str, object], problem: str) -> None:
    f = chunked(chunk_size=2)(w.scaled)
    with pytest.raises(TypeError, match=rf"^scaled\.row\(\.\.\.\): {problem}"):
        f.row(*args, **kwargs)  # type: ignore[arg-type]
    assert f.chunker._pool.size == 2 and f.chunker._pool.actors_made == 0  # nothing was started


def test_plain_signatures_take_the_fast_check_and_still_refuse_bad_arity() -> None:
    f = chunked(chunk_size=2)(w.add)  # add(x, y=0): positional rows need only a length check
    assert f.map([f.row(1), f.row(1, 2), f.row(1, y=5)]) == [1, 3, 6]
    with pytest.raises(TypeError, match="missing a required argument"):
        f.row()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="too many positional arguments"):
        f.row(1, 2, 3)  # type: ignore[call-arg]


def test_a_typed_row_pickles_compares_and_shows_its_arguments() -> None:
    f = chunked(chunk_size=2)(w.scaled)
    row = f.row(2.0, offset=1.0)
    assert pickle.loads(pickle.dumps(row)) == row
    assert row != f.row(2.0) and row != [2.0]
    assert repr(row) == "row(2.0, offset=1.0)"
    assert isinstance(row, TypedRow)


def test_typed_rows_and_plain_rows_share_checkpoint_identity(tmp_path: Path) -> None:
    f = chunked(chunk_size=2)(w.count_and_square)
    marks = tmp_path / "marks"
    marks.mkdir()
    path = tmp_path / "run.ckpt"
    assert f.map([f.row(i, str(marks)) for i in range(4)], path=path) == [0, 1, 4, 9]
    assert Checkpoint.load(path).parameters == [f.row(i, str(marks)) for i in range(4)]
    plain = [[i, str(marks)] for i in range(2)] + [
        {"x": i, "directory": str(marks)} for i in range(2, 6)]
    assert f.map(plain, path=path) == [i * i for i in range(6)]
    assert f.map([f.row(x=i, directory=str(marks)) for i in range(7)], path=path) == [
        i * i for i in range(7)]
    assert w.executions(marks) == dict.fromkeys(range(7), 1)  # every row ran once


def test_the_classic_api_takes_typed_rows() -> None:
    f = chunked(chunk_size=2)(w.add)
    rows = [f.row(1, 2), f.row(3)]
    assert chunk(w.add, rows, chunk_size=2) == [3, 3]
    with Chunker(w.add, chunk_size=2) as chunker:
        assert chunker(rows) == [3, 3]


def test_a_row_that_is_none_of_the_kinds_names_the_typed_kind() -> None:
    f = chunked(chunk_size=2)(w.add)
    with pytest.raises(TypeError, match=r"parameters row 1: expected .* made by f\.row"):
        f.map([[1], 5])  # type: ignore[list-item]


class Scale:
    """A callable instance (no __qualname__ of its own)."""

    def __call__(self, x: float, n: int = 1) -> float:
        return x * n


def uses_self(self: int, other: int) -> int:
    return self - other


def test_rows_of_callable_instances_partials_and_a_parameter_named_self() -> None:
    scale = chunked(chunk_size=2)(Scale())
    assert repr(scale) == "<Chunked Scale chunk_size=2>"
    assert pickle.loads(pickle.dumps(scale))(2.0, 2) == 4.0  # a fresh object, same callable
    assert scale.map([scale.row(2.0, 3), scale.row(x=1.0)]) == [6.0, 1.0]
    with pytest.raises(TypeError, match=r"^Scale\.row\(\.\.\.\): too many positional"):
        scale.row(1.0, 2, 3)  # type: ignore[call-arg]
    add_ten = chunked(chunk_size=2)(functools.partial(w.add, y=10))
    assert add_ten.map([add_ten.row(1)]) == [11]
    named = chunked(chunk_size=2)(uses_self)
    assert named.map([named.row(self=5, other=2), {"self": 4, "other": 4}]) == [3, 0]
    assert named(self=5, other=1) == 4
