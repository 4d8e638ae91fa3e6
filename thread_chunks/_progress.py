"""The progress bar: tqdm (a widget in notebooks, text on stderr elsewhere), or nothing."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from tqdm.auto import tqdm


class Progress:
    """Counts finished calls; shows count, rate and ETA on stderr when enabled."""

    def __init__(self, enabled: bool, total: int | None, initial: int = 0, desc: str = "") -> None:
        self._bar: tqdm[Any] | None = None
        if enabled:
            self._bar = tqdm(total=total, initial=initial, desc=desc or None, file=sys.stderr,
                             unit="call", dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def note(self, text: str) -> None:
        """Show ``text`` after the counts (empty: remove it)."""
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
