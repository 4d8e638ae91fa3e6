"""The README's example, exactly (tests/test_docs.py compares them)."""

from thread_chunks import chunked


@chunked(chunk_size=4)
def simulate(x: float, y: float) -> float:
    return x * y


print(simulate(1.0, 2.0))                       # 2.0: still a plain local call
print(simulate.map([[1.0, 2.0], [3.0, 4.0]]))   # [2.0, 12.0]: 4 Ray actors at most, in order
rows = [simulate.row(x, 2.0) for x in range(100)]  # typed rows: mypy and pyright check each
print(sum(simulate.map(rows, path="run.ckpt")))  # 9900.0; run it again: resumes from run.ckpt
