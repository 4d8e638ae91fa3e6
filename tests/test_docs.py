"""The docs cannot rot: every code block of every page runs (or says why not), the examples
run, the cluster rehearsal runs as written, the site builds."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import ray

from tests.conftest import ROOT, recorded, wait_until_recorded
from thread_chunks import Checkpoint

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
NOT_RUN = re.compile(r"\A# not run by the docs test: (\S.*)$", re.MULTILINE)
VENV_BIN = str(Path(sys.executable).parent)


def code_blocks(page: Path) -> list[tuple[str, str]]:
    """The page's fenced code blocks in order, as (language, code); MyST directives
    (```{toctree}, ```{eval-rst}, ...) are not code."""
    return [(lang, code) for lang, code in FENCE.findall(page.read_text())
            if not lang.startswith("{")]


def why_not_run(code: str) -> str | None:
    """The reason a block gives, on its first line, for not being run; None: it runs."""
    found = NOT_RUN.match(code)
    return found.group(1) if found else None


def _shell_env() -> dict[str, str]:
    """A reader's shell: its `python` is this venv's and imports this checkout, and it holds
    none of the RAY_ variables this process may have (Ray sets RAY_AUTH_MODE=token in the
    environment of a process whose ray.init() started a Ray)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "PATH": f"{VENV_BIN}{os.pathsep}{env['PATH']}", "PYTHONPATH": str(ROOT)}


def _cluster_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    return env


