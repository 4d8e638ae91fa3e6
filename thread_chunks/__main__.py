"""Command line: ``thread-chunks inspect PATH [--json] [--rows] [--plot FILE]`` and
``thread-chunks prune PATH [--keep N] [--dry-run]``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from ._checkpoint import (
    RATE_MIN_CALLS,
    RATE_MIN_SECONDS,
    StoredIdentity,
    prune,
    summary,
    timeline,
)
from ._errors import CheckpointError
from ._table import RowState, row_states


def _when(stamp: float | None) -> str:
    return "-" if stamp is None else datetime.fromtimestamp(stamp).isoformat(sep=" ",
                                                                            timespec="seconds")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _bytes(size: int | None) -> str:
    if size is None:
        return "-"
    return f"{size / 2**20:,.0f} MiB" if size >= 2**20 else f"{size / 2**10:,.0f} KiB"


def _ago(stamp: float) -> str:
    return f"{_when(stamp)}, {_duration(max(0.0, time.time() - stamp))} ago"


def _state(info: dict[str, Any]) -> str:
    state, done, total = info["state"], info["done"], info["total"]
    last = max((t for t in (info["last_update"], info["run_started"]) if t is not None),
               default=None)
    if state == "finished":
        return f"finished{'' if info['run_ended'] is None else ' at ' + _when(info['run_ended'])}"
    if state == "stopped":
        left = total - done - info["failed"]
        return f"stopped at {_when(info['run_ended'])}, {left} of {total} rows not run"
    if state == "quiet" and last is not None:
        return (f"no update since {_ago(last)}, and no end recorded: killed, or its calls "
                "take long")
    if state == "saved":
        return "written by Checkpoint(...), not run"
    return "running" if last is None else f"running (last update {_ago(last)})"


def _text(info: dict[str, Any]) -> str:
    rate = info["rate_per_second"]
    distinct = info["distinct_calls_latest_run"]
    calls = "" if distinct is None or distinct == info["rows_latest_run"] else (
        f" ({distinct} distinct call{'s' * (distinct != 1)})")
    if info["calls_latest_run"] and rate is None:
        rate_text = (f"- (measured over at least {RATE_MIN_CALLS} calls and "
                     f"{RATE_MIN_SECONDS:g} s)")
    else:
        rate_text = "-" if rate is None else f"{rate:.3g} calls/s"
    memory = "-" if info["call_memory_median"] is None else (
        f"median {_bytes(info['call_memory_median'])}, max {_bytes(info['call_memory_max'])}")
    return "\n".join([
        f"checkpoint:   {info['path']}",
        f"function:     {info['function']}",
        f"state:        {_state(info)}",
        f"done:         {info['done']} / {info['total']}",
        f"running:      {info['running']}",
        f"failed:       {info['failed']}",
        f"latest run:   {info['rows_latest_run']} rows{calls}, "
        f"{info['reused_latest_run']} reused, {info['calls_latest_run']} computed",
        f"rows stored:  {info['rows_stored']} (results in the file, of any list)",
        f"first update: {_when(info['first_update'])}",
        f"last update:  {_when(info['last_update'])}",
        f"rate:         {rate_text}",
        f"eta:          {_duration(info['eta_seconds'])}",
        f"call memory:  {memory}",
        *_listed([StoredIdentity(**entry) for entry in info.get("identities", [])]),
    ])


def _listed(held: list[StoredIdentity]) -> list[str]:
    """The identities of a file, one line each (the latest run's marked)."""
    if not held:
        return []
    lines = [f"identities:   {len(held)} (results of each are reused only by a run with the "
             "same identity)"]
    for entry in held:
        kind = "" if entry.kind == "identified" else f" [{entry.kind}]"
        mark = "  <- latest run" if entry.latest else ""
        lines.append(f"  #{entry.id} {entry.function}{kind}: {entry.results} results, first "
                     f"seen {_when(entry.first_seen or None)}, last used "
                     f"{_when(entry.last_used or None)}{mark}")
        if entry.changed:
            lines.append(f"     since the one before: {entry.changed}")
    return lines


def _rows_text(states: Iterable[RowState]) -> Iterator[str]:
    yield "row      state    seconds  actor        detail"
    for s in states:
        seconds = "-" if s.seconds is None else f"{s.seconds:.3f}" if s.seconds >= 0.001 \
            else "<0.001"
        detail = s.error if s.error is not None else "reused" if s.reused else ""
        yield f"{s.row:<8} {s.state:<8} {seconds:<8} {s.actor or '-':<12} {detail}".rstrip()


class _CannotPlot(Exception):
    """Why ``--plot`` drew nothing (the summary is printed all the same)."""


def plot_timeline(path: str, out: str) -> None:
    """Draw one horizontal bar per call, one lane per actor, from the recorded times; below
    it, when calls were measured, the memory the running calls held together over time
    (each counted at its measured peak for its whole span: an upper bound)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise _CannotPlot("--plot needs matplotlib: pip install 'thread-chunks[plot]'") from exc
    spans = timeline(path)
    if not spans:
        raise _CannotPlot(f"{path}: no finished call has timing to plot")
    t0 = min(start for _, start, *_ in spans)
    lanes = sorted({actor for actor, *_ in spans})
    steps = sorted(step for _, start, end, _, memory in spans if memory is not None
                   for step in ((start - t0, memory), (end - t0, -memory)))
    height = 1 + 0.5 * len(lanes)
    if steps:
        fig, (ax, mem) = plt.subplots(2, 1, sharex=True, figsize=(10, height + 2.5),
                                      height_ratios=[height, 2.5])
        times, held, total = [0.0], [0.0], 0
        for when, change in steps:
            total += change
            times.append(when)
            held.append(total / 2**30)
        mem.step(times, held, where="post")
        mem.set_ylabel("GiB held by calls")
        mem.set_xlabel("seconds since the first recorded call")
    else:
        fig, ax = plt.subplots(figsize=(10, height))
        ax.set_xlabel("seconds since the first recorded call")
    for actor, start, end, *_ in spans:
        ax.barh(lanes.index(actor), end - start, left=start - t0, height=0.8,
                edgecolor="white")
    ax.set_yticks(range(len(lanes)), lanes)
    ax.set_title(f"{len(spans)} calls on {len(lanes)} actors")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="thread-chunks",
                                     description="Tools for thread-chunks checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect",
                             help="progress, reuse, failures, rate and ETA of a checkpoint")
    inspect.add_argument("path")
    inspect.add_argument("--json", action="store_true", help="print JSON for scripts")
    inspect.add_argument("--plot", metavar="FILE", help="also draw a timeline of calls (PNG)")
    inspect.add_argument("--rows", action="store_true",
                         help="also list every row: done, failed (with its error), running, "
                         "waiting")
    pruning = sub.add_parser(
        "prune", help="remove the results of older identities (default: all but the latest "
        "run's) and shrink the file")
    pruning.add_argument("path")
    pruning.add_argument("--keep", type=int, default=1, metavar="N",
                         help="keep the N most recently used identities (default 1)")
    pruning.add_argument("--dry-run", action="store_true",
                         help="only say what would be removed")
    args = parser.parse_args(argv)
    if args.command == "prune":
        return _prune(args.path, args.keep, args.dry_run)
    try:
        info = summary(args.path)
        if args.json:
            if args.rows:
                info["rows"] = [s._asdict() for s in row_states(args.path)]
            print(json.dumps(info, indent=2))
        else:
            print(_text(info))
            if args.rows:
                print()
                for line in _rows_text(row_states(args.path)):
                    print(line)
        if args.plot:
            plot_timeline(args.path, args.plot)
    except CheckpointError as exc:
        print(f"thread-chunks: {exc}", file=sys.stderr)
        return 2
    except _CannotPlot as exc:
        print(f"thread-chunks: {exc}", file=sys.stderr)
        return 1
    return 0


def _prune(path: str, keep: int, dry_run: bool) -> int:
    try:
        before = os.path.getsize(path) if os.path.exists(path) else 0
        gone = prune(path, keep=keep, dry_run=dry_run)
    except (CheckpointError, ValueError) as exc:
        print(f"thread-chunks: {exc}", file=sys.stderr)
        return 2
    verb = "would remove" if dry_run else "removed"
    for entry in gone:
        print(f"{verb} #{entry.id} {entry.function} [{entry.kind}]: {entry.results} results, "
              f"last used {_when(entry.last_used or None)}")
    after = os.path.getsize(path)
    print(f"{path}: {verb} {len(gone)} identities; {before / 2**20:,.1f} MiB"
          + ("" if dry_run else f" -> {after / 2**20:,.1f} MiB"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
