"""Time budgets that end runaway work: a :class:`Deadline` value and :func:`interrupt_after`.

User code that loops forever, a SymPy derivative that explodes, or an mpmath evaluation
that runs away must end inside its budget with a message a person can act on.
``Deadline`` is a budget as a plain value that a pipeline passes down;
``interrupt_after`` runs a block and stops it when the deadline passes:

>>> from autocheck._budget import Deadline, interrupt_after
>>> with interrupt_after(0.05, "the spin loop", "Raise spin_seconds."):
...     while True:
...         pass
Traceback (most recent call last):
    ...
autocheck.DeadlineExceeded: the spin loop took longer than 0.05 s. Raise spin_seconds.

How a block is stopped, and what that means for the code inside it:

* One daemon thread, the watchdog, keeps the armed deadlines of the process in a heap and
  sleeps until the earliest. When it passes, the watchdog sets an asynchronous exception
  on the block's thread with ``PyThreadState_SetAsyncExc``; main thread or not
  (pytest-xdist workers, user threads) makes no difference.
* CPython raises an asynchronous exception between bytecodes, at the points where it
  also switches threads: calls, loop back-edges, function entries. A pure-Python loop is
  stopped within a few milliseconds of the deadline. A long C call (``time.sleep``, a
  big torch op, SymPy's big-integer arithmetic) is stopped when it returns to Python; a
  C call that holds the GIL also keeps the watchdog waiting until then.
* What arrives is a private ``BaseException``, so an ``except Exception:`` in the block
  cannot swallow it; the block's ``interrupt_after`` turns it into
  :class:`~autocheck.DeadlineExceeded` (a ``TimeoutError``: catching it is a deliberate
  act) carrying the traceback of the point where the work stopped.
* A bare ``except:`` or ``except BaseException:`` can still swallow it. A swallowed
  interrupt sets itself again when it is dropped, to be raised at the next check after
  that ``try``, and the watchdog delivers it again every ``_REDELIVER_SECONDS`` until the
  block has ended. Python 3.10 and 3.12 raise it again inside the ``try`` when a loop's
  body ends with such a ``try`` around a call that releases the GIL; that loop is not
  ended (3.10 checks nothing before a ``try``; 3.12 places a loop's back-edge there).
* Like Ctrl-C, the interrupt can land anywhere in the block: also on entering the
  ``__exit__`` of a context manager used inside it, whose cleanup then does not run, or
  in a ``__del__``, where Python reports it as ignored (and it is delivered again).
* The block's own exit is protected. The watchdog delivers only while the thread is
  inside the block and outside this module's code, and looks at the block's "ended" mark
  right before it does; ``__exit__`` sets that mark first. An interrupt set during a C
  call at the very end of the block is raised on entering ``__exit__``, before its first
  line; :meth:`_Interrupt.__new__` then does the exit's work, so the ``with`` statement
  still raises ``DeadlineExceeded`` (or the block's own exception, never replaced). None
  arrives after the block.
* The deadline belongs to the thread that entered the block: do not ``yield`` or
  ``await`` inside it. While a debugger (pdb, pydevd) is stopped inside the block, the
  interrupt waits. A process forked inside a block is not watched by it.
"""

from __future__ import annotations

import ctypes
import functools
import heapq
import itertools
import math
import numbers
import os
import sys
import threading
import time
from types import CodeType, FrameType, TracebackType

from ._errors import DeadlineExceeded

__all__ = ["Deadline", "OutOfTime", "interrupt_after"]

#: Seconds between deliveries to a block that has not ended after its interrupt: long
#: enough for the block's own ``finally`` clauses to run after the first one, short
#: enough that a loop which swallows it with a bare ``except:`` is ended soon.
_REDELIVER_SECONDS = 0.05

#: Seconds before the watchdog looks again at a thread that is inside this module's own
#: bookkeeping (entering or leaving a nested block), or stopped in a debugger.
_POLL_SECONDS = 0.001

#: Exited blocks whose heap entries may wait for the watchdog before the heap is rebuilt
#: without them. Without a bound, 10,000 blocks of a few microseconds each under a 5 s
#: budget would keep 10,000 entries until the first budget runs out.
_COMPACT_AFTER = 64

#: Frames of these modules belong to a debugger stopped inside the block.
_DEBUGGERS = ("bdb", "pdb", "pydevd", "_pydevd")

#: CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR: a frame that can be suspended.
_SUSPENDABLE = 0x20 | 0x80 | 0x200

#: Before Python 3.12 an exception raised without a value gets its instance only where it
#: is first caught, unless another exception is being handled; see _Interrupt.__new__.
_LATE_INSTANCE = sys.version_info < (3, 12)

