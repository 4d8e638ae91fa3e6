"""Type variables and aliases shared by the package."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

from typing_extensions import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=Callable[..., Any])
C_co = TypeVar("C_co", bound=Callable[..., Any], covariant=True)
G = TypeVar("G", bound=Callable[..., Any])

Row: TypeAlias = "Sequence[Any] | Mapping[str, Any]"
"""One call's arguments: a list or tuple of positional arguments, or a dict of keyword arguments."""

Args: TypeAlias = "tuple[Any, ...]"
Kwargs: TypeAlias = "dict[str, Any]"

OnError: TypeAlias = Literal["raise", "return"]

ChunkSize: TypeAlias = "int | Literal['auto']"
"""A positive number of calls at once, or "auto" (the CPUs available, and the calls of
``memory_per_call`` that fit when it is given)."""
MemoryBudget: TypeAlias = "int | Literal['auto'] | None"
"""Bytes the calls at once on one node may use together; "auto": from the node; None: off."""

RetryOn: TypeAlias = "type[BaseException] | tuple[type[BaseException], ...]"
