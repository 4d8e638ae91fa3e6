"""The scheduling core driven by the deterministic simulator (tests/sim/): thousands of seeded
worlds, each checked against the invariants after every event; and, for each invariant, a
core broken on purpose that the simulator must catch, naming that invariant.

Replay one seed with its whole trace: ``SIM_SEED=1234 pytest tests/test_sim.py -k replay -s``
(or ``python -m tests.sim 1234``). More seeds: ``SIM_SEEDS=20000 pytest tests/test_sim.py``.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.sim import breaks
from tests.sim.invariants import KNOWN, SimViolation
from tests.sim.scenario import RowSpec, Scenario, draw, steady
from tests.sim.world import MakeCore, World, replay, simulate

SEEDS = int(os.environ.get("SIM_SEEDS", "3000"))
BATCH = 500


def sweep(first: int, last: int, make_core: MakeCore | None = None) -> Iterator[SimViolation]:
    for seed in range(first, last):
        try:
            if make_core is None:
                simulate(seed)
            else:
                simulate(seed, make_core)
        except SimViolation as violation:
            yield violation


@pytest.mark.parametrize("first", range(0, SEEDS, BATCH))
def test_seeds(first: int) -> None:
    """Every invariant holds in every world (bugs listed in KNOWN are counted, not failed)."""
    known: dict[str, list[int]] = {}
    for violation in sweep(first, min(first + BATCH, SEEDS)):
        if violation.known not in KNOWN:
            raise violation
        known.setdefault(violation.known, []).append(violation.seed)
    for name, seeds in known.items():
        print(f"known core bug {name!r} in seeds {seeds}")


def test_replay() -> None:
    """One seed again, exactly, with its whole trace (SIM_SEED, else seed 0)."""
    seed = int(os.environ.get("SIM_SEED", "0"))
    first = replay(seed)
    assert replay(seed) == first  # deterministic: the same trace again
    print(first)
    if "no violation" not in first.splitlines()[-1] and "known core bug" not in first:
        raise AssertionError(first)


def shows(known: str, seed: int, scenario: Scenario | None = None) -> None:
    """Run ``seed``: the known bug ``known`` must be what breaks it (the test is an xfail
    that passes, and so fails as strict, once the core is fixed); anything else fails."""
    try:
        simulate(seed, scenario=scenario)
    except SimViolation as violation:
        if violation.known != known:
            raise AssertionError(f"expected the known bug {known!r}: {violation}") from None
        raise


def test_input_end() -> None:
    """Seed 11123 (was the known bug "input end"): run 0 hands out its 18 rows; its actor
    dies and no new one is placed (placement_timeout=None): the run sees its input is over
    and ends."""
    simulate(11123)


def test_timeout_on_user_actors() -> None:
    """Seed 2703 (was the known bug "timeout on user actors"): actors handed in by the user,
    timeout=0.12 s; row 0 runs past it on actor 0, which cannot be killed: it fails with
    TimeoutError (retries left: it runs again on another actor), no death is counted, and
    actor 0 takes no new call until its call ends."""
    simulate(2703)


@pytest.mark.parametrize("broken", list(breaks.BROKEN))
def test_broken_core_is_caught(broken: str) -> None:
    """A core broken on purpose against invariant N: the simulator catches it, and some seed
    is caught by invariant N (others may be caught by another first: a call left running
    beside its replacement also breaks the node's memory budget)."""
    invariant, make_core, seeds = breaks.BROKEN[broken]
    caught: list[int] = []
    for violation in sweep(0, seeds, make_core):
        if violation.known:
            continue
        if violation.invariant == invariant:
            return
        caught.append(violation.invariant)
    raise AssertionError(f"a core that {broken} ran {seeds} worlds without breaking invariant "
                         f"{invariant} (it broke invariants {sorted(set(caught))})")


def test_idle_while_a_call_fits() -> None:
    """Seed 770 (was the known bug "idle while a call fits"): node0's budget is 11,353 MiB,
    calls are known to need 2,478 MiB and one runs there; when run 0's turn brings a row
    killed for memory (to run alone), which cannot start there, the free actors on node0
    take the other run's calls that fit instead of waiting for the node to free memory."""
    simulate(770)


def crowded(seed: int) -> Scenario:
    """The world of ``seed`` with a pool of 8 to 30 actors, nodes holding 4 to 16 of them
    and four times the rows: nodes whose actors leave little or no memory for calls."""
    scenario = draw(seed)
    rng = random.Random(seed + 99)
    scenario.size = rng.randint(8, 30)
    for node in scenario.nodes:
        node.capacity = rng.randint(4, 16)
    for run in scenario.runs:
        run.rows = run.rows + [RowSpec(row.duration, row.memory, row.size)
                               for row in run.rows] * 3
    return scenario


def test_alone_on_a_node_with_no_budget() -> None:
    """crowded(452) (was the known bug "alone on a node with no budget"): node1 holds 13
    actors more than its reading counted; its budget is 0. The rows killed for memory run
    again each alone on their node (exclusive, whatever the budget), nothing beside them."""
    simulate(452, scenario=crowded(452))


def _calls_per_event(actors: int, events: int) -> float:
    """Python function calls (and calls into C) made inside the core per event and per
    ``deadline()``, in the steady world of ``actors`` warm actors: counted, not timed."""
    world = World(steady(actors, rows=3 * actors + 2 * events), trace=1, checks=False)
    core = world.core
    counted = [0, 0]  # calls, events

    def profile(frame: object, event: str, arg: object) -> None:
        if event in ("call", "c_call"):
            counted[0] += 1

    def counting(method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            if world.replies < 2 * actors:  # not warm yet
                return method(*args)
            counted[1] += 1
            sys.setprofile(profile)
            try:
                return method(*args)
            finally:
                sys.setprofile(None)
        return wrapper

    core.handle = counting(core.handle)  # type: ignore[method-assign]
    core.deadline = counting(core.deadline)  # type: ignore[method-assign]
    world.timings = {}
    world.measure_from = 2 * actors
    world.stop_after = events
    world.max_events = 10**9
    world.run()
    assert counted[1] >= events
    return counted[0] / counted[1]


def test_work_per_event_does_not_grow_with_the_pool() -> None:
    """No event makes the core look at every actor: the calls it makes per event are the same
    for 10 and for 5,000 actors (within 10 %: queues of stale timeouts are cleared as they
    come up). benchmarks/engine.py times the same world."""
    small, large = _calls_per_event(10, 1000), _calls_per_event(5000, 1000)
    assert large <= 1.1 * small, (small, large)
