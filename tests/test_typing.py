"""Downstream typing: mypy --strict accepts the typed example and reports every mistake."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
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


def test_downstream_typing_against_a_normally_installed_wheel(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a user who ran `pip install thread-chunks` gets: py.typed, no typings/ of ours."""
    import site
    import subprocess
    import sys
    import sysconfig

    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    [wheel] = wheels.glob("thread_chunks-*.whl")
    installed = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(installed), str(wheel)], check=True, capture_output=True, timeout=300)
    assert (installed / "thread_chunks" / "py.typed").exists()
    # an interpreter that sees the installed wheel, then this venv's dependencies
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
         "['purelib'])"], check=True, capture_output=True, text=True).stdout.strip())
    deps = site.getsitepackages()[0] if site.getsitepackages() else sysconfig.get_paths()[
        "purelib"]
    (purelib / "00-wheel.pth").write_text(f"{installed}\n")
    (purelib / "01-deps.pth").write_text(f"{deps}\n")
    user = tmp_path / "user"
    user.mkdir()
    (user / "downstream.py").write_text((HERE / "downstream.py").read_text())
    monkeypatch.chdir(user)  # not the checkout: the package must come from the wheel
    out, err, status = api.run(["--strict", "--no-incremental", "--python-executable",
                                str(venv / "bin" / "python"), "--cache-dir",
                                str(tmp_path / "cache"), str(user / "downstream.py")])
    assert status == 0, out + err
