"""Where users keep checkpoints (issue 27): only regular files are ours, a new file appears
whole, one writer at a time (a lock with a lease, taken over when its run is gone), the
filesystem known (a network filesystem gets no WAL shared memory), read-only directories
read, SIGTERM ends a run as Ctrl-C does. Real files, real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

import thread_chunks
from tests import workloads as w
from tests.conftest import ROOT, local_env, until_killed_drivers_calls_end, wait_until_recorded
from thread_chunks import (
    Checkpoint,
    CheckpointError,
    CheckpointFailedWarning,
    CheckpointInUseError,
    _checkpoint,
    _files,
    _lock,
    _signals,
)
from thread_chunks._checkpoint import Store
from thread_chunks._rows import Calls


@pytest.fixture
def network() -> Iterator[None]:
    """The network mode, forced by the config."""
    thread_chunks.config.checkpoint_filesystem = "network"
    try:
        yield
    finally:
        thread_chunks.config.checkpoint_filesystem = "auto"


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _open(path: Path, n: int = 3) -> Store:
    """A store for ``square`` over ``n`` rows (no Ray needed to open one)."""
    rows = [[i] for i in range(n)]
    return Store.open(path, w.square, "square", Calls.of(rows), rows)


def _close(store: Store) -> None:
    store.close()
    _checkpoint._wait_for_close(store.path)


# -- only regular files are ours -------------------------------------------------------------


def _special(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"a-{kind}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("making a character device needs root")
        os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()
    else:
        path.mkdir()
    return path


@pytest.mark.parametrize("kind,said", [("fifo", "FIFO"), ("device", "character device"),
                                       ("socket", "socket"), ("directory", "directory")])
def test_a_file_that_is_not_regular_is_refused_at_once_and_left_as_it_was(
        tmp_path: Path, kind: str, said: str) -> None:
    path = _special(tmp_path, kind)
    before = os.stat(path)
    for attempt in (lambda: _open(path), lambda: Checkpoint.load(path),
                    lambda: Checkpoint("square", [[1]], [1], [True], 1, 1).save(path)):
        with pytest.raises(CheckpointError, match=said):
            attempt()  # a FIFO would block here if it were opened
    after = os.stat(path)
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    assert _listing(tmp_path) == [path.name]


def test_an_empty_file_we_did_not_create_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "empty.ckpt"
    path.touch(mode=0o644)
    with pytest.raises(CheckpointError, match="empty file"):
        _open(path)
    with pytest.raises(CheckpointError, match="empty file"):
        Checkpoint.load(path)
    assert path.read_bytes() == b"" and stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert _listing(tmp_path) == ["empty.ckpt"]


def test_another_programs_wal_database_gets_nothing_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    assert _listing(tmp_path) == ["other.db"]
    content = path.read_bytes()
    for attempt in (lambda: _open(path), lambda: Checkpoint.load(path)):
        with pytest.raises(CheckpointError, match="another program"):
            attempt()
    assert path.read_bytes() == content
    assert _listing(tmp_path) == ["other.db"]


def test_racing_first_users_in_threads_see_one_file_and_one_writer(tmp_path: Path) -> None:
    """8 threads open one new path at once, 10 times: each opens it or is told another run
    writes it; none sees a half-made file ("another program")."""
    outcomes: list[str] = []
    for round_ in range(10):
        path = tmp_path / f"race-{round_}.ckpt"
        start = threading.Barrier(8)

        def first_user(path: Path = path, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                store = _open(path)
            except CheckpointInUseError:
                outcomes.append("in use")
                return
            except CheckpointError as exc:
                outcomes.append(f"error: {exc}")
                return
            outcomes.append("opened")
            _close(store)

        threads = [threading.Thread(target=first_user) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert _checkpoint._is_ours(str(path))
        assert _listing(tmp_path)[-1] == path.name, _listing(tmp_path)  # nothing left beside
    assert len(outcomes) == 80
    assert set(outcomes) <= {"opened", "in use"}, [o for o in outcomes if o.startswith("e")]
    assert outcomes.count("opened") >= 10


RACER = """
import sys, time
sys.path.insert(0, {root!r})
from thread_chunks import CheckpointError, CheckpointInUseError
from thread_chunks._checkpoint import Store
from thread_chunks._rows import Calls
from tests import workloads as w
while time.time() < {start}:
    time.sleep(0.001)
