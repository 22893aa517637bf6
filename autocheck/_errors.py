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


class DeadlineExceeded(TimeoutError):
    """Work ran past its time budget and was stopped.

    Raised where the budgeted block was entered, with the traceback of the point where the
    work was stopped. The message names what was running, the budget in seconds, and how
    to allow more.

    Attributes:
        what: what was running.
        seconds: the budget in seconds.
        fix: how to raise the budget.
    """

    __module__ = "autocheck"

    def __init__(self, message: str, *, what: str = "", seconds: float | None = None, fix: str = "") -> None:
        super().__init__(message)
        self.what = what
        self.seconds = seconds
        self.fix = fix


class NothingChecked(ValueError):
    """A check judged no gradient element: there is nothing it could vouch for.

    Every point was outside the function's domain, every forward value was infinite or
    NaN, the inputs were NaN, or the tensors were empty. The message says which, and what
    to change. A check never passes having checked nothing.
    """

    __module__ = "autocheck"


class NondeterministicFunction(ValueError):
    """Two runs of the function on the same input gave different values.

    autocheck traces the function once; a random draw or a changing state inside it would
    be frozen into the exact derivative and then reported as a wrong gradient.
    """

    __module__ = "autocheck"