# A PyDLL function keeps the GIL, so the call is atomic with respect to other threads. Its
# own prototype, so that no one else's ctypes.pythonapi.argtypes is changed. It is never
# called with NULL to clear a pending exception: before Python 3.13 that leaves the
# interpreter's "asynchronous exception pending" flag set for good, which slows every
# later check and makes Python 3.11 spin at the next call while a profiler is installed.
_raise_in_thread = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))


def _seconds(name: str, value: object) -> float:
    if (type(value) is float or type(value) is int) and value >= 0:  # the common case, cheaply
        return float(value)
    if value is None:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected {name} as a number of seconds (or None for no limit) "
                        f"but got {name}={value!r} of type {type(value).__name__}")
    seconds = float(value)
    if not seconds >= 0:  # also NaN
        raise ValueError(f"Expected {name} >= 0 seconds (or None for no limit) but got {name}={value!r}")
    return seconds


class OutOfTime(Exception):
    """A stage gave up at its deadline with work left: the caller reports what it did do."""


class Deadline:
    """A point in ``time.monotonic()`` time after which work should stop.

    An immutable value: make one where the budget is decided and pass it down, each stage
    taking its share with :meth:`sub`.

    >>> budget = Deadline.after(30)
    >>> budget.expired()
    False
    >>> budget.sub(5).remaining() <= 5
    True
    >>> budget.sub(60) == budget  # a share never ends after the whole
    True
    >>> Deadline.after(None).remaining()
    inf

    Attributes:
        at: the ``time.monotonic()`` value at which it passes (``inf``: never).
        seconds: the budget it stands for, as messages quote it (``inf``: no limit).
    """

    __slots__ = ("_at", "_seconds")

    def __init__(self, at: float, seconds: float) -> None:
        self._at = at
        self._seconds = seconds

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        """The deadline ``seconds`` from now; ``None`` or ``math.inf``: one that never passes."""
        budget = _seconds("seconds", seconds)
        return cls(time.monotonic() + budget, budget)

    @property
    def at(self) -> float:
        return self._at

    @property
    def seconds(self) -> float:
        return self._seconds

    def remaining(self) -> float:
        """Seconds left, never negative; ``inf`` for a deadline that never passes."""
        return max(self._at - time.monotonic(), 0.0)

    def expired(self) -> bool:
        return time.monotonic() >= self._at

    def sub(self, seconds: float | None) -> Deadline:
        """A nested deadline: ``seconds`` from now, or this one if that passes first."""
        share = Deadline.after(seconds)
        return share if share._at < self._at else self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Deadline):
            return NotImplemented
        return (self._at, self._seconds) == (other._at, other._seconds)

    def __hash__(self) -> int:
        return hash((self._at, self._seconds))

    def __repr__(self) -> str:
        if self._at == math.inf:
            return "Deadline.after(None)"
        return f"<Deadline: {self.remaining():.3g} s left of {self._seconds:g} s>"


def interrupt_after(deadline: Deadline | float | None, what: str, fix: str) -> _Guard:
    """A ``with`` block that is stopped with :class:`~autocheck.DeadlineExceeded` when ``deadline`` passes.

    Args:
        deadline: a :class:`Deadline`, or seconds from now; ``None``: no limit.
        what: what the block does, as the message names it ("the symbolic derivative").
        fix: how to allow more time, as the message says it ("Pass timeout=60.").

    The ``with`` statement gets the deadline that applies inside the block, the earlier of
    this one and those of the ``interrupt_after`` blocks it runs in, to pass further down.
    When an enclosing block's deadline passes first, the error is the enclosing block's.
    A deadline that has already passed raises before the block starts. See the module
    docstring for how and where the block is stopped.

    >>> with interrupt_after(10, "the search", "Pass timeout=20.") as deadline:
    ...     deadline.remaining() <= 10
    True
    """
    if not isinstance(deadline, Deadline):
        seconds = _seconds("deadline", deadline)
        deadline = Deadline(time.monotonic() + seconds, seconds)
    for name, text in (("what", what), ("fix", fix)):
        if not isinstance(text, str):
            raise TypeError(f"Expected {name} as str but got {name}={text!r} of type {type(text).__name__}")
    return _Guard(deadline, what, fix)


