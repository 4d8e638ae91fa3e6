"""What makes two calls the same call: digests of functions and of arguments.

A checkpoint reuses a recorded result when the row's *identity* matches: the function's
identity (its name and :func:`function_digest`) plus a digest of the call's arguments, bound to
the function's signature (:class:`Binder`), so ``[3.0, 1.0]`` and ``{"x": 3.0, "y": 1.0}`` for
``f(x, y)`` are the same call, and a changed default is a different one.

The rule every choice here follows: **an unstable encoding may only cause a miss, never a wrong
reuse.** Two calls get the same digest only if their encodings are equal, and an encoding is
a faithful serialisation of the values (pickle, which round-trips), never a lossy one (no
``repr``, ``str`` or ``hash()``) and never a reference whose meaning can change (``ObjectRef``
and actor ids, which Ray reuses across clusters). Where an encoding differs between processes
(a ``set`` of ``str`` under hash randomisation, an object whose pickle holds an address) the
row is computed again.

- Plain data (``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``,
  ``list``, ``tuple``, ``dict``, ``set``) is pickled by the C pickler in *fast* mode (no memo:
  equal values shared or not encode alike). ``1``, ``1.0`` and ``True`` are different calls.
- Exact ``numpy.ndarray`` (not object dtype), ``memoryview``, ``bytearray`` and
  ``array.array`` are digested from their bytes, dtype (or format) and shape with SHA-256,
  without pickling (numpy is never imported here: an array exists only if the user imported
  numpy). Arrays equal in value but of another dtype are different calls.
- Functions passed as arguments are encoded by module, qualified name and code digest.
- Anything else goes through its own pickle (``__reduce_ex__``), recursively through these
  rules; what the standard pickler refuses (lambdas, local classes) goes through cloudpickle.
- What cannot be encoded at all (a lock, an open file, a generator, a Ray ``ObjectRef`` or
  actor handle) makes the row *undigestable*: it still runs, and its result is recorded by
  position, reused only for the same list (see :func:`position_key`).
"""

from __future__ import annotations

import array
import hashlib
import inspect
import io
import pickle
import sys
import threading
from collections.abc import Callable, Collection, Sequence
from types import CodeType, FunctionType
from typing import Any, NamedTuple

import cloudpickle

SCHEME = "tc-row-1"
"""Names the encoding below; a checkpoint keyed by another scheme reuses nothing."""
KEY_BYTES = 16
"""Row keys are the first 16 bytes of a SHA-256 (collisions: ~2**-64 at 2**32 rows)."""
_PROTOCOL = 5
_CO_OPTIMIZED_NEWLOCALS = inspect.CO_OPTIMIZED | inspect.CO_NEWLOCALS
_CO_HAS_DOCSTRING = 0x4000000  # Python 3.14+: the code object says whether it has one


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


def _has_docstring_slot(code: CodeType) -> bool:
    """True when ``co_consts[0]`` is the docstring (or None for none) of a ``def``.

    Up to Python 3.13 the compiler reserves that slot in every function's code (lambdas
    and comprehensions are named ``<...>`` and skipped); 3.14 says so with a flag.
    """
    if sys.version_info >= (3, 14):
        return bool(code.co_flags & _CO_HAS_DOCSTRING)
    return (code.co_flags & _CO_OPTIMIZED_NEWLOCALS == _CO_OPTIMIZED_NEWLOCALS
            and not code.co_name.startswith("<") and bool(code.co_consts)
            and (code.co_consts[0] is None or isinstance(code.co_consts[0], str)))


def _feed_code(digest: Any, code: CodeType) -> None:
    digest.update(code.co_code)
    digest.update(repr((code.co_names, code.co_varnames, code.co_freevars,
                        code.co_cellvars)).encode())
    consts = code.co_consts
    if _has_docstring_slot(code):
        consts = consts[1:]  # docstring edits keep the digest
    for const in consts:
        if isinstance(const, CodeType):
            _feed_code(digest, const)
        else:
            digest.update(_const(const).encode())
            digest.update(b"\x00")


_active = threading.local()


