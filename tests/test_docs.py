"""The docs cannot rot: every python block runs, the examples run, the site builds."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from tests.conftest import ROOT, recorded, wait_until_recorded
from thread_chunks import Checkpoint

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _cluster_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    return env


@pytest.mark.usefixtures("ray_running")
@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_every_python_block_in_the_docs_runs(page: Path) -> None:
    blocks = BLOCK.findall(page.read_text())
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    for number, code in enumerate(blocks, 1):
        try:
            exec(compile(code, f"{page.name} block {number}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{page.name}, python block {number} failed:\n{code}") from exc


def test_pages_with_code_have_python_blocks() -> None:
    with_code = [p.stem for p in PAGES if BLOCK.search(p.read_text())]
    assert {"getting-started", "chunking", "decorator", "checkpointing", "actors", "failures",
            "scaling-out", "typing", "migrating", "memory"} <= set(with_code)


@pytest.mark.usefixtures("ray_running")
@pytest.mark.parametrize("example", ["quickstart.py", "cluster.py"])
def test_examples_run(example: str) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / example)], cwd=ROOT,
                          env=_cluster_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip()


@pytest.mark.usefixtures("ray_running")
def test_the_demo_resumes_after_ctrl_c(tmp_path: Path) -> None:
    ckpt = tmp_path / "demo.ckpt"
    args = [sys.executable, str(ROOT / "examples" / "demo.py"), "--calls", "10", "--mb", "32",
            "--rounds", "25", "--path", str(ckpt)]
    demo = subprocess.Popen(args, cwd=ROOT, env=_cluster_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_until_recorded(demo, ckpt, 2)
    demo.send_signal(signal.SIGINT)
    out, err = demo.communicate(timeout=60)
    assert demo.returncode == 130, (out, err)
    assert "run again to resume" in err
    saved = recorded(ckpt)
    assert 2 <= saved < 10
    again = subprocess.run(args, cwd=ROOT, env=_cluster_env(), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming: {saved} of 10 calls" in again.stdout
    assert f"resumed from checkpoint: {saved})" in again.stdout
    assert "estimate_pi" in again.stderr  # the progress bar
    assert Checkpoint.load(ckpt).done == 10


def test_the_docs_site_builds_without_warnings(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b",
                           "html", str(DOCS), str(tmp_path / "html")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "html" / "decorator.html").exists()
