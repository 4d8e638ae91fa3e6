"""Command line: ``thread-chunks inspect PATH [--json] [--plot FILE]``."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from ._checkpoint import summary, timeline
from ._errors import CheckpointError


def _when(stamp: float | None) -> str:
    return "-" if stamp is None else datetime.fromtimestamp(stamp).isoformat(sep=" ",
                                                                            timespec="seconds")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _text(info: dict[str, Any]) -> str:
    rate = info["rate_per_second"]
    return "\n".join([
        f"checkpoint:   {info['path']}",
        f"function:     {info['function']}",
        f"done:         {info['done']} / {info['total']}",
        f"rows stored:  {info['rows_stored']}",
        f"latest run:   {info['rows_latest_run']} rows, {info['reused_latest_run']} reused",
        f"failed:       {info['failed']}",
        f"first update: {_when(info['first_update'])}",
        f"last update:  {_when(info['last_update'])}",
        f"rate:         {'-' if rate is None else f'{rate:.3g} calls/s'}",
        f"eta:          {_duration(info['eta_seconds'])}",
    ])


def plot_timeline(path: str, out: str) -> None:
    """Draw one horizontal bar per call, one lane per actor, from the recorded times."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit("--plot needs matplotlib: pip install 'thread-chunks[plot]'") from exc
    spans = timeline(path)
    if not spans:
        raise SystemExit(f"{path}: no finished call has timing to plot")
    t0 = min(start for _, start, _, _ in spans)
    lanes = sorted({actor for actor, *_ in spans})
    fig, ax = plt.subplots(figsize=(10, 1 + 0.5 * len(lanes)))
    for actor, start, end, _ in spans:
        ax.barh(lanes.index(actor), end - start, left=start - t0, height=0.8,
                edgecolor="white")
    ax.set_yticks(range(len(lanes)), lanes)
    ax.set_xlabel("seconds since the first recorded call")
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
    args = parser.parse_args(argv)
    try:
        info = summary(args.path)
        if args.plot:
            plot_timeline(args.path, args.plot)
    except CheckpointError as exc:
        print(f"thread-chunks: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2) if args.json else _text(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
