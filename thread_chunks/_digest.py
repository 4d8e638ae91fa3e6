"""What makes two calls the same call: the identity of a function and digests of arguments.

A checkpoint reuses a recorded result when the row's *identity* matches: the function's
identity (:func:`identify`, computed once per map) plus a digest of the call's arguments,
bound to the function's signature (:class:`Binder`), so ``[3.0, 1.0]`` and ``{"x": 3.0,
"y": 1.0}`` for ``f(x, y)`` are the same call, and a changed default is a different one.

The rule every choice here follows: **an unstable encoding may only cause a miss, never a wrong
reuse.** Two calls get the same digest only if their encodings are equal, and an encoding is
a faithful serialisation of the values (pickle, which round-trips), never a lossy one (no
``repr``, ``str`` or ``hash()``) and never a reference whose meaning can change (``ObjectRef``
and actor ids, which Ray reuses across clusters). Unknown is a miss, never a match.

The function (:func:`identify`): its code as a normalised instruction stream, every wrapper
layer, bound instance, ``partial`` arguments, closure values, the code and plain constants it
reaches by name in the user's own modules; state in a canonical encoding (sets of ``str``
included), stable across processes. See :func:`identify` for what it covers and what not.

Arguments (:func:`row_keys`, :func:`value_key`):

- Plain data (``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``,
  ``list``, ``tuple``, ``dict``, ``set``) is pickled by the C pickler in *fast* mode (no memo:
  equal values shared or not encode alike). ``1``, ``1.0`` and ``True`` are different calls.
  A ``set`` of ``str`` in a row pickles in hash order: another process may miss (never match
  wrongly).
- Exact ``numpy.ndarray`` (not object dtype), ``memoryview``, ``bytearray`` and
  ``array.array`` are digested from their bytes, dtype (or format) and shape with SHA-256,
  without pickling (numpy is never imported here: an array exists only if the user imported
  numpy). Arrays equal in value but of another dtype are different calls.
- Functions passed as arguments are encoded by name and identity (defaults included); the
  user's classes (those of instances: dataclasses, NamedTuples, local classes) by name and
  identity, so an edited method or reordered fields is another call; enum members by class,
  member name and value (``auto()`` renumbering a member changes its key).
  Identities met in rows are computed once per key computation, not per row.
- Anything else goes through its own pickle (``__reduce_ex__``), recursively through these
  rules; what the standard pickler refuses goes through cloudpickle.
- What cannot be encoded at all (a lock, an open file, a generator, a cyclic structure, a
  Ray ``ObjectRef`` or actor handle) makes the row *undigestable*: :func:`row_keys` gives
  it a random key, so it is computed in every run and never reused.
"""

from __future__ import annotations

import array
import bisect
import builtins
import dis
import enum
import functools
import hashlib
import importlib
import importlib.util
import inspect
import io
import os
import pickle
import pickletools
import site
import sys
import sysconfig
import threading
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import (
    BuiltinFunctionType,
    BuiltinMethodType,
    CodeType,
    FunctionType,
    MethodDescriptorType,
    MethodType,
    MethodWrapperType,
    ModuleType,
    WrapperDescriptorType,
)
from typing import Any, NamedTuple

import cloudpickle

SCHEME = "tc-row-2"
"""Names the encoding below; a checkpoint keyed by another scheme reuses nothing."""
KEY_BYTES = 16
"""Row keys are the first 16 bytes of a SHA-256 (collisions: ~2**-64 at 2**32 rows)."""
_PROTOCOL = 5


class Undigestable(Exception):
    """A value has no encoding that is safe to compare."""


def _mark(*_: object) -> None:
    """Stands for a digested value in an encoding (pickled by reference, never called)."""


# -- functions ------------------------------------------------------------------------------


def _const(value: object) -> str:
    """A stable text of a code constant (frozenset members sorted: their order depends on
    hash randomisation, and ``x in {"a", "b"}`` compiles to a frozenset)."""
    if isinstance(value, frozenset):
        return "frozenset({" + ", ".join(sorted(_const(v) for v in value)) + "})"
    if isinstance(value, tuple):
        return "(" + ", ".join(_const(v) for v in value) + ",)"
    return repr(value)


# -- whose code: the user's own modules --------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _library_roots() -> tuple[str, ...]:
    """Directories holding code that is not the user's: the standard library, site-packages
    (the interpreter's, the venv's, the user's), and thread_chunks itself."""
    roots: set[str] = set()
    paths = sysconfig.get_paths()
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(name):
            roots.add(os.path.realpath(paths[name]))
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        for lib in ("lib", "lib64"):
            roots.add(os.path.realpath(os.path.join(prefix, lib, version)))
    try:
        roots.update(os.path.realpath(p) for p in site.getsitepackages())
        roots.add(os.path.realpath(site.getusersitepackages()))
    except AttributeError:  # pragma: no cover - a virtualenv's old site module
        pass
    roots.add(os.path.dirname(os.path.realpath(__file__)))  # thread_chunks: by name
    return tuple(sorted(roots))


@functools.lru_cache(maxsize=4096)
def _user_file(file: str) -> bool:
    real = os.path.realpath(file)
    if {"site-packages", "dist-packages"} & set(real.split(os.sep)):
        return False
    return not any(real == root or real.startswith(root + os.sep) for root in _library_roots())


def _user_namespace(name: object, file: object) -> bool:
    """Whether code whose globals are named ``name`` (loaded from ``file``) is the user's."""
    if name == "__main__":
        return True
    if isinstance(file, str) and file:
        return _user_file(file)
    module = sys.modules.get(name) if isinstance(name, str) else None
    spec = getattr(module, "__spec__", None)
    if module is not None and (name in sys.builtin_module_names
                               or getattr(spec, "origin", None) in ("built-in", "frozen")):
        return False
    if module is not None and getattr(module, "__file__", None):
        return _user_file(module.__file__)
    # exec'd code (its globals may have no __name__ at all): the user's, unless ours
    return not (isinstance(name, str) and name.startswith("thread_chunks"))


def _user_module(name: object) -> bool:
    module = sys.modules.get(name) if isinstance(name, str) else None
    return _user_namespace(name, getattr(module, "__file__", None))


def _user_class(cls: type) -> bool:
    return _user_module(getattr(cls, "__module__", None))


def _user_function(fn: FunctionType) -> bool:
    return _user_namespace(fn.__globals__.get("__name__"), fn.__globals__.get("__file__"))


def _user_import(name: str, globals_: dict[str, Any]) -> object:
    """The module a function imports by ``name``; one of the user's modules that is not
    imported yet is imported now (the function would import it when it runs), so that the
    code it holds is followed as if it had been imported at the top."""
    module = sys.modules.get(name)
    if module is not None or not name or name.startswith("."):
        return module if module is not None else _MISSING_NAME
    try:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not _user_file(spec.origin):
            return _MISSING_NAME
        return importlib.import_module(name)
    except Exception:  # what fails here fails in the call too; the name stays in the code
        return _MISSING_NAME