rows = [[i] for i in range(3)]
try:
    Store.open({path!r}, w.square, "square", Calls.of(rows), rows).close()
    print("opened")
except CheckpointInUseError:
    print("in use")
except CheckpointError as exc:
    print("error:", exc)
"""


def test_racing_first_users_in_processes_see_one_file_and_one_writer(tmp_path: Path) -> None:
    path = tmp_path / "race.ckpt"
    start = time.time() + 3  # every process is started and waiting by then
    code = RACER.format(root=str(ROOT), start=start, path=str(path))
    racers = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=local_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(8)]
    said = [racer.communicate(timeout=120) for racer in racers]
    outcomes = [out.strip() for out, _ in said]
    assert set(outcomes) <= {"opened", "in use"}, said
    assert "opened" in outcomes
    assert _checkpoint._is_ours(str(path)) and _listing(tmp_path) == ["race.ckpt"]


# -- one writer at a time ----------------------------------------------------------------------


def _write_lock(path: Path, host: str, pid: int, *, expires: float,
                start: str | None = None) -> None:
    now = time.time()
    holder = _lock.Holder(host, pid, start, now - 600, now - 60, expires, 7, 20, "theirs")
    Path(_lock.lock_path(str(path))).write_bytes(holder.dump())


def test_a_lease_from_another_host_is_taken_over_once_expired_not_before(
        tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    _close(_open(path))
    _write_lock(path, "node-elsewhere", 4242, expires=time.time() + 300)
    with pytest.raises(CheckpointInUseError, match="node-elsewhere") as refused:
        _open(path)
    assert (refused.value.host, refused.value.pid, refused.value.rows_done) == (
        "node-elsewhere", 4242, 7)
    assert "pid 4242" in str(refused.value) and "7 of 20 rows done" in str(refused.value)
    assert json.loads(Path(f"{path}.lock").read_bytes())["token"] == "theirs"  # left alone

    _write_lock(path, "node-elsewhere", 4242, expires=time.time() - 1)
    store = _open(path)  # expired: taken over
    mine = json.loads(Path(f"{path}.lock").read_bytes())
    assert (mine["host"], mine["pid"]) == (socket.gethostname(), os.getpid())
    _close(store)
    assert not Path(f"{path}.lock").exists()
    assert _listing(tmp_path) == ["run.ckpt"]


def test_racing_drivers_taking_over_one_stale_lock_do_not_both_win(tmp_path: Path) -> None:
    """8 threads find the same expired lease at once, 5 times: never two stores open at once
    (each that opens holds the file a while)."""
    path = tmp_path / "run.ckpt"
    _close(_open(path))
    inside, most, outcomes = [0], [0], []
    guard = threading.Lock()
    for _ in range(5):
        _write_lock(path, "node-elsewhere", 4242, expires=time.time() - 1)
        start = threading.Barrier(8)

        def taker(start: threading.Barrier = start) -> None:
            start.wait()
            try:
                store = _open(path)
            except CheckpointInUseError:
                outcomes.append("in use")
                return
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.2)
            with guard:
                inside[0] -= 1
            outcomes.append("opened")
            _close(store)

        threads = [threading.Thread(target=taker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert most == [1] and len(outcomes) == 40 and outcomes.count("opened") >= 5, outcomes
    assert _listing(tmp_path) == ["run.ckpt"]  # no lock, no take-over marker left


def test_a_lock_of_this_host_is_taken_over_when_its_process_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    far = time.time() + 3600  # the lease would hold: the pid decides on this host
    _write_lock(path, socket.gethostname(), int(gone.stdout), expires=far)
    _close(_open(path))
    # a live pid that is another process now (the start time differs): taken over too
    _write_lock(path, socket.gethostname(), os.getppid(), expires=far, start="1")
    _close(_open(path))
    # the same process, alive: refused
    _write_lock(path, socket.gethostname(), os.getppid(), expires=far,
                start=_lock._start_of(os.getppid()))
    with pytest.raises(CheckpointInUseError, match=f"pid {os.getppid()}"):
        _open(path)


def test_a_second_store_in_this_process_is_refused_and_readers_take_no_lock(
        tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    first = _open(path)
    try:
        with pytest.raises(CheckpointInUseError, match="this process"):
            _open(path)
        with pytest.raises(CheckpointInUseError):
            Checkpoint("square", [[1]], [1], [True], 1, 1).save(path)
        lock = Path(f"{path}.lock").read_bytes()
        first.record([(0, True, b"\x80\x04K\x00.", 1.0, 2.0, "", None)], "a")
        assert Checkpoint.load(path).completed == [True, False, False]  # read meanwhile
        assert _checkpoint.summary(path)["done"] == 1
        assert Path(f"{path}.lock").read_bytes() == lock
    finally:
        _close(first)
    assert _listing(tmp_path) == ["run.ckpt"]


def test_a_run_whose_lock_was_taken_over_stops_saving(tmp_path: Path) -> None:
    """Its lease ran out while it was alive (a frozen node) and another run took the lock:
    this one notices at its next renewal and saves no more (the other run writes now)."""
    path = tmp_path / "run.ckpt"
    store = _open(path, 4)
    try:
        lock = store._lock
        assert lock is not None and lock.renew()
        assert [lock.lost] == [False]
        _write_lock(path, "node-elsewhere", 99, expires=time.time() + 300)  # the other run
        assert not lock.renew()
        assert [lock.lost] == [True]
        with pytest.warns(CheckpointFailedWarning, match="another run took its lock over"):
            store.record([(0, True, b"\x80\x04K\x00.", 1.0, 2.0, "", None)], "a")
    finally:
        _close(store)
    assert json.loads(Path(f"{path}.lock").read_bytes())["host"] == "node-elsewhere"  # kept
    assert not any(Checkpoint.load(path).completed)


SLOW_DRIVER = """
import sys, thread_chunks
from tests import workloads as w
thread_chunks.config.checkpoint_filesystem = sys.argv[3]
thread_chunks._lock.RENEW_SECONDS = 0.2
rows = [[i, sys.argv[2], float(sys.argv[5])] for i in range(int(sys.argv[4]))]
try:
    out = thread_chunks.chunk(w.slow_count, rows, chunk_size=2, path=sys.argv[1],
                              progress_bar=False, batch_size=1)
