"""Downstream typing: mypy --strict accepts the typed example and reports every mistake."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
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


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An interpreter that sees thread-chunks installed from its wheel (py.typed, none of our
    typings/), then this venv's dependencies; and a user folder holding the typing modules."""
    tmp = tmp_path_factory.mktemp("installed")
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    [wheel] = wheels.glob("thread_chunks-*.whl")
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    assert (target / "thread_chunks" / "py.typed").exists()
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "00-wheel.pth").write_text(f"{target}\n")
    (purelib / "01-deps.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n")
    user = tmp / "user"
    user.mkdir()
    for name in ("downstream.py", "mistakes.py"):
        (user / name).write_text((HERE / name).read_text())
    (user / "pyrightconfig.json").write_text(json.dumps(
        {"typeCheckingMode": "strict", "pythonVersion": "3.11", "venvPath": str(tmp),
         "venv": "venv"}))
    return python, user


def test_mypy_strict_with_the_installed_wheel(installed: tuple[Path, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    python, user = installed
    monkeypatch.chdir(user)  # not the checkout: the package must come from the wheel
    out, err, status = api.run(["--strict", "--no-incremental", "--python-executable",
                                str(python), "--cache-dir", str(user / ".cache"),
                                "downstream.py"])
    assert status == 0, out + err


def _pyright(user: Path, module: str) -> tuple[str, int]:
    proc = subprocess.run([sys.executable, "-m", "pyright", module], cwd=user,
                          capture_output=True, text=True, timeout=600)
    return proc.stdout + proc.stderr, proc.returncode


def test_pyright_strict_reads_the_same_types(installed: tuple[Path, Path]) -> None:
    _, user = installed
    out, status = _pyright(user, "downstream.py")
    assert status == 0, out
    out, status = _pyright(user, "mistakes.py")
    source = (user / "mistakes.py").read_text().splitlines()
    expected = {n for n, line in enumerate(source, 1) if re.search(r"# E: [\w-]+$", line)}
    reported = {int(m.group(1)) for m in re.finditer(r"mistakes\.py:(\d+):\d+ - error", out)}
    assert status == 1
    assert reported == expected, out


def _promised_mistakes() -> tuple[str, dict[int, str]]:
    """docs/typing.md's script of mistakes, and the error code it promises on each line."""
    page = (ROOT / "docs" / "typing.md").read_text()
    [script] = [block for block in re.findall(r"^```python\n(.*?)^```$", page, re.M | re.S)
                if "# error: [" in block]
    promised = {n: m.group(1) for n, line in enumerate(script.splitlines(), 1)
                if (m := re.search(r"# error: \[([\w-]+)\]", line))}
    return script, promised


def _outside_the_clone(tmp_path: Path) -> dict[str, str]:
    """A folder far from the clone holding the page's script; an environment that finds
    thread_chunks only the way this venv has it installed (no PYTHONPATH, no MYPYPATH)."""
    script, _ = _promised_mistakes()
    (tmp_path / "check_me.py").write_text(script)
    assert ROOT not in tmp_path.parents
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}


def test_mypy_outside_the_clone_sees_the_venvs_install(tmp_path: Path) -> None:
    """What `make demo`/`make test` installed is what a user's mypy sees from elsewhere:
    exactly the errors the typing page promises, each on its line (no "Cannot find
    implementation", no Any)."""
    env = _outside_the_clone(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                           "--cache-dir", str(tmp_path / ".cache"), "check_me.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    reported = {int(m.group(1)): m.group(2) for m in re.finditer(
        r"^check_me\.py:(\d+): error: .*\[([\w-]+)\]$", proc.stdout, re.MULTILINE)}
    hint = " (an editable install mypy cannot follow? `make .venv/.stamp-test` redoes it)"
    assert reported == _promised_mistakes()[1], proc.stdout + proc.stderr + hint


def test_pyright_outside_the_clone_sees_the_venvs_install(tmp_path: Path) -> None:
    env = _outside_the_clone(tmp_path)
    (tmp_path / "pyrightconfig.json").write_text(json.dumps({"typeCheckingMode": "strict"}))
    proc = subprocess.run([sys.executable, "-m", "pyright", "--pythonpath", sys.executable,
                           "check_me.py"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    reported = {int(m.group(1)) for m in re.finditer(r"check_me\.py:(\d+):\d+ - error",
                                                     proc.stdout)}
    assert reported == set(_promised_mistakes()[1]), proc.stdout + proc.stderr
