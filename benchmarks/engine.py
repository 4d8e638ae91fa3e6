"""The scheduling core's CPU per event at 10, 100, 1,000 and 10,000 simulated actors (issue 29).

    python benchmarks/engine.py            # make bench runs it
    python benchmarks/engine.py --quick    # fewer events

The core (``thread_chunks._engine.core.Scheduler``, no Ray) is driven by the simulator's world
(tests/sim/): warm actors (timing starts once every actor has replied about twice), one run of
one-row calls of about a second each, steady replies, a ``timeout=`` set on the run so the
deadline path is taken on every step (the timeout itself never expires). Only the time spent
inside ``Scheduler.handle`` and ``Scheduler.deadline`` is counted (the thread's CPU time,
so other processes on the machine do not count), per event kind; the invariant checks are
off. Goal: per event at 10,000 actors <= 1.2 x at 10.

The best of the rounds is shown (the machine's noise only adds), in microseconds, and each
line's ratio to the 10-actor line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.sim.scenario import steady
from tests.sim.world import World

KINDS = ("Replied", "Handed", "deadline()")


def measure(actors: int, events: int) -> dict[str, float]:
    """Microseconds per event of each kind (the mean over the timed events), and per step
    of the loop ("all events": every event and deadline() call of a step)."""
    world = World(steady(actors, rows=3 * actors + 2 * events), trace=1, checks=False)
    world.timings = {}
    world.measure_from = 2 * actors
    world.stop_after = events
    world.max_events = 10**9
    world.run()
    timings = world.timings
    out = {kind: statistics.fmean(ns) / 1000 for kind, ns in timings.items() if ns}
    every = [n for ns in timings.values() for n in ns]
    out["all events"] = sum(every) / 1000 / max(1, len(timings.get("deadline()", [])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer events a round")
    parser.add_argument("--sizes", default="10,100,1000,10000")
    args = parser.parse_args()
    events = 3000 if args.quick else 20000
    repeats = 1 if args.quick else 3
    sizes = [int(s) for s in args.sizes.split(",")]
    rounds: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
    for _ in range(repeats):  # the sizes in turn, so a busy moment touches all alike
        for size in sizes:
            rounds[size].append(measure(size, events))
    results = {size: {kind: min(r[kind] for r in rounds[size] if kind in r)
                      for kind in rounds[size][0]} for size in sizes}
    kinds = [*KINDS, "all events"]
    print(f"The scheduling core's CPU per event, microseconds ({events} timed steps a "
          f"round, best of {repeats}; ratio to {sizes[0]} actors in brackets)")
    print(f"{'actors':>8}" + "".join(f"{kind:>22}" for kind in kinds))
    base = results[sizes[0]]
    for size in sizes:
        line = results[size]
        print(f"{size:>8}" + "".join(
            f"{line.get(kind, 0.0):>13.2f} ({line.get(kind, 0.0) / base[kind]:4.2f}x)"
            if base.get(kind) else f"{'-':>22}" for kind in kinds))
    worst = max(results[sizes[-1]]["all events"] / base["all events"], 0.0)
    print(f"goal: all events at {sizes[-1]} actors <= 1.2 x {sizes[0]}: "
          f"{worst:.2f} x ({'met' if worst <= 1.2 else 'NOT met'})")


if __name__ == "__main__":
    main()
