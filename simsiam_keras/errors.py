"""The library's own exceptions, which the command line turns into one line and an exit code.

`ConfigError` names settings by their field names (`batch_size must be a positive integer`); the
scripts print each name with the flag's dashes (`--batch_size ...`) and exit with 2.
`Interrupted` says that training stopped on a signal after writing a checkpoint; the scripts
exit with 128 + the signal's number.

This module imports neither TensorFlow nor Keras.
"""


class ConfigError(ValueError):
    """A bad setting. `message` holds `{}` where each setting of `settings` is named."""

    def __init__(self, message, *settings):
        self.message = message
        self.settings = settings
        super().__init__(self.render())

    def render(self, prefix=""):
        """The message with each setting written `prefix + name` (`"--"`: as a flag)."""
        parts = self.message.split("{}")
        names = [prefix + s for s in self.settings] + [""] * len(parts)
        return "".join(part + name for part, name in zip(parts, names[: len(parts) - 1] + [""]))


class Interrupted(Exception):  # noqa: N818 (what happened, not an error)
    """Training stopped on a signal after writing a checkpoint at `step`."""

    def __init__(self, step, signum):
        super().__init__(f"Interrupted at step {step}; run the same command to resume.")
        self.step = step
        self.signum = signum