def _label(obj: object) -> str:
    """``module.qualname`` of a function or class (a function's own code names it: a
    ``functools.wraps`` wrapper copies the wrapped function's names)."""
    if isinstance(obj, FunctionType):
        module = obj.__globals__.get("__name__", obj.__module__)
        return f"{module}.{getattr(obj.__code__, 'co_qualname', obj.__qualname__)}"
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"


# -- code: a normalised instruction stream ------------------------------------------------------

_SKIPPED_OPS = frozenset({"CACHE", "EXTENDED_ARG", "NOP", "PUSH_NULL"})
"""Not behaviour: cache slots, argument prefixes, line-number placeholders, and the NULL a
call pushes (3.11 compiles ``math.sqrt(x)`` as ``PUSH_NULL ... LOAD_ATTR`` instead of
``LOAD_METHOD`` when the module also imports ``math`` at top level, for a local ``math`` too)."""
_RENAMED_OPS = {"LOAD_METHOD": "LOAD_ATTR"}
_JUMPS = frozenset(dis.hasjrel) | frozenset(dis.hasjabs) | frozenset(getattr(dis, "hasjump", ()))
_CONSTS = frozenset(dis.hasconst)
_NAMES = frozenset(dis.hasname) | frozenset(dis.haslocal) | frozenset(dis.hasfree)
_KEPT_FLAGS = (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS | inspect.CO_GENERATOR
               | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
               | inspect.CO_ITERABLE_COROUTINE)
_STORES = frozenset({"STORE_FAST", "STORE_NAME", "STORE_DEREF", "STORE_GLOBAL"})
_LOCAL_LOADS = frozenset({"LOAD_FAST", "LOAD_DEREF", "LOAD_CLASSDEREF", "LOAD_NAME",
                          "LOAD_FAST_CHECK", "LOAD_FAST_AND_CLEAR"})
_MISSING_NAME = object()


def _code_items(code: CodeType) -> Iterator[tuple[str, object, dis.Instruction]]:
    """``(operation, argument)`` per instruction, independent of line numbers, offsets,
    cache entries and the indices of names and constants: constants by value (code objects
    as themselves), jumps by instruction index, names by name."""
    instructions = [i for i in dis.get_instructions(code) if i.opname not in _SKIPPED_OPS]
    index = {i.offset: n for n, i in enumerate(instructions)}
    for ins in instructions:
        op = _RENAMED_OPS.get(ins.opname, ins.opname)
        arg: object
        if ins.opcode in _CONSTS and ins.arg is not None and ins.arg < len(code.co_consts):
            arg = code.co_consts[ins.arg]
        elif ins.opcode in _JUMPS:
            arg = ("to", index.get(ins.argval, ins.argval))
        elif ins.opcode in _NAMES:
            arg = ins.argval
        else:
            arg = ins.arg
        yield op, arg, ins


def _exception_items(code: CodeType, kept: list[int]) -> list[tuple[int, int, int, int, bool]]:
    """The exception table (3.11+: which instructions a ``try`` covers is not in the
    instructions themselves) as ``(start, end, target, depth, lasti)``, positions counted in
    the instructions :func:`_code_items` keeps (``kept``: their offsets, ascending), so that
    offsets, caches and line numbers do not count."""
    if not getattr(code, "co_exceptiontable", b""):
        return []
    return [(bisect.bisect_left(kept, e.start), bisect.bisect_left(kept, e.end),
             bisect.bisect_left(kept, e.target), e.depth, e.lasti)
            for e in getattr(dis.Bytecode(code), "exception_entries", ())]


# -- identities ----------------------------------------------------------------------------------

_IDENTITY_SCHEME = b"tc-identity-1\x00"


class Identity(NamedTuple):
    """What a map's results depend on, as far as the library can see (:func:`identify`)."""

    digest: bytes | None
    """32-byte SHA-256 over every part below; None when something the call depends on has no
    safe encoding (an ObjectRef, a lock, an unpicklable closure value...): then nothing may be
    reused for this function and every row is computed."""
    parts: tuple[tuple[str, str], ...]
    """``(what, hex digest)`` for every piece covered, in a stable order, so that two
    identities can say what changed: ``("function mod.f", ..)``, ``("helper mod.g", ..)``,
    ``("class mod.Model", ..)``, ``("constant mod.K", ..)``, ``("closure of mod.f", ..)``..."""
    unknown: str | None
    """Why ``digest`` is None (names the value), else None."""


class _Unknown(Exception):
    """Something the identity depends on has no safe encoding (raised inside an encoding)."""


class _UnknownRef(_Unknown):
    """An ``ObjectRef`` or actor handle: a value that may change, wherever it is found."""


