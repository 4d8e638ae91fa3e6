"""What identifying a function costs (once per map), against pickling the same callable.

    python benchmarks/identity.py            # make bench runs it: 50 helpers, a 100 MB array
    python benchmarks/identity.py --quick    # 16 MB

1. A function in a module of the user's that reaches 50 helpers (a chain of calls, each helper
   reading a module constant, every tenth a method of a class): ``identify(f)`` against
   ``cloudpickle.dumps(f)`` of the same function with its module pickled by value (what a
   peer that ships code by value does), and ``pickle.dumps(f)`` (by reference: nothing read).
2. A callable object holding a 100 MB float64 array: ``identify(model)`` (the array is hashed
   once, never pickled) against ``pickle.dumps(model)``.

Each time is the best of 5 runs in this process (a fresh module each run: nothing cached).
"""

from __future__ import annotations

import argparse
import importlib.util
import pickle
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from thread_chunks._digest import identify  # noqa: E402

HELPERS = 50


def _module_source(helpers: int) -> str:
    lines = ["import math", ""]
    for i in range(helpers):
        lines.append(f"K{i} = {i} * 1.5")
        if i % 10 == 9:
            lines += [f"class Step{i}:", "    def apply(self, x):",
                      f"        return h{i + 1}(x) + K{i}" if i + 1 < helpers else
                      f"        return x + K{i}", ""]
            lines += [f"def h{i}(x):", f"    return Step{i}().apply(x)", ""]
        else:
            nxt = f"h{i + 1}(x)" if i + 1 < helpers else "x"
            lines += [f"def h{i}(x):", '    """A helper."""',
                      f"    return math.sqrt(abs({nxt})) + K{i}", ""]
    lines += ["def f(x):", "    return h0(x)", ""]
    return "\n".join(lines)


def _load(path: Path, name: str) -> ModuleType:
    sys.modules.pop(name, None)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _best(run: Callable[[], Any], times: int = 5) -> float:
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


class Model:
    """A callable object holding a large array."""

    def __init__(self, table: np.ndarray[Any, Any]) -> None:
        self.table = table

    def __call__(self, i: int) -> float:
        return float(self.table[i])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 16 MB array")
    args = parser.parse_args()
    megabytes = 16 if args.quick else 100

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "bench_identity_helpers.py")
        path.write_text(_module_source(HELPERS))
        sys.dont_write_bytecode = True
        modules = [_load(path, "bench_identity_helpers") for _ in range(5)]
        identity = identify(modules[0].f)
        assert identity.digest is not None, identity.unknown
        helpers = sum(1 for what, _ in identity.parts if what.startswith(("helper", "method")))
        fresh = iter(modules)
        ours = _best(lambda: identify(next(fresh).f))
        cloudpickle.register_pickle_by_value(modules[-1])
        by_value = _best(lambda: cloudpickle.dumps(modules[-1].f))
        cloudpickle.unregister_pickle_by_value(modules[-1])
        by_reference = _best(lambda: pickle.dumps(modules[-1].f))
    print(f"1. identify a function reaching {helpers} helpers ({len(identity.parts)} parts): "
          f"{ours * 1e3:.2f} ms; cloudpickle.dumps by value {by_value * 1e3:.2f} ms "
          f"(ratio {ours / by_value:.2f}); pickle.dumps by reference {by_reference * 1e6:.0f} us")

    table = np.random.default_rng(0).random(megabytes * (1 << 20) // 8)
    model = Model(table)
    ours = _best(lambda: identify(model), times=3)
    peer = _best(lambda: pickle.dumps(model, protocol=5), times=3)
    print(f"2. identify a callable holding a {megabytes} MB array: {ours:.3f} s; "
          f"pickle.dumps {peer:.3f} s (ratio {ours / peer:.2f})")


if __name__ == "__main__":
    main()
