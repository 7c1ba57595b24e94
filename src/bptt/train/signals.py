"""SIGINT, SIGTERM and SIGHUP during a training loop: finish the update, save it, then stop.

The first signal only sets ``StopRequests.signum``; the loop looks at it after each update
(and its checkpoint), saves, and raises ``Interrupted`` carrying the checkpoint's path; a
signal after the last update (its evaluation, the plot) raises it with that update's. A
second signal raises ``Interrupted`` at once from the handler: what was being written is a
temporary file (removed) or a checkpoint half without its JSON (set aside by the next
resume), so every checkpoint written before stays whole.

SIGHUP is the terminal going away (a closed window, a dropped SSH connection). Writing to
that terminal would fail (EIO) before the update's checkpoint, so the handler first points
the standard streams that are terminals at /dev/null (``release_terminal``); streams sent
to a file or a pipe keep what follows, the line naming the checkpoint included.
"""
from __future__ import annotations

import os
import signal
import stat
import threading

HANGUP = getattr(signal, "SIGHUP", None)     # None where the OS has no such signal (Windows)


def release_terminal() -> None:
    """Point stdout and stderr at /dev/null where they are a terminal, leaving files and
    pipes as they are. A terminal is told by its kind of file, a character device: one that
    hung up answers isatty with False, and fails every write."""
    for fd in (1, 2):
        try:
            if not stat.S_ISCHR(os.fstat(fd).st_mode):
                continue
            null = os.open(os.devnull, os.O_WRONLY)
        except OSError:                      # fd closed, or no /dev/null: nothing to release
            continue
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP stopped the run. ``checkpoint``: the JSON written after the update
    in flight finished (None when a second signal stopped it at once); ``code``: the exit
    status the command gives (128 + the signal's number)."""

    def __init__(self, signum, step, checkpoint=None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.name = signal.Signals(signum).name
        self.code = 128 + signum
        super().__init__(f"{self.name} at update {step}")


class StopRequests:
    """SIGINT/SIGTERM/SIGHUP handlers for the span of a training loop (main thread only): the
    first signal asks the loop to stop after its update; a second stops it at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((HANGUP,) if HANGUP is not None else ())

    def __init__(self, step):
        self.step, self.signum, self._old = step, None, {}      # step(): the update now running

    def _handle(self, signum, frame):
        if signum == HANGUP:
            release_terminal()
        if self.signum is not None:
            raise Interrupted(signum, self.step())
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:      # nohup's SIGHUP stays ignored
                    self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        return False
