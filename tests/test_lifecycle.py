"""Who starts and stops Ray: each case in a fresh interpreter."""

from __future__ import annotations

from tests.conftest import run_script

PRELUDE = """
import ray, thread_chunks
from thread_chunks import chunk, Chunker
from tests.workloads import square
thread_chunks.config.ray_config = {"num_cpus": 2, "include_dashboard": False}
"""


def test_chunk_starts_ray_and_shuts_down_what_it_started() -> None:
    out = run_script(PRELUDE + """
assert not ray.is_initialized()
assert chunk(square, [[1], [2], [3]], chunk_size=2, progress_bar=False) == [1, 4, 9]
print("running after chunk:", ray.is_initialized())
""").stdout
    assert out.strip() == "running after chunk: False"


def test_a_ray_the_user_started_is_left_running() -> None:
    out = run_script(PRELUDE + """
ray.init(num_cpus=1, include_dashboard=False)
assert chunk(square, [[2]], chunk_size=1, progress_bar=False) == [4]
c = Chunker(square, chunk_size=1, progress_bar=False)
assert c([[3]]) == [9]
del c
print("running:", ray.is_initialized(), ray.cluster_resources()["CPU"])
""").stdout
    assert out.strip() == "running: True 1.0"


def test_a_chunker_that_started_ray_shuts_it_down_when_deleted() -> None:
    out = run_script(PRELUDE + """
c = Chunker(square, chunk_size=2, progress_bar=False)
assert ray.is_initialized()
assert c([[3], [4]]) == [9, 16]
del c
print("running after del:", ray.is_initialized())
""").stdout
    assert out.strip() == "running after del: False"


def test_a_persistent_chunker_leaves_ray_running() -> None:
    out = run_script(PRELUDE + """
c = Chunker(square, chunk_size=2, progress_bar=False, persistent=True)
assert c([[3]]) == [9]
del c
print("running after del:", ray.is_initialized())
""").stdout
    assert out.strip() == "running after del: True"


def test_nothing_but_the_users_output_reaches_stdout_and_the_bar_goes_to_stderr() -> None:
    proc = run_script(PRELUDE + """
out = chunk(square, [[i] for i in range(30)], chunk_size=2, progress_bar=True)
print("RESULT", sum(out))
""")
    assert proc.stdout == "RESULT 8555\n"
    assert "30/30" in proc.stderr  # tqdm: count
    assert "call/s" in proc.stderr  # tqdm: rate
