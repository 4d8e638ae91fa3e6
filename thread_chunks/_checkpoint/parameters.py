"""The latest run's parameter list and its function's signature as the file keeps them
(``meta``'s ``parameters`` and ``signature``, pickled once a run): what the 1.0.5 view and the
table show. Large arguments are not copied (:class:`NotStored` describes them: a row's
identity is its digest), and what cannot be pickled is described instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from .._actor import pack
from .._rows import TypedRow
from .._wire import is_large


class NotStored:
    """Stands in ``Checkpoint.load(path).parameters`` for a large argument (an array or a
    buffer of 1 MiB or more) that the checkpoint did not copy: the row's identity is its
    digest, and ``description`` says what it was (type, shape, dtype, size)."""

    __slots__ = ("description",)

    def __init__(self, description: str) -> None:
        self.description = description

    def __repr__(self) -> str:
        return f"<not stored: {self.description}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NotStored) and other.description == self.description

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (NotStored, (self.description,))


def _not_stored(value: object) -> NotStored:
    kind = type(value)
    parts = [f"{kind.__module__}.{kind.__qualname__}".removeprefix("builtins.")]
    for attr in ("shape", "dtype"):
        shown = getattr(value, attr, None)
        if shown is not None:
            parts.append(f"{attr} {shown}")
    size = getattr(value, "nbytes", None)
    size = len(value) if size is None and isinstance(value, (bytes, bytearray)) else size
    parts.append(f"{size / 2**20:.1f} MiB" if isinstance(size, int) else "size unknown")
    return NotStored(", ".join(parts))


def _without_large(row: Any) -> Any:
    """``row`` as the checkpoint keeps it: large arguments replaced by a description."""
    def light(values: Sequence[Any]) -> Sequence[Any] | None:
        if not any(is_large(v) for v in values):
            return None
        return [_not_stored(v) if is_large(v) else v for v in values]

    if type(row) in (list, tuple):
        kept = light(row)
        return row if kept is None else type(row)(kept)
    if isinstance(row, TypedRow):
        args = light(row.args)
        kwargs = {k: _not_stored(v) if is_large(v) else v for k, v in row.kwargs.items()}
        return TypedRow(row.args if args is None else tuple(args), kwargs)
    if isinstance(row, Mapping):
        return {k: _not_stored(v) if is_large(v) else v for k, v in row.items()}
    if isinstance(row, (list, tuple)):  # a subclass (a NamedTuple): its positions, as a list
        kept = light(row)
        return row if kept is None else kept
    return row


def _unpicklable(row: int, value: object) -> str:
    return f"<row {row}: not recorded, {type(value).__name__} cannot be pickled>"


def _pickle_rows(rows: Sequence[Any], undigestable: Sequence[int], light: bool,
                 opaque: Sequence[int] | None = None) -> bytes:
    """The parameter list, pickled once. Rows that cannot be pickled (and undigestable rows,
    which may hold Ray references) are replaced by a description; so are large arguments
    when ``light`` (the rows' identity is their digest: the file needs no copy of them),
    looked for only in the ``opaque`` rows when they are known (:class:`RowKeys`)."""
    listed = list(rows)
    if light:
        for i in range(len(listed)) if opaque is None else opaque:
            listed[i] = _without_large(listed[i])
    for i in undigestable:
        listed[i] = _unpicklable(i, listed[i])
    try:
        return pack(listed)
    except Exception:
        kept: list[Any] = []
        for i, row in enumerate(listed):
            try:
                pack(row)
                kept.append(row)
            except Exception:
                kept.append(_unpicklable(i, row))
        return pack(kept)


def _signature_blob(signature: inspect.Signature | None) -> bytes | None:
    """The parameters of the run's function as the table view binds rows to them: ``(name,
    kind, has a default, default)`` each, pickled (a default that cannot be is described,
    and so is a large one, as a large argument is); None without a signature."""
    if signature is None:
        return None
    params: list[tuple[str, int, bool, Any]] = []
    for p in signature.parameters.values():
        default = None if p.default is inspect.Parameter.empty else p.default
        if is_large(default):
            default = _not_stored(default)
        try:
            pack(default)
        except Exception:
            default = NotStored(f"{type(default).__name__} (could not be pickled)")
        params.append((p.name, int(p.kind), p.default is not inspect.Parameter.empty, default))
    return pack(params)
