"""Loading the checker: SymPy and autocheck's own modules, on first use.

Importing SymPy makes some hundred thousand objects that live as long as the process.
Python's cyclic collector, counting them as they come, runs full collections over every
object in the process (torch's included) while they load: two or three passes of 50 to
100 ms each. Each is wasted, since nothing made while loading is garbage. The collector is
paused while the checker loads, and the objects it made are moved to the oldest generation
in one step (``gc.freeze``, then ``gc.unfreeze``), where the collector looks at them only
in its full collections, at the pace it had before.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import sys
from types import ModuleType
from typing import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic collector paused inside the block; what it made, in the oldest
    generation afterwards. Leaves the collector as it was found: where it is off, nothing
    is done; where the process froze objects of its own (a forking server), they stay frozen
    and the new objects are left where they are. The collector's switch is the process's:
    another thread that turns it off inside the block finds it on again afterwards."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        if not gc.get_freeze_count():
            gc.freeze()
            gc.unfreeze()
        gc.enable()


def load(name: str) -> ModuleType:
    """Import the module ``name`` (absolute, or relative to this package) with the collector
    paused where it is not yet loaded."""
    qualified = importlib.util.resolve_name(name, __package__)
    if qualified in sys.modules:
        return sys.modules[qualified]
    with collector_paused():
        return importlib.import_module(qualified)