def function_digest(func: object) -> str:
    """A digest of what a callable does, or "" when nothing can be said (a builtin's
    behaviour is fixed by its name).

    - A function: its bytecode, names and constants, except its docstring (moving it in its
      file, editing a comment or the docstring keep the digest; changing what it does changes
      it) and the values its closure captured (a factory's ``k`` in ``lambda x: x * k``).
      Globals it reads are not included.
    - A callable object: the code of its class's ``__call__`` and the object's own state.
    - ``functools.partial`` and other objects: their encoding (the wrapped function by code).
    """
    target = inspect.unwrap(func) if callable(func) else func
    digest = hashlib.sha256()
    code = getattr(target, "__code__", None)
    if isinstance(code, CodeType):
        _feed_code(digest, code)
        closure = getattr(target, "__closure__", None) or ()
        seen: set[int] = getattr(_active, "seen", set())
        if id(target) in seen:  # a recursive local function: its code is already in
            return digest.hexdigest()
        _active.seen = seen | {id(target)}
        try:
            for cell in closure:
                try:
                    digest.update(_encode(cell.cell_contents))
                except (Undigestable, ValueError):  # an empty cell or an opaque value
                    digest.update(b"?")
        finally:
            _active.seen = seen
        return digest.hexdigest()
    call = next((vars(c)["__call__"] for c in type(target).__mro__ if "__call__" in vars(c)),
                None)
    call_code = getattr(call, "__code__", None)
    if isinstance(call_code, CodeType):  # a callable object
        _feed_code(digest, call_code)
    try:
        digest.update(_encode(target))
    except Undigestable:
        if not isinstance(call_code, CodeType):
            return ""
    return digest.hexdigest()


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
    cls = type(obj)
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
    if cls is FunctionType and obj is not _mark:
        fn: Any = obj
        return _mark, ("function", fn.__module__, fn.__qualname__, function_digest(fn),
                       fn.__defaults__, fn.__kwdefaults__)
    if _REFS is None:
        _REFS = _refs()
    if isinstance(obj, _REFS):
        raise Undigestable(f"a {cls.__name__} stands for a value that may change")
    return NotImplemented


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


_PLACEHOLDER = b"\xff" * KEY_BYTES
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
    """The rows that could not be encoded (keyed by position, see :func:`position_key`)."""
    opaque: list[int]
    """The rows holding something other than builtin data, or whose encoding is at least
    ``large`` bytes: the only rows that can hold a large argument (an array, a buffer)."""


def row_keys(binder: Binder, rows: Collection[tuple[Sequence[Any], dict[str, Any] | None]],
             large: int | None = None) -> RowKeys:
    """Every row's key, in bulk: one encoder writes every row's encoding into one buffer,
    hashed a few MB at a time, and rows that give every parameter by position skip the
    binder. The keys are those of :meth:`Binder.key`, row by row."""
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
    if missing:
        whole = hashlib.sha256(len(keys).to_bytes(8, "little"))
        for key in keys:
            whole.update(key or _PLACEHOLDER)
        list_digest = whole.digest()
        for i in missing:
            keys[i] = position_key(list_digest, i)
    return RowKeys([k for k in keys if k is not None], missing, opaque)


def _new_counting(buffer: io.BytesIO) -> _CountingEncoder:
    pickler = _CountingEncoder(buffer, _PROTOCOL)
    pickler.fast = True  # no memo, as in _new
    return pickler


# -- STAND-IN (i26-digest replaces) ---------------------------------------------------------
# A temporary identity built from function_digest, with the signature the digest branch
# delivers; the lead takes that branch's _digest.py at merge.


class Identity(NamedTuple):  # STAND-IN (i26-digest replaces)
    """What a function's results are reused for: ``digest`` (None: something it depends on
    cannot be encoded), ``parts`` ((what, hex digest) pairs) and why it is ``unknown``."""

    digest: bytes | None
    parts: tuple[tuple[str, str], ...]
    unknown: str | None


def _stand_in_name(obj: object) -> str:  # STAND-IN (i26-digest replaces)
    cls = getattr(obj, "__ray_metadata__", None)
    obj = getattr(cls, "modified_class", obj)
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def identify(func: object, *, actor_cls: object = None,  # STAND-IN (i26-digest replaces)
             depends_on: object = None) -> Identity:
    """STAND-IN (i26-digest replaces): the function by :func:`function_digest`, ``actor_cls``
    by its name, ``depends_on`` by its encoding (a path by its file's bytes)."""
    import os
    import types

    name = _stand_in_name(func)
    body = function_digest(func)
    if not body and isinstance(func, (types.BuiltinFunctionType, types.BuiltinMethodType)) \
            and isinstance(getattr(func, "__self__", None), (types.ModuleType, type(None))):
        body = hashlib.sha256(name.encode()).hexdigest()
    if not body:
        return Identity(None, (), f"{name} cannot be encoded")
    parts = [(f"function {name}", body)]
    if actor_cls is not None:
        parts.append((f"actor_cls {_stand_in_name(actor_cls)}",
                      hashlib.sha256(_stand_in_name(actor_cls).encode()).hexdigest()))
    if depends_on is not None:
        try:
            if isinstance(depends_on, os.PathLike):
                with open(depends_on, "rb") as handle:
                    encoded = hashlib.sha256(handle.read()).digest()
            else:
                encoded = _encode(depends_on)
        except (OSError, Undigestable) as exc:
            return Identity(None, tuple(parts), f"depends_on cannot be encoded: {exc}")
        parts.append(("depends_on", hashlib.sha256(encoded).hexdigest()))
    whole = hashlib.sha256()
    for what, hexed in parts:
        whole.update(what.encode() + b"\x00" + hexed.encode() + b"\x00")
    return Identity(whole.digest(), tuple(parts), None)
