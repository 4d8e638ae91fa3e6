"""What a simulated world is made of, drawn from a seed: nodes, runs and their rows."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

GIB = 1 << 30
MIB = 1 << 20


@dataclass
class NodeSpec:
    """A node of the fake cluster."""

    name: str
    total: int
    """Its memory (bytes)."""
    threshold: float
    """Ray's memory monitor kills a worker when the node uses more than this fraction."""
    outside: int
    """Bytes in use outside our actors and calls."""
    worker: int
    """An idle actor's own footprint (bytes)."""
    capacity: int
    """Actors it can hold."""
    lost_at: float | None = None
    """When it goes away with every actor on it (None: never)."""


@dataclass
class RowSpec:
    """One row: what its call does each time it runs."""

    duration: float
    memory: int
    """Bytes its call uses above the worker's footprint while it runs."""
    size: int = 16
    """Bytes of its pickled result."""
    raises: int = 0
    """Its first ``raises`` attempts raise ValueError."""
    crash: float = 0.0
    """Chance that an attempt kills its worker (a segfault)."""


@dataclass
class RunSpec:
    """One sweep opened on the pool."""

    rid: int
    rows: list[RowSpec]
    ordered: bool = False
    timeout: float | None = None
    retries: int = 0
    max_buffered: int | None = None
    max_buffered_bytes: int | None = 256 * MIB
    batch_size: int | None = None
    open_at: float = 0.0
    stop_after: int | None = None
    """The driver breaks off after handing out this many outcomes."""
    cancel_at: float | None = None
    """The driver closes the run at this time (a cancel)."""
    source_fails_at: int | None = None
    """The input raises when this row is read."""
    placement_timeout: float | None = 300.0


@dataclass
class Scenario:
    """Everything a world is made of."""

    seed: int
    size: int
    nodes: list[NodeSpec]
    runs: list[RunSpec]
    memory_per_call: int | None = None
    start_fail: float = 0.0
    """Chance that a new actor dies before starting."""
    never_place: float = 0.0
    """Chance that a new actor is never placed (it waits for capacity that never comes)."""
    call_fails: float = 0.0
    """Chance that a call raises on the driver's side (fails its run)."""
    owned: bool = True
    """The pool's actors are ours (False: handed in by the user, never killed nor replaced)."""
    reload: bool = False
    """A run that opens while none is open gets actors holding another function (the core
    hears Reloaded first; what was learned of memory is void)."""
    slow_place: float = 0.05
    """Chance that an actor takes 20 s more to be placed."""
    stale_reports: bool = True
    """Calls of a killed actor are still reported as died (the core must ignore them)."""
    notes: list[str] = field(default_factory=list)


def draw(seed: int) -> Scenario:
    """A small random world: a few nodes, a pool of 1 to 6 slots (8 to 24 in one world of
    12), 1 to 4 runs."""
    rng = random.Random(seed)
    size = rng.randint(1, 6)
    nodes: list[NodeSpec] = []
    for i in range(rng.randint(1, 3)):
        total = rng.choice((8, 16)) * GIB
        nodes.append(NodeSpec(
            name=f"node{i}", total=total, threshold=rng.choice((0.95, 0.9, 0.8)),
            outside=rng.randint(1, 3) * GIB, worker=rng.choice((80, 120, 200)) * MIB,
            capacity=rng.randint(1, 4),
            lost_at=rng.uniform(1, 60) if i and rng.random() < 0.2 else None))
    heavy = rng.random() < 0.4  # rows big enough for the node budget to matter
    runs: list[RunSpec] = []
    for rid in range(rng.randint(1, 4)):
        n = rng.randint(0, 40)
        rows: list[RowSpec] = []
        base = rng.uniform(0.01, 2.0)
        crashy = rng.random() < 0.3
        for _ in range(n):
            slow = rng.random() < 0.05
            memory = int(rng.uniform(0.3, 2.5) * GIB) if heavy else rng.randint(1, 64) * MIB
            if heavy and rng.random() < 0.05:
                memory = int(rng.uniform(4, 9) * GIB)
            rows.append(RowSpec(
                duration=base * rng.uniform(0.5, 1.5) * (20 if slow else 1),
                memory=memory, size=rng.choice((16, 200, 4000, 40000)),
                raises=rng.choice((0, 0, 0, 0, 1, 9)) if rng.random() < 0.2 else 0,
                crash=(rng.choice((0.3, 1.0)) if crashy and rng.random() < 0.1 else 0.0)))
        timeout = base * rng.uniform(3, 6) if rng.random() < 0.3 else None
        runs.append(RunSpec(
            rid=rid, rows=rows, ordered=rng.random() < 0.5, timeout=timeout,
            retries=rng.choice((0, 0, 1, 3)),
            max_buffered=rng.choice((None, None, 1, 3, 10)),
            max_buffered_bytes=rng.choice((256 * MIB, 256 * MIB, 50000)),
            batch_size=rng.choice((None, None, 1, 3)),
            open_at=0.0 if rid == 0 else rng.uniform(0, 30),
            stop_after=rng.randint(0, n) if n and rng.random() < 0.15 else None,
            cancel_at=rng.uniform(1, 60) if rng.random() < 0.1 else None,
            source_fails_at=rng.randint(0, n) if n and rng.random() < 0.05 else None,
            placement_timeout=rng.choice((300.0, 300.0, None))))
    scenario = Scenario(
        seed=seed, size=size, nodes=nodes, runs=runs,
        memory_per_call=rng.choice((None, None, None, GIB)),
        start_fail=rng.choice((0.0, 0.0, 0.05)), never_place=rng.choice((0.0, 0.0, 0.1)),
        call_fails=rng.choice((0.0, 0.0, 0.0, 0.01)), owned=rng.random() < 0.9,
        reload=rng.random() < 0.2)
    if rng.random() < 0.08:  # a larger pool on nodes holding more actors
        scenario.size = rng.randint(8, 24)
        for node in nodes:
            node.capacity = rng.randint(4, 12)
    return scenario


def steady(actors: int, rows: int) -> Scenario:
    """The same world at any size, for the cost per event: warm actors on nodes of 100, one
    run of one-row calls of about a second each, steady replies, a ``timeout=`` on the run
    (so the deadline path is taken at every step; it never expires), memory known."""
    per_node = 100
    nodes = [NodeSpec(name=f"node{i}", total=4096 * GIB, threshold=0.95, outside=GIB,
                      worker=100 * MIB, capacity=per_node)
             for i in range(-(-actors // per_node))]
    rng = random.Random(actors)
    run = RunSpec(rid=0, rows=[RowSpec(duration=rng.uniform(0.5, 1.5), memory=MIB)
                               for _ in range(rows)],
                  ordered=False, timeout=3600.0, batch_size=1, placement_timeout=None)
    return Scenario(seed=actors, size=actors, nodes=nodes, runs=[run], memory_per_call=MIB,
                    slow_place=0.0, stale_reports=False)
