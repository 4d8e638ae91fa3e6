"""The identity of a function (``_digest.identify``): what changes it, what keeps it.

The user's code lives in real module files written to ``tmp_path`` and imported under a name of
their own; an "edit between runs" rewrites the file and imports it again as a fresh module.
Only the tests that need an ``ObjectRef`` or an actor start Ray.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from tests.conftest import ROOT
from thread_chunks._digest import Identity, function_digest, identify, value_key

_names = itertools.count()


class Project:
    """Module files of a user's project in a directory on ``sys.path``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.prefix = f"tcid{os.getpid()}_{next(_names)}_"

    def write(self, name: str, source: str) -> None:
        (self.root / f"{self.prefix}{name}.py").write_text(textwrap.dedent(source))

    def load(self, name: str, source: str | None = None, **others: str) -> ModuleType:
        """Write the files given, forget every module of the project, import ``name`` anew."""
        for other, text in others.items():
            self.write(other, text)
        if source is not None:
            self.write(name, source)
        for loaded in [n for n in sys.modules if n.startswith(self.prefix)]:
            sys.modules.pop(loaded, None)
        full = self.prefix + name
        spec = importlib.util.spec_from_file_location(full, self.root / f"{full}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
        return module

    def source(self, text: str) -> str:
        """``text`` with ``{p}`` standing for the project's module prefix."""
        return textwrap.dedent(text).replace("{p}", self.prefix)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # an edit is never read from a .pyc
    monkeypatch.syspath_prepend(str(tmp_path))
    made = Project(tmp_path)
    yield made
    for name in [n for n in sys.modules if n.startswith(made.prefix)]:
        sys.modules.pop(name, None)


def _ident(project: Project, source: str, expr: str = "f", **kwargs: Any) -> Identity:
    module = project.load("m", project.source(source))
    identity = identify(eval(expr, vars(module)), **kwargs)
    assert identity.digest is not None, identity.unknown
    return identity


def _differ(project: Project, first: str, second: str, expr: str = "f") -> Identity:
    a, b = _ident(project, first, expr), _ident(project, second, expr)
    assert a.digest != b.digest
    return b


def _same(project: Project, first: str, second: str, expr: str = "f") -> None:
    a, b = _ident(project, first, expr), _ident(project, second, expr)
    assert a.parts == b.parts and a.digest == b.digest


def _changed(a: Identity, b: Identity) -> set[str]:
    return {what for what, _ in set(a.parts) ^ set(b.parts)}


# -- each row of the table: the identity differs -----------------------------------------------

_SCALER = """
class Scaler:
    def __init__(self, k):
        self.k = k

    def apply(self, x):
        return x * self.k

class Base:
    k = 1

    @classmethod
    def make(cls, x):
        return x * cls.k

class Two(Base):
    k = 2

class Three(Base):
    k = 3
"""


def test_bound_methods_of_two_instances_or_two_subclasses_differ(project: Project) -> None:
    module = project.load("m", _SCALER)
    two, three = identify(module.Scaler(2).apply), identify(module.Scaler(3).apply)
    assert two.digest != three.digest and _changed(two, three) == {"bound instance"}
    assert identify(module.Two.make).digest != identify(module.Three.make).digest
    assert identify(module.Scaler(2).apply).digest == two.digest


_TIMES = """
import functools

def times(k):
    def decorate(func):
        @functools.wraps(func)
        def wrap(x):
            return func(x) * k
        return wrap
    return decorate

{decorator}
def f(x):
    return x
"""


def test_every_wrapper_layer_counts(project: Project) -> None:
    two = _ident(project, _TIMES.format(decorator="@times(2)"))
    three = _ident(project, _TIMES.format(decorator="@times(3)"))
    bare = _ident(project, _TIMES.format(decorator=""))
    assert len({two.digest, three.digest, bare.digest}) == 3
    assert any(what.startswith("wrapper ") and "times.<locals>" in what for what, _ in two.parts)
    assert f"closure of {project.prefix}m.times.<locals>.decorate.<locals>.wrap" in _changed(
        two, three)


_DISPATCH = """
import functools

@functools.singledispatch
def f(x):
    return x

@f.register
def _(x: int):
    return x * {k}
"""


def test_a_singledispatch_overload_edited(project: Project) -> None:
    _differ(project, _DISPATCH.format(k=2), _DISPATCH.format(k=3))
    _same(project, _DISPATCH.format(k=2), _DISPATCH.format(k=2))


_PARTIAL = """
import functools, operator

def add(x, y):
    return x + y

def mul(x, y):
    return x * y
"""


def test_partial_of_two_functions_or_arguments_differ(project: Project) -> None:
    module = project.load("m", _PARTIAL)
    digests = {identify(p).digest for p in (
        functools.partial(module.add, 3), functools.partial(module.mul, 3),
        functools.partial(module.mul, 4), functools.partial(module.mul, y=3))}
    assert len(digests) == 4 and None not in digests


_HELPER = """
import {p}helpers
from {p}helpers import g

def f(x):
    return g(x) + {p}helpers.h(x)
"""


def test_a_helper_fixed_in_another_module(project: Project) -> None:
    main = project.source(_HELPER)
    first = project.load("m", main, helpers="def g(x):\n    return x\n\ndef h(x):\n    return 0\n")
    a = identify(first.f)
    second = project.load("m", helpers="def g(x):\n    return x + 1\n\ndef h(x):\n    return 0\n")
    b = identify(second.f)
    assert a.digest != b.digest
    assert _changed(a, b) == {f"helper {project.prefix}helpers.g"}
    third = project.load("m", helpers="def g(x):\n    return x\n\ndef h(x):\n    return 1\n")
    c = identify(third.f)
    assert _changed(a, c) == {f"helper {project.prefix}helpers.h"}


_REACHED = """
import functools

def f(x):
    import {p}helpers
    from {p}helpers import g
    return {p}helpers.h(x) + g(x) + cached(x)

@functools.cache
def cached(x):
    return x * {k}
"""


def test_helpers_imported_inside_or_behind_a_library_decorator(project: Project) -> None:
    helpers = "def g(x):\n    return {g}\n\ndef h(x):\n    return {h}\n"
    main = project.source(_REACHED)
    a = identify(project.load("m", main.replace("{k}", "1"),
                              helpers=helpers.format(g=0, h=0)).f)
    b = identify(project.load("m", helpers=helpers.format(g=0, h=1)).f)
    c = identify(project.load("m", helpers=helpers.format(g=1, h=0)).f)
    d = identify(project.load("m", main.replace("{k}", "2"),
                              helpers=helpers.format(g=0, h=0)).f)
    assert _changed(a, b) == {f"helper {project.prefix}helpers.h"}
    assert _changed(a, c) == {f"helper {project.prefix}helpers.g"}
    assert _changed(a, d) == {f"helper {project.prefix}m.cached"}
    again = identify(project.load("m", main.replace("{k}", "1"),
                                  helpers=helpers.format(g=0, h=0)).f)
    assert again == a


_CHAIN = """
K = {k}

def f(x):
    return g(x)

def g(x):
    return h(x) + 1

def h(x):
    return x * K
"""


def test_helpers_are_followed_transitively_and_constants_by_value(project: Project) -> None:
    a = _ident(project, _CHAIN.format(k=10))
    b = _differ(project, _CHAIN.format(k=10), _CHAIN.format(k=20))
    assert _changed(a, b) == {f"constant {project.prefix}m.K"}
    _differ(project, _CHAIN.format(k=10), _CHAIN.format(k=10.0))
    _differ(project, _CHAIN.format(k="(1, 2)"), _CHAIN.format(k="[1, 2]"))
    recursive = "def f(x):\n    return f(x - 1) if x else {k}\n"
    _differ(project, recursive.format(k=0), recursive.format(k=1))


_GLOBALS = """
import re, threading

PATTERN = re.compile({pattern!r})
LOCK = threading.Lock()

def f(x):
    with LOCK:
        return PATTERN.match(x)
"""


def test_other_objects_read_by_name_by_encoding_or_by_name(project: Project) -> None:
    a = _ident(project, _GLOBALS.format(pattern="a+"))
    b = _differ(project, _GLOBALS.format(pattern="a+"), _GLOBALS.format(pattern="b+"))
    assert _changed(a, b) == {f"value {project.prefix}m.PATTERN"}  # the lock: by name


_CALLABLE = """
class Model:
    def __init__(self, k):
        self.k = k * {init}

    def __call__(self, x):
        return self.scale(x)

    def scale(self, x):
        return x * self.k + {offset}
"""


def test_every_method_of_a_callable_object_and_of_a_class_used_as_function(
        project: Project) -> None:
    base = _CALLABLE.format(init=1, offset=0)
    cached = base.replace("    def scale", "    @functools.lru_cache\n    def scale")
    _differ(project, "import functools\n" + cached,
            "import functools\n" + cached.replace("+ 0", "+ 1"), "Model(2)")
    _differ(project, base, _CALLABLE.format(init=1, offset=1000), "Model(2)")
    _differ(project, base, _CALLABLE.format(init=1, offset=0) + "    z = 1\n", "Model(2)")
    _differ(project, base, _CALLABLE.format(init=2, offset=0), "Model")
    _same(project, base, base, "Model(2)")
    module = project.load("m", base)
    assert identify(module.Model(2)).digest != identify(module.Model(3)).digest


_ARGS = """
import dataclasses, enum, typing

@dataclasses.dataclass
class Point:
    x: float

    def norm(self):
        return self.x * {scale}

class Pair(typing.NamedTuple):
    {fields}

class Mode(enum.Enum):
    {members}
"""


def test_arguments_carry_their_class_code_and_enums_their_member_name(project: Project) -> None:
    def keys(scale: int, fields: str, members: str) -> dict[str, bytes | None]:
        module = project.load("m", _ARGS.format(scale=scale, fields=fields, members=members))
        return {"point": value_key([module.Point(2.0)]), "pair": value_key(module.Pair(1, 2)),
                "mode": value_key(module.Mode.FAST if hasattr(module.Mode, "FAST") else None),
                "medium": value_key(getattr(module.Mode, "MEDIUM", None))}

    fields, swapped = "a: int\n    b: int", "b: int\n    a: int"
    two = "SLOW = enum.auto()\n    FAST = enum.auto()"
    three = "SLOW = enum.auto()\n    MEDIUM = enum.auto()\n    FAST = enum.auto()"
    first = keys(1, fields, two)
    assert None not in first.values() or first["medium"] is None
    assert keys(1, fields, two) == first  # a fresh module, the same code: the same keys
    assert keys(2, fields, two)["point"] != first["point"]  # a dataclass method edited
    assert keys(1, swapped, two)["pair"] != first["pair"]  # NamedTuple fields reordered
    inserted = keys(1, fields, three)
    assert inserted["medium"] is not None and inserted["medium"] != first["mode"]  # value 2


def test_rows_of_local_classes_are_faithful_and_cyclic_rows_undigestable() -> None:
    def make(k: int) -> object:
        class Local:
            def __init__(self) -> None:
                self.k = k
        return Local()

    assert value_key(make(1)) is not None and value_key(make(1)) == value_key(make(1))
    assert value_key(make(1)) != value_key(make(2))
    cyclic: list[object] = [1]
    cyclic.append(cyclic)
    assert value_key([cyclic, 3]) is None


_ACTORS = """
from thread_chunks import LabelledActor

class Times10(LabelledActor):
    def run(self, label, *args, **kwargs):
        label, value = super().run(label, *args, **kwargs)
        return label, value * 10

def f(x):
    return x
"""


def test_actor_cls_is_part_of_the_identity(project: Project) -> None:
    import ray

    from thread_chunks import LabelledActor

    module = project.load("m", _ACTORS)
    plain = identify(module.f)
    assert identify(module.f, actor_cls=LabelledActor).digest == plain.digest
    times10 = identify(module.f, actor_cls=module.Times10)
    assert times10.digest != plain.digest
    assert f"actor_cls {project.prefix}m.Times10" in _changed(plain, times10)
    assert identify(module.f, actor_cls=ray.remote(module.Times10)).digest == times10.digest


def test_depends_on_values_and_files(project: Project, tmp_path: Path) -> None:
    module = project.load("m", "def f(x):\n    return x\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("1,2\n")
    first = identify(module.f, depends_on=data)
    assert identify(module.f, depends_on=data).digest == first.digest
    (data / "a.csv").write_text("1,3\n")
    edited = identify(module.f, depends_on=data)
    assert edited.digest != first.digest and _changed(first, edited) == {"depends_on"}
    assert identify(module.f, depends_on="v1").digest != identify(module.f,
                                                                  depends_on="v2").digest
    assert identify(module.f, depends_on=data / "a.csv").digest != edited.digest


# -- the guard side: edits that change nothing a call does --------------------------------------

_GUARD = """
def f(x):
    y = None
    return g(x) if y is None else y

def g(x):
    return x + 1
"""

_GUARD_EDITED = '''
import math

def unrelated(z):
    return z * 7


def g(x):
    # a comment
    return x + 1   # and another


def f(x):
    """A docstring, added: f's constants shift by one index."""
    y = None
    return g(x) if y is None else y
'''


def test_docstrings_comments_moves_unrelated_code_keep_the_identity(project: Project) -> None:
    _same(project, _GUARD, _GUARD_EDITED)


_IMPORTS = """
{top}

def f(x):
    import math
    return math.sqrt(x)
"""


def test_an_unrelated_top_level_import_keeps_the_identity(project: Project) -> None:
    _same(project, _IMPORTS.format(top=""), _IMPORTS.format(top="import math"))
    _differ(project, _IMPORTS.format(top=""), _IMPORTS.replace("sqrt", "floor").format(top=""))


_SETS = """
import functools

def factory():
    names = {"alpha", "beta", "gamma", "delta", "epsilon"}
    return lambda x: x in names

def member(x, names):
    return x in names

class Holder:
    def __init__(self):
        self.names = frozenset({"alpha", "beta", "gamma", "delta", "epsilon"})

    def __call__(self, x):
        return x in self.names

def plain(x):
    return member(x, ("alpha", "beta"))

closure = factory()
partial = functools.partial(member, names={"alpha", "beta", "gamma", "delta", "epsilon"})
holder = Holder()
"""


def test_sets_of_strings_have_one_identity_in_every_process(tmp_path: Path) -> None:
    (tmp_path / "tcid_sets.py").write_text(textwrap.dedent(_SETS))
    code = ("import tcid_sets as m\nfrom thread_chunks._digest import identify\n"
            "print([identify(c).digest.hex() for c in (m.closure, m.partial, m.holder, m.plain)])")
    outputs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
               "PYTHONHASHSEED": seed, "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outputs.add(proc.stdout)
    assert len(outputs) == 1


# -- unknown means miss ---------------------------------------------------------------------------


def _unknown(func: object, **kwargs: Any) -> str:
    identity = identify(func, **kwargs)
    assert identity.digest is None and identity.unknown, identity
    if not kwargs:
        assert function_digest(func) != function_digest(func)  # never "matches anything"
    return identity.unknown


def test_values_with_no_safe_encoding_make_the_identity_unknown() -> None:
    lock = threading.Lock()
    handle = open(__file__)
    try:
        cyclic: list[object] = []
        cyclic.append(cyclic)

        def in_closure(value: object) -> object:
            return lambda x: (x, value)

        class Holder:
            def __init__(self, value: object) -> None:
                self.value = value

            def __call__(self, x: object) -> object:
                return x

            def method(self, x: object) -> object:
                return x

        for value in (lock, handle, (i for i in range(3)), cyclic):
            assert _unknown(in_closure(value)).startswith("closure of")
            assert _unknown(functools.partial(max, value)).startswith("partial arguments")
            assert "instance of" in _unknown(Holder(value))
            assert _unknown(Holder(value).method).startswith("bound instance")

        def default(x: object, value: object = lock) -> object:
            return x

        assert "defaults of" in _unknown(default)
        assert _unknown(max, depends_on=lock).startswith("depends_on")
    finally:
        handle.close()


_REFS = """
import ray

REF = None
REFS = None

def read(x):
    return REF

def read_all(x):
    return REFS

def f(x, scale=None):
    return x

def g(x, scale=None):
    return x

class Model:
    def __init__(self, k, ref):
        self.k, self.ref = k, ref

    def __call__(self, x):
        return x * self.k
"""


@pytest.mark.usefixtures("ray_running")
def test_object_refs_and_actor_handles_make_the_identity_unknown(project: Project) -> None:
    import ray

    module = project.load("m", _REFS)
    ref = ray.put(10)
    assert "ObjectRef" in _unknown(module.Model(1, ref))
    assert _unknown(functools.partial(module.f, ref)).startswith("partial arguments")
    module.g.__defaults__ = (ref,)
    assert "ObjectRef" in _unknown(module.g)  # a default bound into every row's key
    module.REF = ref  # type: ignore[attr-defined]
    assert "ObjectRef" in _unknown(module.read)
    module.REFS = {"first": [ref]}  # type: ignore[attr-defined]
    assert "ObjectRef" in _unknown(module.read_all)
    module.Model.shared = (ref,)
    assert "ObjectRef" in _unknown(module.Model(1, None))

    @ray.remote
    class Counter:
        def get(self) -> int:
            return 1

    handle = Counter.remote()  # type: ignore[attr-defined]
    try:
        assert "ActorHandle" in _unknown(functools.partial(module.f, handle))
    finally:
        ray.kill(handle)


# -- cost --------------------------------------------------------------------------------------


def test_a_large_array_in_a_callable_is_hashed_not_kept(project: Project) -> None:
    module = project.load("m", _CALLABLE.format(init=1, offset=0))
    model = module.Model(1)
    model.table = np.arange(2_000_000, dtype=np.float64)
    first = identify(model)
    model.table[123] = -1.0
    assert identify(model).digest != first.digest
