"""autocheck: prove PyTorch gradients right or wrong against exact symbolic derivatives."""

from ._errors import DomainError as DomainError
from ._errors import GradientMismatch as GradientMismatch
from ._errors import TraceError as TraceError
from ._errors import TranslationError as TranslationError
from ._symbolic import derivative as derivative
from ._trace import register_torch_op as register_torch_op

__version__ = "0.1.0"

__all__ = [
    "DomainError",
    "GradientMismatch",
    "TraceError",
    "TranslationError",
    "derivative",
    "register_torch_op",
]