except thread_chunks.CheckpointInUseError as exc:
    print("refused:", exc)
    raise SystemExit(3)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    raise
assert out == [i * i for i in range(len(rows))], out
print("complete")
"""


def _driver(ckpt: Path, marks: Path, mode: str = "local", rows: int = 30,
            seconds: float = 0.3) -> subprocess.Popen[str]:
    marks.mkdir(exist_ok=True)
    env = {**local_env(), "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    return subprocess.Popen([sys.executable, "-c", SLOW_DRIVER, str(ckpt), str(marks), mode,
                             str(rows), str(seconds)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _network(ckpt: Path, mode: str) -> bool:
    return mode == "network" or (mode == "auto" and _files.on_network(str(ckpt)))


def _lease_rows(ckpt: Path) -> int:
    found = _lock.holder(str(ckpt))
    return -1 if found is None else found.rows_done


def _until_done(driver: subprocess.Popen[str], ckpt: Path, count: int, mode: str) -> None:
    """Until ``driver`` recorded ``count`` rows: as the file says (local), or its lease
    (network: the file is the writer's alone)."""
    if not _network(ckpt, mode):
        wait_until_recorded(driver, ckpt, count)
        return
    deadline = time.time() + 120
    while _lease_rows(ckpt) < count:
        assert driver.poll() is None, driver.communicate()
        assert time.time() < deadline
        time.sleep(0.05)


@pytest.mark.usefixtures("ray_running")
def test_a_second_driver_is_refused_before_any_call_and_the_first_completes(
        tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    first = _driver(ckpt, tmp_path / "first", rows=16, seconds=2.0)  # 16 s at least
    wait_until_recorded(first, ckpt, 2)
    second = _driver(ckpt, tmp_path / "second", rows=16)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 3, (out, err)
    assert f"host {socket.gethostname()} (pid {first.pid})" in out and "since" in out, out
    assert list((tmp_path / "second").iterdir()) == []  # no call of the second ran
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0 and out == "complete\n", err
    view = Checkpoint.load(ckpt)
    assert view.completed == [True] * 16 and view.output == [i * i for i in range(16)]
    assert w.executions(tmp_path / "first") == {i: 1 for i in range(16)}
    assert not Path(f"{ckpt}.lock").exists()


@pytest.fixture
def fuse_mount(tmp_path: Path) -> Iterator[Path]:
    """A real FUSE filesystem (a passthrough served by ``tests/scripts/fuse_passthrough.py``)
    whose type is ``fuse.sshfs``, mounted for the test; skipped where FUSE cannot be used."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse here")
    unmount = next((tool for tool in ("fusermount3", "fusermount")
                    if subprocess.run(["which", tool], capture_output=True).returncode == 0),
                   None)
    if unmount is None:
        pytest.skip("no fusermount (apt-get install fuse3)")
    probe = subprocess.run([sys.executable, "-c", "import mfusepy"], capture_output=True,
                           text=True)
    if probe.returncode != 0:
        pytest.skip(f"mfusepy cannot load libfuse: {probe.stderr.strip()[-200:]}")
    source, mount = tmp_path / "exported", tmp_path / "mounted"
    source.mkdir()
    mount.mkdir()
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "scripts" /
                                                   "fuse_passthrough.py"),
                               str(source), str(mount), "sshfs"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 30
    while _files.filesystem_type(str(mount)) != "fuse.sshfs":
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            out = server.communicate()[0]
            pytest.skip(f"cannot mount a FUSE filesystem here: {out.strip()[-300:]}")
        time.sleep(0.05)
    try:
        yield mount
    finally:
        subprocess.run([unmount, "-u", str(mount)], check=False)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.usefixtures("ray_running")
@pytest.mark.parametrize("mode", ["local", "network", "fuse"])
def test_kill_9_of_a_writer_then_the_next_driver_takes_over_and_resumes(
        tmp_path: Path, mode: str, request: pytest.FixtureRequest) -> None:
    """Local, the network mode forced by the config, and a real FUSE mount of type
    fuse.sshfs, where the network mode is chosen by detection."""
    marks = tmp_path / "marks"
    ckpt = tmp_path / "run.ckpt"
    if mode == "fuse":
        ckpt = request.getfixturevalue("fuse_mount") / "run.ckpt"
        assert _files.on_network(str(ckpt))  # told by its type, nothing forced
        mode = "auto"
    driver = _driver(ckpt, marks, mode)
    _until_done(driver, ckpt, 6, mode)
    network = _network(ckpt, mode)
    if network:  # no WAL shared memory; readers are told who writes
        assert not Path(f"{ckpt}-shm").exists()
        inspect = subprocess.run(
            [sys.executable, "-c", "import sys, thread_chunks; from thread_chunks.__main__ "
             "import main; thread_chunks.config.checkpoint_filesystem = 'network'; "
             "sys.exit(main(['inspect', sys.argv[1]]))", str(ckpt)],
            capture_output=True, text=True, cwd=ROOT, env=local_env(), timeout=60)
        assert inspect.returncode == 2, inspect
        assert f"(pid {driver.pid}) holds it since" in inspect.stderr
        assert "rows done at its last renewal" in inspect.stderr
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    until_killed_drivers_calls_end(marks)
    assert Path(f"{ckpt}.lock").exists()  # left by the killed driver
    if mode == "network":
        thread_chunks.config.checkpoint_filesystem = "network"
    try:
        recorded = Checkpoint.load(ckpt)  # consistent after kill -9; the lock is stale
    finally:
        thread_chunks.config.checkpoint_filesystem = "auto"
    if network:  # the killed run's -wal merged under the lock, read with no shared memory
        assert not Path(f"{ckpt}-shm").exists() and not Path(f"{ckpt}.lock").exists()
    done_before = {i for i, c in enumerate(recorded.completed) if c}
    assert len(done_before) >= 6
    assert all(recorded.output[i] == i * i for i in done_before)

    rerun = _driver(ckpt, marks, mode)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0 and out == "complete\n", err
    counts = w.executions(marks)
    assert set(counts) == set(range(30))
    assert all(counts[i] == 1 for i in done_before)  # recorded calls never ran again
    assert sum(counts.values()) - 30 <= 2  # lost at most the calls in flight (chunk_size)
    assert Checkpoint.load(ckpt).completed == [True] * 30
    assert not Path(f"{ckpt}.lock").exists()


# -- the filesystem ------------------------------------------------------------------------


def test_the_filesystem_type_is_read_from_the_mount_table(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "40 22 0:50 / /scratch rw,relatime shared:5 - lustre 10.0.0.1@tcp:/fs rw,flock\n"
        "41 22 0:51 / /home/my\\040files rw shared:6 - nfs4 server:/home rw,vers=4.2\n"
        "42 41 0:52 / /home/my\\040files/local rw - tmpfs tmpfs rw\n")
    assert _files._linux_type("/scratch/u/run.ckpt", str(table)) == "lustre"
    assert _files._linux_type("/scratchpad/run.ckpt", str(table)) == "ext4"
    assert _files._linux_type("/home/my files/run.ckpt", str(table)) == "nfs4"
    assert _files._linux_type("/home/my files/local/run.ckpt", str(table)) == "tmpfs"
    assert {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "fuse.sshfs"} <= (
        _files.NETWORK_FILESYSTEMS)
    assert _files.filesystem_type(str(tmp_path / "run.ckpt")) not in _files.NETWORK_FILESYSTEMS


def test_the_filesystem_setting_is_checked_and_wins(tmp_path: Path) -> None:
    path = str(tmp_path / "run.ckpt")
    assert not _files.on_network(path)
    try:
        thread_chunks.config.checkpoint_filesystem = "network"
        assert _files.on_network(path)
        thread_chunks.config.checkpoint_filesystem = "nfs"
        with pytest.raises(ValueError, match="checkpoint_filesystem: expected 'auto', "
                                             "'local' or 'network', got 'nfs'"):
            _open(tmp_path / "run.ckpt")
        assert _listing(tmp_path) == []
    finally:
        thread_chunks.config.checkpoint_filesystem = "auto"


@pytest.mark.usefixtures("network")
def test_the_network_mode_keeps_no_shared_memory_and_reads_after_the_run(
        tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    store = _open(path, 4)
    try:
        store.record([(1, True, b"\x80\x04K\x01.", 1.0, 2.0, "", None)], "a")
        assert not Path(f"{path}-shm").exists()
        assert open(path, "rb").read(20)[18:20] == b"\x02\x02"  # WAL, its index in memory
        with pytest.raises(CheckpointInUseError, match=r"this process\) holds it") as told:
            _checkpoint.summary(path)
        assert told.value.pid == os.getpid()
    finally:
        store.close()
    assert _checkpoint.summary(path)["done"] == 1  # waits for its own close, then reads
    again = _open(path, 4)
    assert list(again.reused) == [1]
    assert [row for row, _ in again.read_reused()] == [1]  # through the writer's connection
    _close(again)


@pytest.mark.usefixtures("network")
def test_a_file_whose_lock_sqlite_cannot_take_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("thread_chunks._checkpoint.connect.BUSY_TIMEOUT_MS", 50)
    path = tmp_path / "run.ckpt"
    _close(_open(path))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], "
         "isolation_level=None); c.execute('BEGIN EXCLUSIVE'); print('held', flush=True); "
         "time.sleep(60)", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(CheckpointError, match="refuses file locks.*node-local scratch"):
            _open(path)
    finally:
        holder.kill()
        holder.wait()
    assert not Path(f"{path}.lock").exists()


# -- read-only places ----------------------------------------------------------------------


@pytest.fixture
def read_only_view(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A directory and the same, bind-mounted read-only (skipped where mounting is not
    allowed)."""
    source, view = tmp_path / "source", tmp_path / "view"
    source.mkdir()
    view.mkdir()
    made = subprocess.run(["mount", "--bind", str(source), str(view)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {made.stderr!r}")
    try:
        ro = subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True)
        if ro.returncode != 0:
            pytest.skip(f"cannot remount read-only: {ro.stderr!r}")
        yield source, view
    finally:
        subprocess.run(["umount", str(view)], check=False)


def test_a_checkpoint_on_a_read_only_mount_can_be_read(
        read_only_view: tuple[Path, Path]) -> None:
    source, view = read_only_view
    Checkpoint("square", [[0], [1], [2]], [0, 1, None], [True, True, False], 2, 2,
               source / "run.ckpt")
    _close(_open(source / "run.ckpt"))  # as a run leaves it
    assert not _files.writable_directory(str(view / "run.ckpt"))
    view_of = Checkpoint.load(view / "run.ckpt")
    assert view_of.output == [0, 1, None]
    cli = subprocess.run([sys.executable, "-m", "thread_chunks", "inspect",
                          str(view / "run.ckpt"), "--json"], capture_output=True, text=True,
                         cwd=ROOT, env=local_env(), timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["done"] == 2
    assert _listing(source) == ["run.ckpt"]
    with pytest.raises(CheckpointError, match="cannot take the checkpoint's lock"):
        _open(view / "run.ckpt")  # a writer is refused, clearly


KILLED_WRITER = """
import os, sys
from thread_chunks._checkpoint import Store
from thread_chunks._rows import Calls
from tests import workloads as w
rows = [[i] for i in range(3)]
store = Store.open(sys.argv[1], w.square, "square", Calls.of(rows), rows)
store.record([(1, True, b"\\x80\\x04K\\x01.", 1.0, 2.0, "", None)], "a")
os._exit(9)  # as kill -9: the result waits in the -wal
"""


def test_a_killed_runs_checkpoint_on_a_read_only_mount_is_read_or_clearly_refused(
        read_only_view: tuple[Path, Path]) -> None:
    source, view = read_only_view
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(source / "run.ckpt")],
                            cwd=ROOT, env=local_env(), timeout=60, capture_output=True)
    assert killed.returncode == 9, killed.stderr
    assert _files.has_wal(str(source / "run.ckpt"))
    assert Checkpoint.load(view / "run.ckpt").completed == [False, True, False]  # its -shm
    (source / "run.ckpt-shm").unlink()  # now SQLite cannot read the -wal there
    with pytest.raises(CheckpointError, match="copy the checkpoint with its -wal file"):
        Checkpoint.load(view / "run.ckpt")


# -- SIGTERM -------------------------------------------------------------------------------


@pytest.mark.usefixtures("ray_running")
def test_sigterm_ends_a_run_as_ctrl_c_does_and_the_next_run_resumes(tmp_path: Path) -> None:
    ckpt, marks = tmp_path / "run.ckpt", tmp_path / "marks"
    driver = _driver(ckpt, marks)
    wait_until_recorded(driver, ckpt, 4)
    driver.send_signal(signal.SIGTERM)
    out, err = driver.communicate(timeout=120)
    assert out == "interrupted\n", (out, err)
    assert "KeyboardInterrupt" in err and "SIGTERM" in err
    assert not Path(f"{ckpt}.lock").exists()  # let go at once
    recorded = Checkpoint.load(ckpt)
    done_before = {i for i, c in enumerate(recorded.completed) if c}
    assert len(done_before) >= 4
    assert all(recorded.output[i] == i * i for i in done_before)
    until_killed_drivers_calls_end(marks)
    rerun = _driver(ckpt, marks)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0 and out == "complete\n", err
    counts = w.executions(marks)
    assert all(counts[i] == 1 for i in done_before)
    assert Checkpoint.load(ckpt).completed == [True] * 30


def test_the_sigterm_handler_respects_the_users_and_is_put_back() -> None:
    assert threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM)
    calls: list[int] = []

    def mine(signum: int, frame: Any) -> None:
        calls.append(signum)

    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert _signals.run_started() and _signals.run_started()  # two runs at once
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs here
        _signals.run_ended()
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # one still open
        _signals.run_ended()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        signal.signal(signal.SIGTERM, mine)
        assert not _signals.run_started()  # the user's handler stays
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert calls == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


# -- the HPC example -----------------------------------------------------------------------


def test_the_slurm_example_runs_without_slurm_on_a_local_ray_and_resumes(
        tmp_path: Path) -> None:
    ckpt = tmp_path / "sweep.ckpt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RAY_"))}
    env.update(PYTHONPATH=str(ROOT), CHECKPOINT=str(ckpt),  # as in an activated venv
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    script = ROOT / "examples" / "slurm_sweep.sh"
    for ran in (40, 0):
        done = subprocess.run(["bash", str(script), "--rows", "40", "--seconds", "0.01"],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "no Slurm allocation here: a local Ray" in done.stdout
        assert f"40 rows on {socket.gethostname()}: {ran} ran now" in done.stdout, done.stdout
    assert _listing(tmp_path) == ["sweep.ckpt"]  # the lock let go, the WAL merged
    assert Checkpoint.load(ckpt).completed == [True] * 40
