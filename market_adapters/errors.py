"""Exceptions of the market adapters: each names the source, the outside object and the field at fault."""

from __future__ import annotations


class AdapterError(Exception):
    """Base of every error a market adapter raises on purpose."""


class AdapterFormatError(AdapterError, ValueError):
    """An outside file or payload that does not have the shape its format promises.

    ``source`` names the file or payload (a path, ``"<data>"``), ``obj`` the outside object
    (``EV object '1396...'``, ``schedule block 2 ('Winter-Weekday')``) and ``field`` the field at fault,
    in the outside format's own name (``_arrival``, ``effective_start``).
    """

    def __init__(self, source: str, obj: str, field: str, problem: str) -> None:
        self.source = source
        self.obj = obj
        self.field = field
        self.problem = problem
        where = f"{obj}: " if obj else ""
        what = f"field {field!r} " if field else ""
        super().__init__(f"{source}: {where}{what}{problem}")
