"""How a run stops early and keeps its work: signals, a wall-clock limit.

Ctrl-C, SIGTERM (SLURM, Kubernetes) and SIGUSR1 (SLURM's ``--signal``) ask the loop to stop after the current
step and save; ``--max-time`` does the same after a duration. The exit codes tell a scheduler what happened.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from typing import Optional

from .errors import UserInputError

# Exit code of a run stopped by --max-time after saving (GNU timeout's code for "time limit reached").
MAX_TIME_EXIT_CODE = 124


def parse_duration(text: str) -> float:
    """Seconds in "3h30m", "45m", "90s", "1h", "1.5h" or a plain number of seconds; an error names --max-time."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d*)?)h)?\s*(?:(\d+(?:\.\d*)?)m)?\s*(?:(\d+(?:\.\d*)?)s?)?\s*", text)
    if not text.strip() or match is None or not any(match.groups()):
        raise UserInputError(f"--max-time must be a duration such as 3h30m, 45m, 90s or 600, got {text!r}")
    hours, minutes, seconds = (float(group) if group else 0.0 for group in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if total <= 0:
        raise UserInputError(f"--max-time must be longer than 0, got {text!r}")
    return total


# Signals that stop a run after the current step, with a checkpoint: Ctrl-C, the scheduler's SIGTERM (SLURM,
# Kubernetes) and SLURM's warning signal (--signal=USR1@...). The process then exits with 128 + the number.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


class _StopSignalHandler:
    """Within ``with``, the stop signals call ``self._handle(signum, frame)`` (in the main thread; elsewhere
    Python cannot install handlers); the previous handlers come back on exit."""

    def __enter__(self):
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc):
        for number, previous in self._previous.items():
            signal.signal(number, previous)


class InterruptFlag(_StopSignalHandler):
    """Turns the first stop signal into a request to stop after the current step (and save); a second Ctrl-C
    interrupts at once (a repeated SIGTERM or SIGUSR1 does not: the save must finish)."""

    def __init__(self):
        self.requested = False
        self.timed_out = False  # set by the loop when --max-time is reached
        self.signal_number: Optional[int] = None

    def _handle(self, signum, frame):
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = True
        self.signal_number = signum
        how = "Ctrl-C again to quit without saving" if signum == signal.SIGINT else "then exit"
        sys.stderr.write(f"\n{signal.Signals(signum).name}: stopping after this step to save a checkpoint ({how})\n")


class SetupStopped(BaseException):
    """A stop signal that arrived before the training loop (or after it): nothing to finish, so the run ends."""

    def __init__(self, signal_number: int):
        super().__init__(signal_number)
        self.signal_number = signal_number


class SetupSignals(_StopSignalHandler):
    """Outside the training loop (whose InterruptFlag finishes the step and saves), a stop signal ends the run at
    once by raising SetupStopped; ``stage`` says what the run was doing, for the message that says what was
    kept."""

    def __init__(self):
        self.stage = "starting"
        self.signal_number: Optional[int] = None

    def enter(self, stage: str) -> None:
        """The run now does ``stage``. A signal whose exception was lost (raised while a finaliser ran, which
        Python reports and ignores) stops the run here."""
        if self.signal_number is not None:
            raise SetupStopped(self.signal_number)
        self.stage = stage

    def _handle(self, signum, frame):
        self.signal_number = signum
        while frame is not None:  # in a finaliser, Python would print the exception and ignore it: enter() raises
            if frame.f_code.co_name == "__del__":
                return
            frame = frame.f_back
        raise SetupStopped(signum)