class _Identifier:
    """One identity computation: the parts found so far, each object digested once (by id;
    the objects are kept alive meanwhile), cycles named instead of followed."""

    def __init__(self, binder_target: object) -> None:
        self.parts: list[tuple[str, str]] = []
        self.done: dict[int, str] = {}
        self.keep: list[object] = []
        self.unknown: str | None = None
        self.binder_target = binder_target
        self.read_paths = False
        self.constants: set[str] = set()
        self.reduced: dict[int, tuple[object, Any]] = {}
        self.named: dict[str, list[int]] = {}

    def name(self, obj: object, label: str) -> str:
        """``label``, or ``label #n`` for the n-th object met under that label: a token names
        one object (two closures of one factory, one alias for two modules' constants), so
        that ``[a, b, a]`` and ``[a, b, b]`` are told apart (numbered in the order met, which
        is the same in every process)."""
        ids = self.named.setdefault(label, [])
        if id(obj) not in ids:
            ids.append(id(obj))
            self.keep.append(obj)
        n = ids.index(id(obj))
        return label if n == 0 else f"{label} #{n + 1}"

    def fail(self, why: str) -> str:
        if self.unknown is None:
            self.unknown = why
        return "unknown"

    def part(self, what: str, digest: str) -> None:
        self.parts.append((what, digest))

    def _start(self, obj: object, token: str) -> str | None:
        """The token of ``obj`` if it is done or under way (a cycle), else None after marking
        it under way. Tokens name things (their digests are parts of their own), so a part
        changes only when its own piece does, and a cycle's token is the final one."""
        known = self.done.get(id(obj))
        if known is not None:
            return known
        self.keep.append(obj)
        self.done[id(obj)] = token
        return None

    # -- callables --

    def called(self, obj: object, role: str = "function") -> str:
        """The digest of something called: every layer of it, outermost first."""
        registry = _registry(obj)
        if registry is not None:
            return self.dispatcher(obj, registry)
        if isinstance(obj, FunctionType):
            return self.function(obj, role, walk=True)
        if isinstance(obj, MethodType):
            func = self.called(obj.__func__, "function")
            owner = obj.__self__
            if isinstance(owner, type):
                return f"{func} of {self.klass(owner)}"
            return f"{func} of {self.state_part(owner, 'bound instance')}"
        if type(obj) is functools.partial:  # a subclass of the user's: its class counts
            func = self.called(obj.func, role)
            return f"{func} with {self.state_part((obj.args, obj.keywords), 'partial arguments')}"
        if isinstance(obj, type):
            return self.klass(obj)
        if isinstance(obj, (BuiltinFunctionType, BuiltinMethodType, MethodWrapperType,
                            WrapperDescriptorType, MethodDescriptorType)):
            owner = getattr(obj, "__self__", None)
            name = f"builtin {_label(obj)}"
            if owner is None or isinstance(owner, ModuleType):
                return name
            return f"{name} of {self.state_part(owner, 'bound instance')}"
        cls = type(obj)
        wrapped = getattr(obj, "__wrapped__", None)
        if not _user_class(cls) and wrapped is not None:  # lru_cache, chunked: transparent
            return self._layer(obj, self.called(wrapped, role))
        # a callable object: its class's code and its own state
        return f"{self.klass(cls)} holding {self.state_part(obj, f'instance of {_label(cls)}')}"

    def state_part(self, value: object, what: str) -> str:
        """Record the digest of a value as the part ``what``; its token is that name."""
        self.part(what, self.state(value, what))
        return what

    def dispatcher(self, obj: object, registry: Mapping[Any, Any]) -> str:
        """A ``functools.singledispatch`` function: every registered overload."""
        label = self.name(obj, _label(obj))
        token = f"singledispatch {label}"
        if self._start(obj, token) is not None:
            return token
        entries = sorted((_label(cls), self.klass(cls), self.called(func, "overload"))
                         for cls, func in registry.items())
        self.part(token, hashlib.sha256(repr(entries).encode()).hexdigest())
        return token

    def function(self, fn: FunctionType, role: str, walk: bool = False,
                 own_code: bool = False, where: str | None = None) -> str:
        """A function's token, its digest a part. The user's functions: code (with what it
        reaches by name), defaults, closure, ``__wrapped__``. Others by name; ``walk``
        follows their closure and ``__wrapped__`` still (a library's decorator around the
        user's code)."""
        wrapped = getattr(fn, "__wrapped__", None)
        kind: type = type(fn)
        if kind is not FunctionType and wrapped is not None:  # a proxy (wrapt) passing for
            return self._layer(fn, self.called(wrapped, role))  # the function it wraps
        label = self.name(fn, where or _label(fn))  # a method by its class (dataclasses)
        user = own_code or _user_function(fn)
        token = label if user else f"{label} (by name)"
        known = self._start(fn, token)
        if known is not None:
            return known
        wrapped = getattr(fn, "__wrapped__", None)
        if not user:
            if walk and fn.__closure__:
                self.closure(fn, label)
            if wrapped is not None:
                self.called(wrapped, "function")
            return token
        if wrapped is not None and role == "function":
            role = "wrapper"
        digest = hashlib.sha256(label.encode() + b"\x00")
        modules: dict[str, object] = {}  # a module in the closure (the enclosing import)
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
            try:
                if isinstance(cell.cell_contents, ModuleType):
                    modules[name] = cell.cell_contents
            except ValueError:  # an empty cell
                pass
        digest.update(self.code(fn.__code__, fn.__globals__, modules).encode())
        if wrapped is not None:
            digest.update(f"wraps {self.called(wrapped, 'function')}".encode())
        self.part(f"{role} {label}", digest.hexdigest())
        if fn.__closure__:
            self.closure(fn, label)
        defaults = (fn.__defaults__, fn.__kwdefaults__)
        if defaults != (None, None):
            value = self.state(defaults, f"defaults of {label}")
            if fn is not self.binder_target:  # the Binder puts those in every row's key
                self.part(f"defaults of {label}", value)
        return token

    def closure(self, fn: FunctionType, label: str) -> None:
        values = []
        for cell in fn.__closure__ or ():
            try:
                values.append(cell.cell_contents)
            except ValueError:  # an empty cell (a name assigned later)
                values.append(_EMPTY_CELL)
        self.state_part(tuple(values), f"closure of {label}")

    def code(self, code: CodeType, globals_: dict[str, Any],
             modules: dict[str, object] | None = None) -> str:
        """The digest of a code object (nested code included) and of everything its global
        names lead to: each global name chain read (``g``, ``helpers.g``, ``from m import
        g``) with what it is now. ``modules``: the names bound to a module outside this
        code (by the enclosing function's imports: a comprehension or a lambda inside it
        reads them as free variables)."""
        digest = hashlib.sha256(repr((
            code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount,
            code.co_flags & _KEPT_FLAGS, code.co_varnames[:code.co_argcount
                                                          + code.co_kwonlyargcount],
            code.co_freevars, code.co_cellvars)).encode())
        kept: list[int] = []  # the offsets of the instructions digested
        chain: object = _MISSING_NAME  # what the instructions just before loaded
        path = ""
        imported = dict(modules or {})  # local names bound to a module by an import
        importing: object = _MISSING_NAME  # the module of an IMPORT_NAME, for IMPORT_FROM
        loaded: list[object] = [_MISSING_NAME, _MISSING_NAME]
        for op, arg, ins in _code_items(code):
            kept.append(ins.offset)
            if isinstance(arg, CodeType):
                text = f"{op} code {self.code(arg, globals_, dict(imported))}"
            elif ins.opcode in _CONSTS:
                text = f"{op} {_const(arg)}"
            else:
                text = f"{op} {arg!r}"
            digest.update(text.encode() + b"\n")
            name = arg if isinstance(arg, str) else ""
            found: object = _MISSING_NAME
            # what the two instructions before loaded (an import's level and names), if
            # constants (3.14 loads a small int, the level, by LOAD_SMALL_INT)
            level, names = loaded
            loaded = [loaded[1], arg if ins.opcode in _CONSTS or op == "LOAD_SMALL_INT"
                      else _MISSING_NAME]
            if op == "IMPORT_NAME":
                if isinstance(level, int) and level > 0:  # from .helpers import g
                    try:
                        name = importlib.util.resolve_name(
                            "." * level + name, globals_.get("__package__") or "")
                    except (ImportError, ValueError, TypeError):
                        name = "."  # what fails here fails in the call too
                module = _user_import(name, globals_)
                path = name.split(".")[0]
                chain = sys.modules.get(path, _MISSING_NAME)
                # without names (import a.b as h), what the import gives is the top package
                importing = module if names or level else chain
                continue
            if op == "IMPORT_FROM":
                if isinstance(importing, ModuleType):
                    path = f"{importing.__name__}.{name}"
                    found = chain = getattr(importing, name, _MISSING_NAME)
                    if found is _MISSING_NAME:  # a submodule not imported yet
                        found = chain = _user_import(path, globals_)
                    if found is not _MISSING_NAME:
                        reached = self.reference(found, path, globals_)
                        digest.update(f"= {path}: {reached}\n".encode())
                continue
            if op in _STORES:
                if isinstance(chain, ModuleType):
                    imported[name] = chain
                chain = _MISSING_NAME
                continue
            if op == "POP_TOP":
                importing = _MISSING_NAME
            if op == "LOAD_GLOBAL" or (op == "LOAD_NAME" and name not in imported):
                path = name
                found = globals_.get(name, _MISSING_NAME)
                if found is _MISSING_NAME:
                    space = globals_.get("__builtins__", builtins)
                    space = space if isinstance(space, dict) else vars(space)
                    digest.update(f"= {'builtin' if name in space else 'missing'}\n".encode())
            elif op in _LOCAL_LOADS and name in imported:
                chain, path = imported[name], name
                continue
            elif op == "LOAD_ATTR" and isinstance(chain, ModuleType):
                path = f"{path}.{name}"
                found = getattr(chain, name, _MISSING_NAME)
            chain = found
            if found is not _MISSING_NAME:
                digest.update(f"= {path}: {self.reference(found, path, globals_)}\n".encode())
        digest.update(f"exceptions {_exception_items(code, kept)!r}\n".encode())
        return digest.hexdigest()

    def reference(self, value: object, path: str, globals_: dict[str, Any]) -> str:
        """What a global name chain read by the user's code is (its digest a part)."""
        if isinstance(value, ModuleType):
            return f"module {value.__name__}"
        if isinstance(value, FunctionType):
            if _user_function(value):
                return self.function(value, "helper")
            return self.library(value)
        if isinstance(value, type):
            return self.klass(value)
        if isinstance(value, enum.Enum):
            return f"{self.klass(type(value))}.{value._name_}"
        module = globals_.get("__name__", "?")
        label = f"{module}.{path}"
        if _plain(value) or _is_array(value):
            token = self.name(value, f"constant {label}")
            if token not in self.constants:
                self.constants.add(token)
                self.state_part(value, token)
            return token
        refs = _refs()
        if refs and isinstance(value, refs):
            return self.fail(f"{label} read by the function is a {type(value).__name__}")
        cls = type(value)
        if _user_class(cls):  # an object of the user's, kept in a module
            token = self.name(value, f"object {label}")
            if self._start(value, token) is None:
                self.state_part(value, token)
            return token
        if callable(value):
            seen: Any = value  # (not narrowed by callable())
            owner = getattr(seen, "__self__", None)
            if isinstance(seen, _BUILTINS) and (type(owner) in _DATA or _is_array(owner)):
                return self.called(seen)  # TABLE.get, ", ".join: the method of that data
            if (_bound_elsewhere(seen) or isinstance(seen, _BUILTINS)
                    or getattr(seen, "__wrapped__", None) is not None):
                return self.library(seen)  # by name (random.random: a generator's state)
            if isinstance(seen, (functools.partial, MethodType)):
                return self.called(seen)  # its function (followed) and arguments or owner
            # another callable (a poly1d, an itemgetter, np.vectorize): by its encoding
        # another library's object (a compiled regex, a logger...)
        token = self.name(value, f"value {label}")
        if token in self.constants:
            return token
        try:
            data = self.encode(value)
        except _UnknownRef as exc:
            return self.fail(f"{label} read by the function holds {exc}")
        except _Unknown:  # no faithful encoding (a lock, a session): named, not seen
            return f"a {_label(cls)} (by name)"
        self.constants.add(token)
        self.part(token, hashlib.sha256(data).hexdigest())
        return token

    def library(self, value: object) -> str:
        """A library's callable read by name: by name, unless it wraps one of the user's
        functions (a library's decorator on a helper, ``functools.cache``): then that one."""
        registry = _registry(value)
        if registry is not None:  # a singledispatch helper: its overloads
            return self.dispatcher(value, registry)
        inner: object = value
        for _ in range(100):
            outer, inner = inner, getattr(inner, "__wrapped__", None)
            if inner is None:
                break
            if isinstance(inner, FunctionType) and _user_function(inner):
                around = self._layer(outer, self.function(inner, 'helper'))
                return f"{_label(value)} (by name) around {around}"
        return f"{_label(value)} (by name)"

    def _layer(self, wrapper: object, inner: str) -> str:
        """``inner`` (what ``wrapper`` wraps), and the code of a ``wrapt`` decorator, which a
        ``wrapt`` proxy holds beside ``__wrapped__`` (``@wrapt.decorator`` around the user's
        code: its closure says what it does)."""
        try:
            layer = object.__getattribute__(wrapper, "_self_wrapper")
        except AttributeError:
            return inner
        return f"{self.called(layer, 'wrapper')} around {inner}"

    # -- classes --

    def klass(self, cls: type) -> str:
        """A class's token, its digest a part: for each of the user's classes in its MRO,
        every attribute (methods by code, plain data by value, nested classes); other bases
        by name."""
        if not _user_class(cls):
            return f"{_label(cls)} (by name)"
        label = self.name(cls, _label(cls))
        token = f"class {label}"
        if self._start(cls, token) is not None:
            return token
        digest = hashlib.sha256(label.encode() + b"\x00")
        for base in cls.__mro__:
            if base is object:
                continue
            if not _user_class(base):
                digest.update(f"base {_label(base)}\n".encode())
                continue
            digest.update(f"class {_label(base)}\n".encode())
            for name, value in sorted(vars(base).items()):
                if name in _SKIPPED_ATTRS:
                    continue
                where = f"{_label(base)}.{name}"
                digest.update(f"{name} = {self.attribute(value, where)}\n".encode())
        meta = type(cls)
        if meta is not type:  # a metaclass's __call__ and methods run for the class
            digest.update(f"metaclass {self.klass(meta)}\n".encode())
        self.part(token, digest.hexdigest())
        return token

    def attribute(self, value: object, where: str) -> str:
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if callable(value) and _bound_elsewhere(value):
            return self.library(value)  # np.random.normal: a generator's state, named
        if isinstance(value, functools.singledispatchmethod):  # overloads named "_" (the
            value = value.dispatcher  # usual way) are not attributes of the class: its own
        registry = _registry(value)
        if registry is not None:
            return self.dispatcher(value, registry)
        if isinstance(value, FunctionType):  # the class's own (or generated: dataclasses)
            own = _user_function(value) or not value.__globals__.get("__file__")
            return self.function(value, "method", own_code=own, where=where)
        if isinstance(value, property):
            return repr([self.attribute(f, where) for f in (value.fget, value.fset, value.fdel)])
        if isinstance(value, type):
            return self.klass(value)
        if isinstance(value, enum.Enum):
            return f"member {value._name_} {self.state(value._value_, where)}"
        if _plain(value):
            return self.state(value, where)
        if isinstance(value, (functools.partial, MethodType)):
            return self.called(value, "method")
        if isinstance(value, functools.partialmethod):
            return (f"partialmethod of {self.attribute(value.func, where)} with "
                    f"{self.state((value.args, value.keywords), where)}")
        func = getattr(value, "func", None)  # functools.cached_property and the like
        if isinstance(func, FunctionType):
            return f"{_label(type(value))} of {self.attribute(func, where)}"
        if getattr(value, "__wrapped__", None) is not None:  # a method under lru_cache
            return self.called(value, "method")
        try:  # an array, a NamedTuple's field, a builtin, a callable object: by encoding
            return hashlib.sha256(self.encode(value)).hexdigest()
        except _UnknownRef as exc:
            return self.fail(f"{where} holds {exc}")
        except _Unknown:
            return f"a {_label(type(value))}"

    # -- values --

    def state(self, value: object, what: str) -> str:
        """The hex digest of a value's faithful encoding (functions and the user's classes
        by digest, sets canonical), or "unknown" after recording why."""
        try:
            return hashlib.sha256(self.encode(value)).hexdigest()
        except _Unknown as exc:
            return self.fail(f"{what} holds {exc}")

    def encode(self, value: object) -> bytes:
        data = self._dump(_StateEncoder, value)
        if not _has_set(data):
            return b"C" + data
        return b"P" + self._dump(_CanonicalEncoder, value)  # a set may be inside: canonical

    def _dump(self, encoder: type[_StateEncoder] | type[_CanonicalEncoder], value: object
              ) -> bytes:
        """``value`` pickled by ``encoder``; _Unknown when it has no faithful encoding."""
        buffer = io.BytesIO()
        try:
            encoder(buffer, self).dump(value)
        except _Unknown:
            raise
        except RecursionError:
            raise _Unknown("a cyclic structure") from None
        except Exception as exc:
            raise _Unknown(f"{type(exc).__name__}: {exc}") from None
        return buffer.getvalue()

    def reduce(self, obj: object) -> Any:
        """The reduction of ``obj`` inside an identity's state, or NotImplemented."""
        cls = type(obj)
        if cls is FunctionType:
            if obj is _mark:
                return NotImplemented
            return _mark, ("function", _label(obj), self.called(obj))
        if isinstance(obj, type):
            if _user_class(obj):
                return _mark, ("class", _label(obj), self.klass(obj))
            return NotImplemented
        if isinstance(obj, enum.Enum):
            return _mark, ("enum", cls, obj._name_, obj._value_)
        if isinstance(obj, ModuleType):
            return _mark, ("module", obj.__name__)
        if cls is MethodType or cls is functools.partial:
            return _mark, (cls.__name__, self.called(obj))
        if self.read_paths and isinstance(obj, os.PathLike):
            return _mark, ("path", os.fspath(obj), _path_digest(os.fspath(obj)))
        if obj is _EMPTY_CELL:
            return _mark, ("empty cell",)
        known = self.reduced.get(id(obj))
        if known is not None:  # an array met again (the slow pass after a set): hashed once
            return known[1]
        try:
            reduced = _override(obj)
        except Undigestable as exc:
            refs = _refs()
            raise (_UnknownRef if refs and isinstance(obj, refs) else _Unknown)(str(exc)) from None
        if reduced is not NotImplemented:
            self.reduced[id(obj)] = (obj, reduced)
        return reduced


