"""autocheck: prove PyTorch gradients right or wrong against exact symbolic derivatives.

>>> import torch, autocheck
>>> autocheck.derivative(lambda x: x * x * torch.exp(x))
x**2*exp(x) + 2*x*exp(x)

The names below are loaded on first use, so that importing the package (as pytest does
for its plugin, ``autocheck.pytest_plugin``) does not import torch and SymPy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Each public name, and the module that defines it.
_WHERE = {
    "assert_grad_matches": "._api",
    "assert_module_grads": "._api",
    "check_grad": "._api",
    "check_module": "._api",
    "verify_grads": "._api",
    "reference": "._reference",
    "DEFAULT_TOLERANCES": "._compare",
    "DeadlineExceeded": "._errors",
    "DomainError": "._errors",
    "GradientMismatch": "._errors",
    "NondeterministicFunction": "._errors",
    "NothingChecked": "._errors",
    "TraceError": "._errors",
    "TranslationError": "._errors",
    "register_sympy_function": "._printer",
    "Report": "._report",
    "Drawn": "._search",
    "derivative": "._symbolic",
    "register_torch_op": "._trace",
}


def __getattr__(name: str) -> Any:
    from ._loading import load  # the collector paused while SymPy or Hypothesis loads

    if name == "strategies":  # imports Hypothesis
        return load(".strategies")
    if name in _WHERE:
        value = getattr(load(_WHERE[name]), name)
        globals()[name] = value  # once loaded, an ordinary attribute
        return value
    raise AttributeError(f"module 'autocheck' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE, "strategies"])


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from ._api import assert_grad_matches, assert_module_grads, check_grad, check_module, verify_grads
    from ._compare import DEFAULT_TOLERANCES
    from ._errors import (
        DeadlineExceeded, DomainError, GradientMismatch, NondeterministicFunction, NothingChecked, TraceError,
        TranslationError,
    )
    from ._printer import register_sympy_function
    from ._reference import reference
    from ._report import Report
    from ._search import Drawn
    from ._symbolic import derivative
    from ._trace import register_torch_op

__all__ = [
    "DEFAULT_TOLERANCES",
    "DeadlineExceeded",
    "DomainError",
    "Drawn",
    "GradientMismatch",
    "NondeterministicFunction",
    "NothingChecked",
    "Report",
    "TraceError",
    "TranslationError",
    "assert_grad_matches",
    "assert_module_grads",
    "check_grad",
    "check_module",
    "derivative",
    "reference",
    "strategies",
    "register_sympy_function",
    "register_torch_op",
    "verify_grads",
]
