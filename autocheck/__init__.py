"""autocheck: prove PyTorch gradients right or wrong against exact symbolic derivatives.

>>> import torch, autocheck
>>> autocheck.derivative(lambda x: x * x * torch.exp(x))
x**2*exp(x) + 2*x*exp(x)
"""

from ._api import assert_grad_matches as assert_grad_matches
from ._api import assert_module_grads as assert_module_grads
from ._api import check_grad as check_grad
from ._api import check_module as check_module
from ._reference import reference as reference
from ._compare import DEFAULT_TOLERANCES as DEFAULT_TOLERANCES
from ._errors import DeadlineExceeded as DeadlineExceeded
from ._errors import DomainError as DomainError
from ._errors import GradientMismatch as GradientMismatch
from ._errors import NondeterministicFunction as NondeterministicFunction
from ._errors import NothingChecked as NothingChecked
from ._errors import TraceError as TraceError
from ._errors import TranslationError as TranslationError
from ._printer import register_sympy_function as register_sympy_function
from ._report import Report as Report
from ._search import Drawn as Drawn
from ._symbolic import derivative as derivative
from ._trace import register_torch_op as register_torch_op

__version__ = "0.1.0"


def __getattr__(name: str):
    # autocheck.strategies imports Hypothesis; load it only when asked for.
    if name == "strategies":
        import importlib

        return importlib.import_module(".strategies", __name__)
    raise AttributeError(f"module 'autocheck' has no attribute {name!r}")

__all__ = [
    "DEFAULT_TOLERANCES",
    "DeadlineExceeded",
    "Drawn",
    "DomainError",
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
]