_BUILTINS = (BuiltinFunctionType, BuiltinMethodType, MethodWrapperType, WrapperDescriptorType,
             MethodDescriptorType)

_SKIPPED_ATTRS = frozenset({
    "__module__", "__qualname__", "__doc__", "__dict__", "__weakref__", "__annotations__",
    "__firstlineno__", "__static_attributes__", "__dataclass_fields__",
    "__dataclass_params__", "_abc_impl", "__orig_bases__", "__parameters__", "__slotnames__",
    "_member_map_", "_value2member_map_", "_unhashable_values_", "__type_params__",
})
"""Class attributes that say nothing about behaviour beyond what the others say (the
dataclass's fields are in its generated ``__init__``, an enum's members are attributes)."""

_EMPTY_CELL = object()


class _StateEncoder(pickle.Pickler):
    """The C pickler, fast mode, with an identity's reductions."""

    def __init__(self, file: io.BytesIO, owner: _Identifier) -> None:
        super().__init__(file, _PROTOCOL)
        self.fast = True
        self.owner = owner

    def reducer_override(self, obj: object) -> Any:
        return self.owner.reduce(obj)


class _CanonicalEncoder(pickle._Pickler):
    """The Python pickler (it asks ``reducer_override`` about every value, sets included):
    a set's members are encoded one by one and sorted, so hash randomisation cannot change
    the encoding."""

    def __init__(self, file: io.BytesIO, owner: _Identifier) -> None:
        super().__init__(file, _PROTOCOL)
        self.fast = True
        self.owner = owner

    def reducer_override(self, obj: object) -> Any:
        cls = type(obj)
        if cls is set or cls is frozenset:
            members = sorted(self.owner.encode(v) for v in obj)  # type: ignore[attr-defined]
            return _mark, (cls.__name__, tuple(members))
        return self.owner.reduce(obj)


