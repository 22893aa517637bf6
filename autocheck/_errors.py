"""Public exception types. Each subclasses a builtin so that ``except TypeError`` still works."""

from __future__ import annotations

from typing import Any


class TraceError(TypeError):
    """A function could not be turned into a SymPy expression.

    The message names the operation that stopped the trace and how to rewrite it.
    """

    __module__ = "autocheck"


class TranslationError(TypeError):
    """A SymPy expression has no torch (or mpmath) translation.

    The message names the SymPy function and the registration call that adds one.
    """

    __module__ = "autocheck"


class DomainError(ValueError):
    """A domain is empty, inconsistent, or does not fit the function."""

    __module__ = "autocheck"


class GradientMismatch(AssertionError):
    """Autograd disagrees with the exact symbolic derivative.

    Attributes:
        report: the full :class:`autocheck.Report` of the check.
        counterexample: the failing input values, one per parameter.
    """

    __module__ = "autocheck"

    def __init__(self, message: str, report: Any = None, counterexample: Any = None) -> None:
        super().__init__(message)
        self.report = report
        self.counterexample = counterexample
