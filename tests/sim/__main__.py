"""``python -m tests.sim SEED [SEED ...]``: replay seeds, printing each whole trace."""

from __future__ import annotations

import sys

from .world import replay


def main(seeds: list[str]) -> None:
    for seed in seeds:
        print(replay(int(seed)))


if __name__ == "__main__":
    main(sys.argv[1:] or ["0"])