def _bound_elsewhere(func: object) -> bool:
    """Whether ``func`` is a method bound to an object that is neither data, nor the user's,
    nor a module (``random.random``, ``np.random.normal``: a generator whose state changes
    with every draw, named rather than digested, or every run would miss)."""
    owner = getattr(func, "__self__", None)
    if owner is None or isinstance(owner, ModuleType) or type(owner) in _DATA:
        return False
    return not (_is_array(owner) or _user_class(owner if isinstance(owner, type)
                                                 else type(owner)))


def _registry(obj: object) -> Mapping[Any, Any] | None:
    """The overloads of a ``functools.singledispatch`` function, by class (functools' own
    wrapper only: an object of the user's with a ``registry`` and a ``dispatch`` method is an
    object like any other)."""
    registry = getattr(obj, "registry", None)
    if (isinstance(obj, FunctionType) and isinstance(registry, Mapping)
            and callable(getattr(obj, "dispatch", None)) and not _user_function(obj)):
        return registry
    return None


def _has_set(data: bytes) -> bool:
    """Whether a pickle holds a set or frozenset (EMPTY_SET, FROZENSET opcodes)."""
    if b"\x8f" not in data and b"\x91" not in data:
        return False
    return any(op.name in ("EMPTY_SET", "FROZENSET") for op, _, _ in pickletools.genops(data))


