"""Signals during training: SIGINT and SIGTERM ask the training loop to stop after its step.

`checkpoint.fit_from` runs `model.fit` inside `stop_on_signals`, so that Ctrl-C or a scheduler's
SIGTERM ends with a checkpoint at the current step (`errors.Interrupted`) instead of a kill.

This module imports neither TensorFlow nor Keras.
"""

import signal


class stop_on_signals:  # noqa: N801 (a context manager used like a function)
    """Within the block, SIGINT and SIGTERM call `request(signum)` instead of killing.

    The training loop finishes its step, writes a checkpoint and returns; a second signal
    stops at once (KeyboardInterrupt). The previous handlers come back at exit.
    """

    def __init__(self, request):
        self.request = request
        self.previous = {}

    def _handle(self, signum, frame):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        self.request(signum)

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt
