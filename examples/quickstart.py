"""The README's example, runnable: decorate once, call locally or over many rows."""

from __future__ import annotations

import tempfile
from pathlib import Path

from thread_chunks import chunked


@chunked(chunk_size=4)
def simulate(x: float, y: float) -> float:
    return x * y


def main() -> None:
    print(simulate(1.0, 2.0))                               # still a plain local call
    print(simulate.map([[1.0, 2.0], [3.0, 4.0]]))           # [2.0, 12.0]
    path = Path(tempfile.mkdtemp()) / "run.ckpt"
    print(sum(simulate.map([[1.0, 2.0]] * 100, path=path)))  # resumes after a crash


if __name__ == "__main__":
    main()