def _plain(value: object, depth: int = 0) -> bool:
    """Plain data: numbers, str, bytes, None, enums, and the builtin containers of those."""
    cls = type(value)
    if cls in _ATOMS or isinstance(value, enum.Enum):
        return True
    if depth > 50:
        return False
    if cls in (tuple, list, set, frozenset):
        return all(_plain(v, depth + 1) for v in value)  # type: ignore[attr-defined]
    if cls is dict:
        return all(_plain(k, depth + 1) and _plain(v, depth + 1)
                   for k, v in value.items())  # type: ignore[attr-defined]
    return False


_ATOMS = frozenset({type(None), bool, int, float, complex, str, bytes})
_DATA = _ATOMS | {tuple, list, set, frozenset, dict, bytearray}


def _is_array(value: object) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and type(value) is numpy.ndarray


def _path_digest(path: str) -> str:
    """The bytes of a file, or the names and bytes of a directory's files (recursively)."""
    digest = hashlib.sha256()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                digest.update(os.path.relpath(full, path).encode() + b"\x00")
                digest.update(_path_digest(full).encode())
        return "dir " + digest.hexdigest()
    try:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return "missing"
    return "file " + digest.hexdigest()


def _binder_target(func: object) -> object:
    """The function whose defaults :class:`Binder` binds into every row's key."""
    seen = 0
    while seen < 100:
        seen += 1
        if isinstance(func, MethodType):
            func = func.__func__
        elif isinstance(func, functools.partial):
            func = func.func
        elif isinstance(func, FunctionType):
            return inspect.unwrap(func) if not hasattr(func, "__signature__") else None
        elif getattr(func, "__wrapped__", None) is not None and not _user_class(type(func)):
            func = func.__wrapped__  # type: ignore[attr-defined]
        else:
            return None
    return None


def _actor_class(actor_cls: object) -> type | None:
    """The plain class of an ``actor_cls`` (perhaps decorated with ``ray.remote``)."""
    meta = getattr(actor_cls, "__ray_metadata__", None)
    if meta is not None:
        actor_cls = getattr(meta, "modified_class", actor_cls)
        actor_cls = getattr(actor_cls, "__ray_actor_class__", actor_cls)
    return actor_cls if isinstance(actor_cls, type) else None


def identify(func: object, *, actor_cls: object = None, depends_on: object = None) -> Identity:
    """The identity of what ``func`` computes: computed once per map, not per row.

    What it covers:

    - the function's code as a normalised instruction stream (constants by value, names by
      name; no line numbers, offsets or cache entries: docstrings, comments, moving code,
      unrelated code and top-level imports keep it), its defaults, the values its closure
      holds (recursively, sets in a canonical order), ``__wrapped__``;
    - every layer of what is called: a decorator's wrapper, a bound method's function and
      instance (or class, for a classmethod), a ``functools.partial``'s function and
      arguments, every overload of a ``functools.singledispatch`` function, a callable
      object's class and state, a class used as the function;
    - what that code reaches by name in the user's own modules, transitively: functions,
      classes (every method along the MRO, class attributes of plain data and others by
      their encoding when they have one), module-level
      constants of plain data (numbers, str, bytes, None, enums, builtin containers of
      those) and numpy arrays, objects of the user's classes kept in a module, other
      objects by their faithful encoding when they have one (a compiled regex, a logger by
      name), else by name only (a lock, a network session: not seen). The user's
      modules are ``__main__`` and those whose files are outside the standard library and
      site-packages (an editable install of the user's own package counts as the user's).
      Installed packages (and thread_chunks itself) are not followed and not versioned: what
      the code reads from them is named, not digested;
    - ``actor_cls`` (its class, as above; the default contributes nothing);
    - ``depends_on``: any value, encoded like closure values; an :class:`os.PathLike` in it
      stands for the bytes of that file (a directory: its files' names and bytes).

    The digest is None (nothing may be reused) when something the call depends on has no safe
    encoding: an ``ObjectRef`` or actor handle, a lock, an open file, a generator, a cyclic
    structure, in the function's state (closure, partial arguments, defaults, bound instance,
    object attributes) or read from a module.
    """
    return _identify(func, actor_cls, depends_on, _binder_target(func))


def _identify(func: object, actor_cls: object, depends_on: object,
              binder_target: object) -> Identity:
    """:func:`identify`, the defaults of ``binder_target`` left to the row keys."""
    ident = _Identifier(binder_target)
    try:
        ident.part("call", _hex(ident.called(func)))
        plain = _actor_class(actor_cls) if actor_cls is not None else None
        if actor_cls is not None and plain is None:
            ident.fail(f"actor_cls {actor_cls!r} is not a class")
        elif plain is not None and _user_class(plain):
            ident.part(f"actor_cls {_label(plain)}", _hex(ident.klass(plain)))
        if depends_on is not None:
            ident.read_paths = True
            ident.part("depends_on", ident.state(depends_on, "depends_on"))
    except RecursionError:
        ident.fail("code or state nested too deep to follow")
    except Exception as exc:  # an object that breaks while looked at: compute again
        ident.fail(f"{type(exc).__name__} while identifying: {exc}")
    parts = tuple(ident.parts)
    if ident.unknown is not None:
        return Identity(None, parts, ident.unknown)
    digest = hashlib.sha256(_IDENTITY_SCHEME)
    for what, value in parts:
        digest.update(what.encode() + b"\x00" + value.encode() + b"\x00")
    return Identity(digest.digest(), parts, None)


def _hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def function_digest(func: object) -> str:
    """The hex digest of :func:`identify` (``func`` alone); when the identity is unknown, a
    digest that matches no other (unknown means compute again, never "matches anything")."""
    identity = identify(func)
    if identity.digest is None:
        return "unknown " + uuid.uuid4().hex
    return identity.digest.hex()


# -- values ---------------------------------------------------------------------------------


def _buffer_digest(view: memoryview) -> bytes:
    if view.c_contiguous and view.ndim:
        return hashlib.sha256(view.cast("B")).digest()
    return hashlib.sha256(view.tobytes()).digest()


def _refs() -> tuple[type, ...]:
    try:
        import ray
        from ray.actor import ActorHandle
    except ImportError:  # pragma: no cover - ray is a dependency
        return ()
    return (ray.ObjectRef, ActorHandle)


_REFS: tuple[type, ...] | None = None


