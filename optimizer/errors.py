"""Exceptions raised by the optimizer. Each carries what the caller needs to point at the bad input."""

from __future__ import annotations


class OptimizerError(Exception):
    """Base of every error the optimizer raises on purpose."""


class ScenarioError(OptimizerError, ValueError):
    """An input that cannot be scheduled, rejected before the model is built.

    ``obj`` names the object (``vehicle 'ev-3'``, ``site 'depot-1'``), ``field`` the offending field.
    """

    def __init__(self, obj: str, field: str, problem: str) -> None:
        self.obj = obj
        self.field = field
        self.problem = problem
        super().__init__(f"{obj}: {field} {problem}")


class SolverUnavailableError(OptimizerError, RuntimeError):
    """HiGHS (highspy) cannot be loaded."""
