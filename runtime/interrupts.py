"""SIGINT / SIGTERM for ``tddfa-run``: one orderly stop, whenever the signal comes.

``install()`` takes over both signals in *deferred* mode: a signal is only remembered. ``arm()`` turns on
raising: a remembered signal raises ``KeyboardInterrupt`` at once, later ones at the next Python bytecode.
Only the first signal raises; the ones after it (a second Ctrl-C while the run is closing its outputs) are
ignored, so the stop can never be interrupted half-way into a traceback. ``critical()`` marks a section a
signal must not cut (writing one record line and the files it references): a signal inside it is raised
when the section ends (a second one inside the same section raises at once: a write to a pipe that nobody
reads must not make the process unstoppable). ``restore()`` puts the previous handlers back (for in-process callers).

This is process-wide state and only ``tddfa-run`` uses it; the library (``FaceAligner``, ``run``) does not
touch signals.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    installed = False
    armed = False
    fired: int | None = None  # the signal that raised (or would have)
    pending: int | None = None
    depth = 0
    previous: dict = {}


_state = _State()


def _handler(signum, frame) -> None:
    if _state.fired is not None:
        return  # already stopping: ignore
    if not _state.armed or (_state.depth and _state.pending is None):
        if _state.pending is None:
            _state.pending = signum
        return
    # Armed, outside a critical section; or a second signal while a critical section is stuck (a write to a pipe
    # nobody reads): stop now.
    _state.fired = _state.pending if _state.pending is not None else signum
    _state.pending = None
    raise KeyboardInterrupt


def install() -> bool:
    """Take over SIGINT and SIGTERM (deferred mode). False when not possible (not the main thread)."""
    if _state.installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    previous = {}
    try:
        for sig in SIGNALS:
            previous[sig] = signal.signal(sig, _handler)
    except (ValueError, OSError):
        for sig, old in previous.items():
            signal.signal(sig, old)
        return False
    _state.previous, _state.installed = previous, True
    _state.armed, _state.fired, _state.pending, _state.depth = False, None, None, 0
    return True


def arm() -> None:
    """Raise ``KeyboardInterrupt`` for signals from now on (at once for one that came while deferred)."""
    _state.armed = True
    if _state.pending is not None and _state.fired is None and not _state.depth:
        _state.fired, _state.pending = _state.pending, None
        raise KeyboardInterrupt


def disarm() -> None:
    """Back to remembering signals without raising (the run is over; its exit code stands)."""
    _state.armed = False


def restore() -> None:
    """Put back the handlers ``install`` replaced."""
    if not _state.installed:
        return
    for sig, old in _state.previous.items():
        try:
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        except (ValueError, OSError):
            pass
    _state.installed, _state.armed, _state.previous = False, False, {}


def ignore_from_now_on() -> None:
    """Ignore SIGINT and SIGTERM for the rest of the process (a command-line run that has finished its work)."""
    for sig in SIGNALS:
        try:
            signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError):
            pass


def stopping() -> bool:
    """A signal has raised (or was deferred while armed): the run must stop even if a library swallowed or
    converted the ``KeyboardInterrupt`` (pybind11 turns one raised inside a module's init into ImportError)."""
    return _state.fired is not None or (_state.armed and _state.pending is not None)


def received() -> int | None:
    """The signal that stopped (or is stopping) the run, if any."""
    return _state.fired if _state.fired is not None else _state.pending


def signal_name(signum: int | None) -> str:
    try:
        return signal.Signals(signum).name
    except (ValueError, TypeError):
        return "a signal"


class critical:
    """A section no signal cuts: a signal inside it raises ``KeyboardInterrupt`` when the section ends."""

    __slots__ = ()

    def __enter__(self):
        _state.depth += 1
        return self

    def __exit__(self, exc_type, exc, tb):
        _state.depth -= 1
        if not _state.depth and _state.armed and _state.pending is not None and _state.fired is None:
            _state.fired, _state.pending = _state.pending, None
            if exc_type is None:
                raise KeyboardInterrupt
        return False


__all__ = ["install", "arm", "disarm", "restore", "ignore_from_now_on", "received", "stopping", "signal_name", "critical"]