class _Guard:
    """The context manager that :func:`interrupt_after` returns; it can be entered once."""

    __slots__ = ("_deadline", "_what", "_fix", "_parent", "_effective", "_alive", "_armed",
                 "_tid", "_frame", "_entered_at", "_queued", "_interrupt")

    def __init__(self, deadline: Deadline, what: str, fix: str) -> None:
        self._deadline = deadline
        self._what = what
        self._fix = fix
        self._parent: _Guard | None = None  # the armed block this one runs in
        self._effective = deadline  # the earlier of this deadline and the parent's
        self._alive = True  # not yet exited
        self._armed = False  # watched, and the watch not yet taken down
        self._tid = 0
        self._frame: FrameType | None = None  # the frame running the ``with`` statement
        self._entered_at = -1  # its f_lasti when it entered the block
        self._queued = False  # has an entry in the watchdog's heap
        self._interrupt: type[_Interrupt] | None = None

    def __enter__(self) -> Deadline:
        __tracebackhide__ = True
        deadline = self._deadline
        parent = getattr(_local, "innermost", None)
        while parent is not None and not parent._alive:  # left without its __exit__
            parent = parent._parent
        self._parent = parent
        if parent is not None and parent._effective._at < deadline._at:
            # The enclosing block's deadline comes first; its watch covers this block.
            self._effective = parent._effective
            return self._effective
        if deadline._at == math.inf:
            return deadline
        if deadline._at <= time.monotonic():
            self._alive = False
            raise self._error()
        frame = sys._getframe(1)
        self._tid = threading.get_ident()
        self._frame = frame
        self._entered_at = frame.f_lasti
        self._armed = True
        try:
            with _state.lock:
                _state.push(self, deadline._at)
            _local.innermost = self
        except BaseException:  # an enclosing block's interrupt: this block never starts
            self._alive = False
            raise
        return deadline

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        try:  # the first statement: Python 3.10 then raises a pending interrupt in here, not on entry
            raised = exc  # also tells _Interrupt.__new__ that this __exit__ has begun
            __tracebackhide__ = True
            replacement = self._leave(exc)
        except _Interrupt as late:  # set during a C call that ended the block (Python 3.10)
            raised = exc if exc is not None and not isinstance(exc, _Interrupt) else late
            replacement = self._leave(raised)
            if replacement is None and raised is late:
                raise  # an enclosing block's; its exit reports it
        if replacement is None:
            return False  # no exception, or the block's own, which propagates unchanged
        raise replacement.with_traceback(raised.__traceback__ if raised is not None else None) from None

    def _leave(self, exc: BaseException | None) -> BaseException | None:
        """End the block; return the exception to raise instead of ``exc`` (None: keep ``exc``)."""
        # First, so that the watchdog, which looks at this right before it delivers, sends
        # nothing more. One it sent just before is raised at this method's entry at the
        # latest, where __exit__ or _Interrupt.__new__ deal with it.
        self._alive = False
        if self._armed:
            # Each step can be repeated, should an enclosing block's interrupt cut this short.
            with _state.lock:
                if self._queued:
                    self._queued = False
                    _state.forget()
            if getattr(_local, "innermost", None) is self:
                _local.innermost = self._parent
            self._frame = None  # the caller's locals must not live on in the heap
            self._armed = False
        if not isinstance(exc, _Interrupt):
            return None
        owner = type(exc)._guard
        parent = self._parent
        while parent is not None:
            if parent is owner and parent._alive:
                return None  # an enclosing block ran out first; its exit reports it
            parent = parent._parent
        return owner._error()

    def _message(self) -> str:
        return f"{self._what} took longer than {self._deadline._seconds:g} s. {self._fix}"

    def _error(self) -> DeadlineExceeded:
        return DeadlineExceeded(self._message(), what=self._what, seconds=self._deadline._seconds, fix=self._fix)


_EXIT_CODE = _Guard.__exit__.__code__


class _InterruptType(type):
    """The metaclass of :class:`_Interrupt`.

    Before Python 3.12, CPython keeps an exception's type apart from its instance; when
    ``_Interrupt.__new__`` returns another exception, the type stays the interrupt's and
    CPython makes a second instance where the exception is caught, unless the instance's
    class passes as a subclass of that type.
    """

    def __subclasscheck__(cls, subclass: type) -> bool:
        return subclass in cls._stand_ins or type.__subclasscheck__(cls, subclass)


