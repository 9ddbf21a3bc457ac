"""Stop signals: SIGINT (Ctrl-C), SIGTERM (kill, SLURM, Kubernetes) and SIGHUP (a closed terminal).

Training turns them into a flag it checks between steps, so it saves and stops (`StopFlag`); everywhere else
they raise `Interrupted`, which the command line turns into one line and exit code 128 + the signal number.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived where ctm stops at once; `signum` names it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, frame) -> None:
    raise Interrupted(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def raise_on_stop_signals() -> dict[int, object]:
    """Make every stop signal raise `Interrupted`; returns the handlers replaced, for `restore`. Nothing
    changes outside the main thread (Python sets signal handlers only there)."""
    if not _in_main_thread():
        return {}
    return {s: signal.signal(s, _raise) for s in STOP_SIGNALS}


def restore(handlers: dict[int, object]) -> None:
    for s, handler in handlers.items():
        if handler is not None:
            signal.signal(s, handler)


class StopFlag:
    """Set by the first stop signal, so the training loop stops between steps (never inside an optimiser
    step) and saves. A further signal stops at once, except during `with flag.saving():`, which completes."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._saving = False
        self._previous: dict[int, object] = {}

    @property
    def set(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and not self._saving:
            raise Interrupted(signum)
        if self.signum is None:
            self.signum = signum

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        self._saving = True
        try:
            yield
        finally:
            self._saving = False

    def __enter__(self) -> StopFlag:
        if _in_main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        restore(self._previous)
        self._previous = {}
