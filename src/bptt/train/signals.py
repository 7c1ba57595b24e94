"""SIGINT and SIGTERM during a training loop: finish the update, save it, then stop.

The first signal only sets ``StopRequests.signum``; the loop looks at it after each update
(and its checkpoint), saves, and raises ``Interrupted`` carrying the checkpoint's path; a
signal after the last update (its evaluation, the plot) raises it with that update's. A
second signal raises ``Interrupted`` at once from the handler: what was being written is a
temporary file (removed) or a checkpoint half without its JSON (set aside by the next
resume), so every checkpoint written before stays whole.
"""
from __future__ import annotations

import signal
import threading


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run. ``checkpoint``: the JSON written after the update
    in flight finished (None when a second signal stopped it at once); ``code``: the exit
    status the command gives (128 + the signal's number)."""

    def __init__(self, signum, step, checkpoint=None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.name = signal.Signals(signum).name
        self.code = 128 + signum
        super().__init__(f"{self.name} at update {step}")


class StopRequests:
    """SIGINT/SIGTERM handlers for the span of a training loop (main thread only): the first
    signal asks the loop to stop after its update; a second stops it at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, step):
        self.step, self.signum, self._old = step, None, {}      # step(): the update now running

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise Interrupted(signum, self.step())
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        return False