class _Interrupt(BaseException, metaclass=_InterruptType):
    """Raised asynchronously in a thread whose block ran past its deadline.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` in the block
    can swallow it. CPython raises an asynchronous exception from a class, so each block
    that fires gets a subclass whose ``_guard`` names the block.
    """

    _guard: _Guard
    _stand_ins: frozenset[type] = frozenset()  # classes that __new__ returned in its place

    def __new__(cls, *args: object) -> BaseException:  # type: ignore[misc]
        # CPython makes the instance in the interrupted thread. An interrupt set during a
        # C call at the very end of a block is raised on entering the block's __exit__,
        # whose code then does not run. Do its work here, and make that the exception.
        interrupt = super().__new__(cls, *args)
        frame = sys._getframe(1)
        if frame.f_code is _EXIT_CODE and "raised" not in frame.f_locals:
            # On entering __exit__ (Python 3.11+, made here at once from 3.12 on, or
            # while another exception is handled).
            local = frame.f_locals
            own = local.get("exc")
            raised = own if own is not None and not isinstance(own, _Interrupt) else interrupt
            result = local["self"]._leave(raised) or raised
        else:
            result = interrupt
            if _LATE_INSTANCE:  # made where it is first caught, perhaps after the block
                guard = getattr(_local, "innermost", None)
                while guard is not None and not guard._alive:  # exited, or leaving right now
                    guard = guard._parent
                while guard is not None and _has_left(guard, frame):
                    own = sys.exc_info()[1]  # the block's own, if it was leaving with one
                    raised = own if own is not None and not isinstance(own, _Interrupt) else result
                    result = guard._leave(raised) or raised
                    guard = guard._parent
        if result is not interrupt:
            cls._stand_ins = cls._stand_ins | {type(result)}
            interrupt._dropped = True
        return result

    def __str__(self) -> str:
        return self._guard._message()

    def __del__(self) -> None:
        # Dropped while its block still runs: a bare ``except:`` swallowed it, most likely
        # around a C call where the watchdog keeps finding the thread. Set it again from
        # here, where the thread is, as the last thing: raised at the thread's next check,
        # which follows that ``try``.
        guard = getattr(type(self), "_guard", None)
        if guard is None or not guard._alive or self.__dict__.get("_dropped") or guard._tid != threading.get_ident():
            return
        if guard._frame is not None and _landing(sys._getframe(1), guard._frame) is _INSIDE:
            _ARM @ map(functools.partial(_raise_in_thread, guard._tid), (type(self),))


class _Arm:
    """``_ARM @ calls`` runs the calls of the iterator ``calls`` in C.

    Unlike a call, an operator is not followed by a check for asynchronous exceptions, so
    an interrupt set this way in the current thread is not raised in the code that set it.
    """

    __matmul__ = staticmethod(tuple)


_ARM = _Arm()


def _has_left(guard: _Guard, frame: FrameType) -> bool:
    """Whether an interrupt being made in ``frame`` was raised as ``guard``'s block ended.

    Python 3.11 raises it on entering __exit__ and makes it where it is caught: in the
    ``with`` statement's frame outside the block, or further out once that frame has
    returned. Python 3.10 raises it on the jump to the ``with`` statement's handler for
    the block's own exception, where it is made at once.
    """
    block = guard._frame
    if block is None:
        return False
    outer: FrameType | None = frame
    while outer is not None and outer is not block:
        outer = outer.f_back
    if outer is None:
        return not block.f_code.co_flags & _SUSPENDABLE  # a suspended generator has not left
    if frame is not block:
        return False
    entries = _exception_table(block.f_code)
    if entries is None:
        return _leaving_with_own_exception(block, guard._entered_at)
    return not _in_block(entries, guard._entered_at, frame.f_lasti)


def _in_block(entries: tuple[tuple[int, int, int], ...], entered_at: int, offset: int) -> bool:
    """Whether instruction ``offset`` belongs to the ``with`` block entered at ``entered_at``.

    The block is what the ``with`` statement's handler covers, directly or through the
    handlers of ``try`` statements inside it (each table entry names the innermost one).
    """
    def handler(at: int) -> int | None:
        return next((target for start, end, target in entries if start <= at < end), None)

    cleanup = handler(entered_at + 2)  # the instruction after BEFORE_WITH is in the block
    target = handler(offset)
    for _ in range(len(entries) + 1):
        if target is None or target == cleanup:
            return target is not None
        target = handler(target)
    return False


@functools.lru_cache(maxsize=64)
def _exception_table(code: CodeType) -> tuple[tuple[int, int, int], ...] | None:
    """``code``'s exception table as (start, end, target) offsets; None before Python 3.11."""
    import dis

    entries = getattr(dis.Bytecode(code), "exception_entries", None)
    return None if entries is None else tuple((e.start, e.end, e.target) for e in entries)