@pytest.mark.usefixtures("ray_running")
@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_every_code_block_of_every_page_runs(page: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Per page, in a fresh folder: its python blocks in order in one namespace (compiled
    without this file's ``from __future__`` import, as a reader's script would be), its bash
    blocks in a shell there; a block that is not run says why on its first line."""
    monkeypatch.chdir(tmp_path)
    log = logging.getLogger("thread_chunks")
    level = log.level
    try:
        namespace: dict[str, object] = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
        for number, (language, code) in enumerate(code_blocks(page), 1):
            where = f"{page.name}, {language} block {number}"
            assert language in ("python", "bash", "text"), f"{where}: a block of no known language"
            if language == "text" or why_not_run(code):  # text: a picture, nothing to run
                continue
            if language == "python":
                try:
                    exec(compile(code, where, "exec", dont_inherit=True), namespace)
                except Exception as exc:
                    raise AssertionError(f"{where} failed:\n{code}") from exc
            else:
                proc = subprocess.run(["bash", "-e", "-c", code], cwd=tmp_path, env=_shell_env(),
                                      capture_output=True, text=True, timeout=120)
                assert proc.returncode == 0, f"{where} failed:\n{code}\n{proc.stderr[-3000:]}"
    finally:
        log.setLevel(level)  # a page may turn the log on: not for the tests after it


def test_every_python_block_runs_and_only_shell_blocks_are_left_out() -> None:
    """Only shell commands may be left out (make targets that take minutes, commands on a
    reader's own files, the rehearsal run by its own test), each with a reason on its first
    line; a block that starts as a marker without a reason is run, and fails there."""
    left_out = [(page.name, lang, why_not_run(code)) for page in PAGES
                for lang, code in code_blocks(page) if why_not_run(code)]
    assert left_out and all(lang == "bash" and why for _, lang, why in left_out), left_out


def test_pages_with_code_have_python_blocks() -> None:
    with_code = {p.stem for p in PAGES if any(lang == "python" for lang, _ in code_blocks(p))}
    assert {"README", "getting-started", "questions", "chunking", "decorator", "checkpointing",
            "actors", "failures", "scaling-out", "typing", "migrating", "memory"} <= with_code


def test_every_page_is_in_the_reading_order_and_in_the_readme() -> None:
    toctree = re.search(r"```\{toctree\}\n(.*?)```", (DOCS / "index.md").read_text(), re.DOTALL)
    assert toctree is not None
    order = [line for line in toctree.group(1).splitlines() if line and ":" not in line]
    pages = {p.stem for p in DOCS.glob("*.md")} - {"index"}
    assert set(order) == pages
    readme = (ROOT / "README.md").read_text()
    listed = re.findall(r"\]\(docs/([\w-]+)\.md", readme.split("## Documentation")[1])
    assert listed == order, "README's list of pages is not the reading order of docs/index.md"


@pytest.mark.usefixtures("ray_running")
@pytest.mark.parametrize("example", ["quickstart.py", "cluster.py"])
def test_examples_run(example: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / example)], cwd=tmp_path,
                          env=_cluster_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip()


def test_the_quickstart_is_the_readme_example() -> None:
    [example] = [code for lang, code in code_blocks(ROOT / "README.md") if lang == "python"]
    _, script = (ROOT / "examples" / "quickstart.py").read_text().split('"""\n\n', 1)
    assert script == example
    assert "`examples/quickstart.py` is this script" in (ROOT / "README.md").read_text()


def test_the_demo_says_its_real_defaults() -> None:
    demo = (ROOT / "examples" / "demo.py").read_text()
    usage = re.search(r"python examples/demo.py (.*)", demo)
    assert usage is not None
    said = dict(re.findall(r"\[--(\w+) (\S+?)\]", usage.group(1)))
    defaults = dict(re.findall(r'add_argument\("--(\w+)".*?default=([^,)]+)', demo))
    assert said and all(defaults[name].strip('"') == value for name, value in said.items()), \
        (said, defaults)


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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _rehearsal_processes(port: int, since: float) -> list[psutil.Process]:
    """This user's processes started since ``since`` that belong to the cluster on ``port``
    (``ray start``, and each node's gcs_server, raylet, ...: their command lines name it)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "create_time", "uids"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or ())
            if (proc.info["create_time"] >= since and proc.info["uids"].real == os.getuid()
                    and re.search(rf"(?<![\d.]):?{port}(?!\d)", cmdline)
                    and re.search(r"ray|raylet|gcs_server", cmdline)):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.usefixtures("ray_running")
def test_the_cluster_rehearsal_runs_as_written_and_stops_only_its_nodes() -> None:
    """docs/scaling-out.md's commands, with only the port changed (a free one, since other
    clusters may run on this machine): a real head and worker, examples/cluster.py on both,
    then the two nodes stopped, while the suite's own Ray runs on."""
    page = (DOCS / "scaling-out.md").read_text()
    [commands] = [code for lang, code in code_blocks(DOCS / "scaling-out.md")
                  if lang == "bash" and "ray start --head" in code]
    assert "ray stop" not in commands  # it would stop every Ray of this user: never run it
    assert "6379" in commands and "RAY_AUTH_MODE=token" in page
    port = _free_port()
    since = time.time() - 1
    # no `bash -e`: the last line, `wait`, gives the status of the nodes stopped by `kill`
    shell = subprocess.Popen(["bash", "-c", commands.replace("6379", str(port))],
                             cwd=ROOT, env=_shell_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        try:
            out, err = shell.communicate(timeout=240)
        finally:
            if shell.poll() is None:
                os.killpg(shell.pid, signal.SIGTERM)
                shell.communicate(timeout=60)
        assert "on 2 node(s)" in out, out + err[-4000:]
        calls = [int(n) for n in re.findall(r"^  node \w+: (\d+) calls$", out, re.MULTILINE)]
        assert sum(calls) == 12, out
        # `wait` has returned: both nodes and everything they started are gone ...
        deadline = time.time() + 30
        while left := _rehearsal_processes(port, since):
            assert time.time() < deadline, [p.info["cmdline"] for p in left]
            time.sleep(0.2)
    finally:  # however it ended, nothing of this cluster outlives the test
        for proc in _rehearsal_processes(port, since):
            proc.terminate()
    # ... and the suite's Ray (as any other Ray on this machine) still runs
    assert ray.get(ray.remote(lambda: 41).remote()) + 1 == 42
