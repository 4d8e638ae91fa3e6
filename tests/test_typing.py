"""Downstream typing: mypy --strict accepts the typed example and reports every mistake."""

from __future__ import annotations

import re
from pathlib import Path

from mypy import api

HERE = Path(__file__).parent / "typing"
ROOT = HERE.parent.parent


def _mypy(path: Path) -> tuple[str, int]:
    out, err, status = api.run(["--config-file", str(ROOT / "mypy.ini"), "--no-incremental",
                                str(path)])
    return out + err, status


def test_the_typed_downstream_module_passes_mypy_strict() -> None:
    out, status = _mypy(HERE / "downstream.py")
    assert status == 0, out


def test_each_typing_mistake_is_reported_on_its_own_line() -> None:
    source = (HERE / "mistakes.py").read_text().splitlines()
    expected = {(n, m.group(1)) for n, line in enumerate(source, 1)
                if (m := re.search(r"# E: ([\w-]+)$", line))}
    out, status = _mypy(HERE / "mistakes.py")
    reported = {(int(m.group(1)), m.group(2)) for m in
                re.finditer(r"mistakes\.py:(\d+): error: .*\[([\w-]+)\]$", out, re.MULTILINE)}
    assert status == 1
    assert reported == expected, out