def _override(obj: object) -> object:
    """Our reduction of ``obj``, or NotImplemented for the pickler's own."""
    global _REFS
    if obj is _mark:  # in every reduction below: first, the cheapest answer
        return NotImplemented
    cls = type(obj)
    if isinstance(obj, (type, enum.Enum)) or cls is FunctionType:
        reduced = _memo_reduce(obj)
        if isinstance(reduced, Undigestable):
            raise reduced
        return reduced
    numpy = sys.modules.get("numpy")
    if numpy is not None and cls is numpy.ndarray and not obj.dtype.hasobject:  # type: ignore[attr-defined]
        arr: Any = obj
        if not arr.flags.c_contiguous:
            arr = numpy.ascontiguousarray(arr)
        flat = arr.reshape(-1).view(numpy.uint8)
        return _mark, ("ndarray", arr.dtype, arr.shape, hashlib.sha256(flat.data).digest())
    if cls is memoryview or cls is bytearray or cls is pickle.PickleBuffer:
        view = memoryview(obj)  # type: ignore[arg-type]
        return _mark, ("buffer", cls.__name__, view.format, view.shape, _buffer_digest(view))
    if cls is array.array:
        view = memoryview(obj)  # type: ignore[arg-type]
        return _mark, ("array", view.format, len(view), _buffer_digest(view))
    if _REFS is None:
        _REFS = _refs()
    if isinstance(obj, _REFS):
        raise Undigestable(f"an {cls.__name__} (it stands for a value that may change)")
    return NotImplemented


_memo = threading.local()


@contextmanager
def _memo_scope() -> Iterator[None]:
    """Identities of the classes and functions met in rows, computed once per key
    computation (:func:`row_keys`, :func:`value_key`), not once per row."""
    if getattr(_memo, "known", None) is not None:
        yield
        return
    _memo.known = {}
    try:
        yield
    finally:
        _memo.known = None


def _memo_reduce(obj: object) -> object:
    """:func:`_reduce_code`, once per object in the current scope (:func:`_memo_scope`)."""
    known: dict[int, tuple[object, object]] | None = getattr(_memo, "known", None)
    found = known.get(id(obj)) if known is not None else None
    if found is None:
        found = (obj, _reduce_code(obj))
        if known is not None:
            known[id(obj)] = found  # obj kept alive meanwhile: its id stays its own
    return found[1]


def _reduce_code(obj: object) -> object:
    """The reduction of a function or class inside a row: by name and identity (one of the
    user's classes; other classes by name: NotImplemented), or the Undigestable to raise.
    An enum member: by class (as a class), member name and value (``auto()`` renumbers)."""
    if isinstance(obj, enum.Enum):
        cls = type(obj)
        if not _user_class(cls):
            return _mark, ("enum", cls.__module__, cls.__qualname__, obj._name_, obj._value_)
        found = _memo_reduce(cls)
        if isinstance(found, Undigestable):
            return found
        return _mark, ("enum", found, obj._name_, obj._value_)
    if isinstance(obj, type) and not _user_class(obj):
        return NotImplemented
    identity = _identify(obj, None, None, None)  # an argument: no Binder binds its defaults
    if identity.digest is None:
        return Undigestable(f"{_label(obj)}: {identity.unknown}")
    return _mark, (identity.digest,)  # its parts name it (module and qualified name)


class _Encoder(pickle.Pickler):
    def reducer_override(self, obj: object) -> Any:
        return _override(obj)


class _CloudEncoder(cloudpickle.Pickler):
    def reducer_override(self, obj: object) -> Any:
        ours = _override(obj)
        return super().reducer_override(obj) if ours is NotImplemented else ours


_local = threading.local()


def _new(encoder: type[pickle.Pickler]) -> tuple[io.BytesIO, pickle.Pickler]:
    buffer = io.BytesIO()
    pickler = encoder(buffer, _PROTOCOL)
    pickler.fast = True  # no memo: equal values encode alike whether shared or not
    return buffer, pickler


def _dump(encoder: type[pickle.Pickler], value: object) -> bytes:
    """Pickle ``value`` with ``encoder``. The common encoder is made once per thread and
    reused (a fresh one when it is busy: digesting a function's closure happens inside a
    dump; and after a failed dump, which may leave it in any state)."""
    spare = getattr(_local, "spare", None) if encoder is _Encoder else None
    _local.spare = None
    buffer, pickler = spare or _new(encoder)
    buffer.seek(0)
    buffer.truncate()
    pickler.dump(value)
    if encoder is _Encoder:
        _local.spare = (buffer, pickler)
    return buffer.getvalue()


def _encode(value: object) -> bytes:
    """The deterministic encoding of ``value``; Undigestable when there is none."""
    try:
        return _dump(_Encoder, value)
    except Undigestable:
        raise
    except Exception:
        pass  # what the standard pickler refuses: lambdas, local classes, ...
    try:
        return _dump(_CloudEncoder, value)
    except Undigestable:
        raise
    except Exception as exc:  # unpicklable (a lock, a file), cyclic, ...
        raise Undigestable(f"{type(exc).__name__}: {exc}") from None


def value_key(value: object) -> bytes | None:
    """The 16-byte key of ``value``, or None when it is undigestable."""
    try:
        with _memo_scope():
            return hashlib.sha256(_encode(value)).digest()[:KEY_BYTES]
    except Undigestable:
        return None


# -- calls ----------------------------------------------------------------------------------

_MISSING = object()
_SIMPLE = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
           inspect.Parameter.KEYWORD_ONLY)
_POSITIONAL = _SIMPLE[:2]


