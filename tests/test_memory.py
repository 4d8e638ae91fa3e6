"""The memory promise: large arguments sent once, ObjectRef arguments resolved, read-ahead
bounded. Counted (puts, references held, rows pulled), never timed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from tests import workloads as w
from thread_chunks import chunked
from thread_chunks._actor import Item, unpack_batch
from thread_chunks._wire import IDLE_KEEP, Wire, pack_batch

pytestmark = pytest.mark.usefixtures("ray_running")


def _references() -> int:
    """Objects this driver owns or references in Ray (puts included)."""
    worker: Any = ray._private.worker.global_worker  # type: ignore[attr-defined]
    return len(worker.core_worker.get_all_reference_counts())


def _settled(baseline: int, timeout: float = 60) -> int:
    """The driver's reference count once it is back to ``baseline`` (or the deadline)."""
    deadline = time.time() + timeout
    while (now := _references()) > baseline and time.time() < deadline:
        time.sleep(0.1)
    return now


def _count_puts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ids of the numpy arrays put into Ray from now on."""
    puts: list[int] = []
    put = ray.put

    def counting(value: Any, **kwargs: Any) -> Any:
        if isinstance(value, np.ndarray):
            puts.append(id(value))
        return put(value, **kwargs)

    monkeypatch.setattr(ray, "put", counting)  # the very module _wire calls
    return puts


def test_a_large_argument_in_every_row_is_put_once_per_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    big = np.ones(4 * 2**20 // 8)  # 4 MiB, in every row
    other = np.full(2**20, 2.0)  # 8 MiB, in some rows, by keyword
    puts = _count_puts(monkeypatch)
    f = chunked(chunk_size=2)(w.checksum)
    rows: list[Any] = [[big, i] for i in range(20)] + [{"block": other, "i": i} for i in range(4)]
    out = f.map(rows)
    assert [s for s, _, _ in out] == [big.sum() + i for i in range(20)] + [
        other.sum() + i for i in range(4)]
    assert sorted(puts) == sorted([id(big), id(other)])  # once each, not once per call
    assert not any(writable for _, writable, _ in out)  # arrives read-only, as in Ray
    big[:] = 3.0  # the user changes the array: the next run sees it (no stale copy)
    assert f.map([[big, 0]])[0][0] == 3.0 * big.size
    assert len(puts) == 3
    small = np.ones(10)
    assert f.map([[small, 1]])[0][0] == 11.0 and len(puts) == 3  # small ones travel inline


def test_a_shared_argument_is_put_once_even_with_one_call_in_flight_at_a_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One actor, one row per call: no call holds ``big`` between two calls (as when only one
    actor has started on a loaded machine). Its put must survive that gap; a stream of new
    large objects must not pile up meanwhile."""
    big = np.ones(2**20 // 4)  # 2 MiB
    puts = _count_puts(monkeypatch)
    f = chunked(chunk_size=1, batch_size=1)(w.checksum)
    assert [s for s, _, _ in f.map([[big, i] for i in range(8)])] == [
        big.sum() + i for i in range(8)]
    assert puts == [id(big)]
    fresh = [np.full(2**18, float(i)) for i in range(6)]  # 2 MiB each, each in one row
    out = f.map([[block, i] for i, block in enumerate(fresh)] + [[big, 0]])
    assert [s for s, _, _ in out] == [block.sum() + i for i, block in enumerate(fresh)] + [
        big.sum()]
    assert len(puts) == 1 + 6 + 1  # each once; big again (a new run)
    shared = [np.full(2**18, float(k)) for k in range(3)]  # more shared ones than IDLE_KEEP
    puts.clear()
    g = chunked(chunk_size=1, batch_size=1)(w.total)
    out2 = g.map([[block, *shared] for block in fresh])
    assert out2 == [block.sum() + sum(s.sum() for s in shared) for block in fresh]
    assert sorted(puts) == sorted([id(b) for b in fresh] + [id(s) for s in shared])
    f.close()


def test_what_a_run_puts_is_released_when_it_ends() -> None:
    f = chunked(chunk_size=2)(w.checksum)
    f.map([[np.ones(10), 0]])  # actors started, function put
    baseline = _settled(_references(), timeout=5)
    for run in range(10):
        block = np.full(2**20, float(run))  # 8 MiB, a new array every run
        assert f.map([[block, i] for i in range(6)])[5][0] == run * block.size + 5
    assert _settled(baseline) <= baseline  # ten runs leave nothing behind
    payload = bytes(3 * 2**20)  # bytes are shared too
    assert f.replace(w.pick).map([[payload, i] for i in range(4)]) == [0, 0, 0, 0]
    assert _settled(baseline) <= baseline
    f.close()


def test_object_refs_that_are_whole_arguments_arrive_as_their_values() -> None:
    values = ray.put(list(range(10, 20)))
    f = chunked(chunk_size=2)(w.pick)
    assert f.map([[values, 1], {"values": values, "i": 2}, [[5, 6, 7], 0]]) == [11, 12, 5]
    # nested inside another value a ref stays a ref, as with Ray's own task arguments
    g = f.replace(w.kind)
    assert g.map([[values], [[values]], {"value": values}]) == [
        "list[int]", "list[ObjectRef]", "list[int]"]
    # a ref whose task failed fails only its own row
    @ray.remote
    def broken() -> int:
        raise KeyError("lost")

    out = f.map([[values, 0], [broken.remote(), 0], [values, 3]], on_error="return")
    assert out[0] == 10 and out[2] == 13
    assert isinstance(out[1], KeyError) or "lost" in str(out[1])
    f.close()


def test_a_batch_travels_as_one_payload_with_its_references_beside_it() -> None:
    """Ray walks a list of rows object by object; a batch goes as one ``bytes`` object,
    the references in it beside it (Ray's own, so it counts them borrowed), each once."""
    ref = ray.put(list(range(3)))
    batch: list[Item] = [(0, (ref, [ref], lambda: 1), {}), (1, (2.5,), {"k": ref})]
    packed = pack_batch(batch)
    assert packed is not None
    payload, refs = packed
    assert type(payload) is bytes and refs == [ref]
    back = unpack_batch(payload, refs)
    assert back[0][0] == 0 and back[0][1][:2] == (ref, [ref]) and back[0][1][2]() == 1
    assert back[1] == batch[1]
    assert pack_batch([(0, (threading.Lock(),), {})]) is None  # Ray's path says why


def test_types_given_to_ray_register_serializer_travel_its_way_in_batches() -> None:
    """A batch is pickled by thread-chunks, not by Ray; a type whose owner gave Ray a
    serializer of its own still travels by it, as it would through Ray."""
    ray.util.register_serializer(w.Tagged, serializer=lambda t: t.via,
                                 deserializer=w.registered_tagged)
    try:
        f = chunked(chunk_size=2, progress_bar=False)(w.via)
        assert f.map([[w.Tagged()] for _ in range(6)]) == ["registered"] * 6
        f.close()
    finally:
        ray.util.deregister_serializer(w.Tagged)
    assert f.map([[w.Tagged()]]) == ["pickle"]  # deregistered: pickled its own way again
    f.close()


def test_puts_left_idle_are_dropped_by_batches_that_share_nothing() -> None:
    """A run switching from rows with large arrays to rows of plain numbers keeps no more
    than IDLE_KEEP idle puts in the object store (the scalar batches skip the scan, not the
    trim)."""
    wire = Wire()
    arrays = [np.full(1 << 18, i, dtype=np.float64) for i in range(5)]  # 2 MiB each
    batches: list[list[Item]] = [[(i, (a, i), {})] for i, a in enumerate(arrays)]
    sent = [wire.send(batch) for batch in batches]
    assert wire.held == 5 and all(isinstance(b[0][1][0], ray.ObjectRef) for b in sent)
    for batch in batches:
        wire.done(batch)  # every call ended: all five idle
    assert wire.send([(5, (1, 2.5, "x"), {})]) == [(5, (1, 2.5, "x"), {})]
    assert wire.held == IDLE_KEEP
    wire.close()


def _tracked(n: int, counts: dict[str, int], make: Any) -> Iterator[Any]:
    """Rows from a generator that records the most rows pulled but not yet received."""
    for i in range(n):
        counts["pulled"] += 1
        counts["ahead"] = max(counts["ahead"], counts["pulled"] - counts["received"])
        yield make(i)


@pytest.mark.parametrize("ordered", [True, False])
def test_read_ahead_is_bounded_while_the_head_row_is_slow(tmp_path: Path, ordered: bool
                                                          ) -> None:
    gate, marks = tmp_path / "gate", tmp_path / "marks"
    marks.mkdir()
    bound = 40
    f = chunked(chunk_size=2, batch_size=1, max_buffered=bound)(w.head_waits)
    counts = {"pulled": 0, "received": 0, "ahead": 0}
    rows = _tracked(2000, counts, lambda i: [i, str(gate), str(marks)])
    results: list[int] = []
    it = f.imap(rows, ordered=ordered)
    # row 0 waits on the gate; the other actor races through the rest until the bound stops
    # the reading: then bound - 1 rows were read besides row 0, all run but the one that may
    # be queued behind row 0, and the gate opens

    def open_gate() -> None:
        deadline = time.time() + 120
        while len(list(marks.iterdir())) < bound - 2 and time.time() < deadline:
            if not ordered and results:
                break  # unordered: results flow without the head row
            time.sleep(0.02)
        gate.touch()

    opener = threading.Thread(target=open_gate)
    opener.start()
    for value in it:
        counts["received"] += 1
        results.append(value)
    opener.join()
    assert sorted(results) == list(range(2000))
    if ordered:
        assert results == list(range(2000))
    assert counts["ahead"] <= bound, counts


def test_read_ahead_is_bounded_when_one_actor_starts_late(tmp_path: Path) -> None:
    class Late(w.FirstFastOthersSlow):
        marker = str(tmp_path)

    bound = 16
    f = chunked(chunk_size=2, actor_cls=Late, max_buffered=bound)(w.square)
    counts = {"pulled": 0, "received": 0, "ahead": 0}
    out = []
    for value in f.imap(_tracked(20_000, counts, lambda i: [i])):
        counts["received"] += 1
        out.append(value)
    assert out == [i * i for i in range(20_000)]
    assert counts["ahead"] <= bound, counts
    f.close()