def _leaving_with_own_exception(frame: FrameType, entered_at: int) -> bool:
    """Python 3.10: whether ``frame`` is jumping to the handler of the ``with`` statement
    entered at ``entered_at`` with an exception raised right here, no ``try`` between."""
    import dis

    own = sys.exc_info()[1]
    if own is None or isinstance(own, _Interrupt) or own.__traceback__ is None:
        return False
    if own.__traceback__.tb_frame is not frame or own.__traceback__.tb_lasti != frame.f_lasti:
        return False
    return not any(i.opname.startswith("SETUP_") and entered_at < i.offset < frame.f_lasti < i.argval
                   for i in dis.get_instructions(frame.f_code))


# --------------------------------------------------------------------------------------
# The watchdog
# --------------------------------------------------------------------------------------


class _State:
    """The watchdog's heap of armed blocks, and the lock that orders deliveries and exits."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.heap: list[tuple[float, int, _Guard]] = []
        self.order = itertools.count()  # ties in the heap never compare guards
        self.dead = 0  # about how many heap entries belong to exited blocks
        self.sleeping_until = math.inf
        self.thread: threading.Thread | None = None

    def push(self, guard: _Guard, when: float) -> None:
        """Under the lock: look at ``guard`` at ``when``."""
        heapq.heappush(self.heap, (when, next(self.order), guard))
        guard._queued = True
        if when < self.sleeping_until:
            self.sleeping_until = when
            if self.thread is None:
                self.thread = threading.Thread(target=self.watch, name="autocheck-deadlines", daemon=True)
                self.thread.start()
            else:
                self.wake.notify()

    def forget(self) -> None:
        """Under the lock: one more heap entry belongs to an exited block."""
        self.dead += 1
        if self.dead > _COMPACT_AFTER and 2 * self.dead > len(self.heap):
            self.heap[:] = [entry for entry in self.heap if entry[2]._alive]
            heapq.heapify(self.heap)
            self.dead = 0

    def watch(self) -> None:
        with self.lock:
            while True:
                now = time.monotonic()
                while self.heap and (self.heap[0][0] <= now or not self.heap[0][2]._alive):
                    _, _, guard = heapq.heappop(self.heap)
                    guard._queued = False
                    if not guard._alive:
                        self.dead = max(self.dead - 1, 0)
                        continue
                    later = _fire(guard, now)
                    if later is not None:
                        self.push(guard, later)
                self.sleeping_until = self.heap[0][0] if self.heap else math.inf
                self.wake.wait(None if not self.heap else self.sleeping_until - now)


_state = _State()
_local = threading.local()


def _reset_after_fork() -> None:
    # The watchdog thread, and the lock if it held it, did not survive the fork.
    global _state
    _state = _State()


os.register_at_fork(after_in_child=_reset_after_fork)


_INSIDE, _WAIT, _OUTSIDE = "inside", "wait", "outside"


def _landing(top: FrameType, block: FrameType) -> str:
    """Whether an interrupt set now in the thread running ``top`` lands in ``block``'s block.

    ``_INSIDE``: ``block`` is on the stack. ``_WAIT``: so is a frame of this module (the
    thread is entering or leaving a nested block, whose bookkeeping an interrupt could
    leave half done) or of a debugger stopped inside the block. ``_OUTSIDE``: ``block``
    is not running in that thread.
    """
    frame: FrameType | None = top
    while frame is not None and frame is not block:
        if frame.f_globals is globals() or str(frame.f_globals.get("__name__")).startswith(_DEBUGGERS):
            return _WAIT
        frame = frame.f_back
    return _OUTSIDE if frame is None else _INSIDE


def _fire(guard: _Guard, now: float) -> float | None:
    """Under the lock, at ``guard``'s deadline: interrupt its block if that is safe now.

    Returns when to look at the block again (None: never).
    """
    parent = guard._parent
    while parent is not None:
        if parent._alive and parent._deadline._at <= now:
            return None  # an enclosing block ran out too; its own entry interrupts both
        parent = parent._parent
    top = sys._current_frames().get(guard._tid)
    block = guard._frame
    if top is None or block is None:
        guard._alive = False  # the thread has ended
        return None
    landing = _landing(top, block)
    if landing is _WAIT:
        return now + _POLL_SECONDS
    if landing is _OUTSIDE:
        if block.f_code.co_flags & _SUSPENDABLE:
            return now + _REDELIVER_SECONDS  # a generator suspended inside the block
        guard._alive = False  # the block is over although its __exit__ never ran
        return None
    if guard._interrupt is None:
        guard._interrupt = type("_Interrupt", (_Interrupt,), {"_guard": guard, "__slots__": ()})
    # The thread may have moved on since _landing looked (this thread can be switched out
    # at any call or loop above). Nothing between this test and the call lets it run.
    if guard._alive:
        _raise_in_thread(guard._tid, guard._interrupt)
    return now + _REDELIVER_SECONDS