class Binder:
    """Binds a row's arguments to a function's signature: the values of its parameters in
    order, defaults applied.

    The common signature (no ``*args``/``**kwargs``) is bound by a few list operations (a
    100,000-row list binds in well under a second); others go through
    :meth:`inspect.Signature.bind`. A function without a signature (some builtins), or a row
    that does not fit it (the call will raise), is keyed by its arguments as given.
    """

    def __init__(self, func: Callable[..., Any] | None) -> None:
        self.signature: inspect.Signature | None = None
        try:
            if func is not None:
                self.signature = inspect.signature(func)
        except (TypeError, ValueError):
            pass
        params = list(self.signature.parameters.values()) if self.signature else []
        self.simple = all(p.kind in _SIMPLE for p in params)
        self.positional = sum(1 for p in params if p.kind in _POSITIONAL)
        self.index = {p.name: i for i, p in enumerate(params)
                      if p.kind != inspect.Parameter.POSITIONAL_ONLY}
        self.defaults = [_MISSING if p.default is inspect.Parameter.empty else p.default
                         for p in params]
        self.required = [i for i, d in enumerate(self.defaults) if d is _MISSING]

    def bind(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """``("bound", values)`` or, when the row does not fit, ``("as given", args, kwargs)``."""
        if self.signature is not None:
            if self.simple:
                given = len(args)
                if not kwargs and given == len(self.defaults) and given <= self.positional:
                    return ("bound", tuple(args))  # every parameter given by position
                if given <= self.positional:
                    values = self.defaults.copy()
                    values[:given] = args
                    for name, value in kwargs.items():
                        i = self.index.get(name)
                        if i is None or i < given:
                            break
                        values[i] = value
                    else:
                        if all(values[i] is not _MISSING for i in self.required if i >= given):
                            return ("bound", tuple(values))
            else:
                try:
                    bound = self.signature.bind(*args, **kwargs)
                except TypeError:
                    pass
                else:
                    bound.apply_defaults()
                    return ("bound", tuple(bound.arguments.values()))
        return ("as given", tuple(args), kwargs)

    def key(self, args: Sequence[Any], kwargs: dict[str, Any]) -> bytes | None:
        """The row's key (its bound arguments' digest), or None when undigestable."""
        return value_key(self.bind(args, kwargs))


class _BuiltinOnly(pickle.Pickler):
    """The standard pickler for builtin data only (numbers, str, bytes, None and the builtin
    containers, which the C pickler writes itself): anything it would reduce stops it."""

    def reducer_override(self, obj: object) -> Any:
        raise Undigestable(f"{type(obj).__name__} is not builtin data")


class _Hashing:
    """A file that only hashes what is written to it (a pickle is never held whole)."""

    def __init__(self, digest: hashlib._Hash) -> None:
        self.write = digest.update


def list_key(binder: Binder, rows: Sequence[Any]) -> bytes | None:
    """A digest of a whole list of rows as given, and of all that binding them to the
    function depends on (its parameters' names and kinds, its defaults), when the rows are
    builtin data only; None otherwise (or when a default cannot be digested).

    Equal pickles of builtin data are equal data, so two lists with the same digest have the
    same row keys (:func:`row_keys`) for functions with the same body: a checkpoint whose
    latest run had it holds them already. One C pass over the list, hashed as it is pickled,
    instead of a key a row."""
    digest = hashlib.sha256()
    pickler = _BuiltinOnly(_Hashing(digest), _PROTOCOL)
    pickler.fast = True  # no memo: a value shared or copied pickles alike
    try:
        pickler.dump(rows)
    except Exception:  # not builtin data, or recursive
        return None
    params = None if binder.signature is None else [
        (p.name, int(p.kind)) for p in binder.signature.parameters.values()]
    defaults = [None if d is _MISSING else (d,) for d in binder.defaults]
    try:
        digest.update(_encode((SCHEME, params, defaults)))
    except Undigestable:
        return None
    return digest.digest()


def position_key(list_digest: bytes, row: int) -> bytes:
    """The key of an undigestable row: its position in this very list.

    ``list_digest`` covers the list's length and every digestable row's key in order (the
    undigestable ones as a placeholder), so such a row is reused only when the list is the
    same as far as can be seen: same length, same rows at the same places.
    """
    return hashlib.sha256(b"position\x00" + list_digest + row.to_bytes(8, "little")
                          ).digest()[:KEY_BYTES]


_FLUSH_BYTES = 4 << 20
"""Row keys are hashed from one buffer of encodings, emptied when it holds this much."""


class _CountingEncoder(_Encoder):
    """The common encoder, counting the objects it reduces itself: everything but the
    builtin types the C pickler writes on its own (numbers, str, bytes, bytearray, None and
    the builtin containers)."""

    reduced = 0

    def reducer_override(self, obj: object) -> Any:
        self.reduced += 1
        return _override(obj)


class RowKeys(NamedTuple):
    """The keys of a list of rows (:func:`row_keys`)."""

    keys: list[bytes]
    """Every row's key, in order."""
    undigestable: list[int]
    """The rows that could not be encoded: each has a random key, so it is computed in every
    run and its result never reused (unknown means a miss)."""
    opaque: list[int]
    """The rows holding something other than builtin data, or whose encoding is at least
    ``large`` bytes: the only rows that can hold a large argument (an array, a buffer)."""


def row_keys(binder: Binder, rows: Collection[tuple[Sequence[Any], dict[str, Any] | None]],
             large: int | None = None) -> RowKeys:
    """Every row's key, in bulk: one encoder writes every row's encoding into one buffer,
    hashed a few MB at a time, and rows that give every parameter by position skip the
    binder. The keys are those of :meth:`Binder.key`, row by row."""
    with _memo_scope():
        return _row_keys(binder, rows, large)


def _row_keys(binder: Binder, rows: Collection[tuple[Sequence[Any], dict[str, Any] | None]],
              large: int | None) -> RowKeys:
    keys: list[bytes | None] = [None] * len(rows)
    opaque: list[int] = []
    every = len(binder.defaults) if (binder.signature is not None and binder.simple and
                                     len(binder.defaults) <= binder.positional) else -1
    buffer = io.BytesIO()
    pickler = _new_counting(buffer)
    pending: list[tuple[int, int]] = []  # (row, end of its encoding in buffer)
    sha256, large = hashlib.sha256, large or sys.maxsize

    def flush() -> None:
        data = memoryview(buffer.getvalue())
        start = 0
        for row, end in pending:
            keys[row] = sha256(data[start:end]).digest()[:KEY_BYTES]
            start = end
        pending.clear()
        buffer.seek(0)
        buffer.truncate()

    start = 0  # where the next encoding begins in buffer
    for row, (args, kwargs) in enumerate(rows):
        bound = (("bound", tuple(args)) if not kwargs and len(args) == every
                 else binder.bind(args, kwargs or {}))
        reduced = pickler.reduced
        try:
            pickler.dump(bound)
        except Exception:  # what the fast path cannot say: the one-row way, from scratch
            buffer.seek(start)
            buffer.truncate()
            pickler = _new_counting(buffer)
            keys[row] = value_key(bound)
            opaque.append(row)
            continue
        end = buffer.tell()
        if pickler.reduced != reduced or end - start >= large:
            opaque.append(row)
        pending.append((row, end))
        start = end
        if end >= _FLUSH_BYTES:
            flush()
            start = 0
    flush()
    missing = [i for i, key in enumerate(keys) if key is None]
    for i in missing:  # unknown means a miss: a key no other row, list or run can have
        keys[i] = os.urandom(KEY_BYTES)
    return RowKeys([k for k in keys if k is not None], missing, opaque)


def _new_counting(buffer: io.BytesIO) -> _CountingEncoder:
    pickler = _CountingEncoder(buffer, _PROTOCOL)
    pickler.fast = True  # no memo, as in _new
    return pickler
