"""What every script shares: quiet logs, one-line errors with exit codes, interrupts.

A script starts with::

    from simsiam_keras import cli

    cli.quiet_logs()  # before anything imports TensorFlow

and ends with `cli.run(main)` instead of `absl.app.run(main)`. Then:

* TensorFlow's C++ log lines (oneDNN, CUDA probing, CPU features; its C++ errors reach
  Python as exceptions) and other libraries' informational and warning logs are silenced; this
  package's own warnings (skipped image files, say), Python warnings (a collapse) and every
  library's Python-side errors still show. Any `--verbosity` flag (absl's) shows everything.
* A flag typo or a bad value prints one line, `script.py: reason`, and exits with 2; a failure
  while working (a `ValueError`, `OSError` or `FloatingPointError`) prints one line and exits
  with 1; Ctrl-C or SIGTERM exits with 130 or 143, with one line and no traceback.

This module imports neither TensorFlow nor Keras.
"""

import os
import re
import signal
import sys
import warnings

from simsiam_keras.errors import ConfigError, Interrupted

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class UsageError(Exception):
    """A bad flag or path, found before any work: one line and exit code 2."""


def verbose(argv=None):
    """Whether the command line asks for every log (absl's `--verbosity` / `-v` flag)."""
    argv = sys.argv if argv is None else argv
    return any(a.split("=")[0] in ("--verbosity", "-v") for a in argv[1:])


def quiet_logs(argv=None):
    """Silences what is not the user's business, unless `--verbosity` is given.

    Must run before TensorFlow is imported: its C++ logging reads `TF_CPP_MIN_LOG_LEVEL` once.
    A value the user set in the environment wins.
    """
    if verbose(argv):
        return
    # C++ logs after the import: not even the "failed call to cuInit" error of a machine
    # without a GPU. The lines printed during the import ignore it (`import_tensorflow`).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Keras's notice when a tf.data.Dataset is passed with the default shuffle=True.
    warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed")
    from absl import logging

    handler = logging.get_absl_handler()
    if not any(isinstance(f, _OwnWarningsAndAllErrors) for f in handler.filters):
        handler.addFilter(_OwnWarningsAndAllErrors())


class _OwnWarningsAndAllErrors:
    """An absl log filter: warnings from this package, errors from everyone."""

    def filter(self, record):
        import logging

        if record.levelno >= logging.ERROR:
            return True
        return record.levelno >= logging.WARNING and record.pathname.startswith(_PACKAGE_DIR)


# What TensorFlow's C++ code prints while it is imported, whatever TF_CPP_MIN_LOG_LEVEL says
# (absl logging before its initialisation): informational lines and absl's notice about them.
_IMPORT_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called|I\d{4} |"
    r"To enable the following instructions:)"
)


def import_tensorflow():
    """Imports TensorFlow, dropping the informational lines its C++ code prints meanwhile.

    They go to the process's stderr directly (file descriptor 2), so they are caught there,
    in a temporary file, and every other line is passed on. With `--verbosity`, a plain import.
    """
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        return  # a JAX or PyTorch machine without it: the scripts that need it will say so
    if verbose() or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401

        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [
                line
                for line in caught.read().decode(errors="replace").splitlines(keepends=True)
                if not _IMPORT_NOISE.match(line)
            ]
            sys.stderr.write("".join(kept))


def flagfile(argv=None):
    """The last `--flagfile` of the command line, or None."""
    argv = sys.argv if argv is None else argv
    found = None
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith("--flagfile="):
            found = arg.split("=", 1)[1]
        elif arg == "--flagfile" and i + 1 < len(argv):
            found = argv[i + 1]
    return found


def default_workdir(argv=None):
    """`runs/<stem of the last --flagfile>`, or `runs/default` without one."""
    name = flagfile(argv)
    if not name:
        return os.path.join("runs", "default")
    return os.path.join("runs", os.path.splitext(os.path.basename(name))[0])


def run(main, positional=0, tensorflow=True):
    """`absl.app.run(main)` with one-line errors and exit codes (see the module docstring).

    Args:
        main: the script's `main(argv)`.
        positional: how many non-flag arguments the script takes (a subcommand, say).
        tensorflow: import TensorFlow quietly before `main` (`import_tensorflow`).
    """
    from absl import app, flags

    name = os.path.basename(sys.argv[0])

    def fail(message, code):
        message = " ".join(str(message).split())
        if len(message) > 1000:  # a library's message that carries a whole config
            message = message[:1000] + " ... (--verbosity=0 for the traceback)"
        print(f"{name}: {message}", file=sys.stderr, flush=True)
        sys.exit(code)

    def parse(argv):
        flags.FLAGS.unparse_flags()  # a command run before in this process left its values
        try:
            remaining = flags.FLAGS(argv)
        except flags.Error as e:
            fail(f"{str(e).rstrip('. ')} (see --helpshort).", 2)
        if len(remaining) > 1 + positional:
            fail(f"unexpected arguments {remaining[1:]}; flags are written --name=value.", 2)
        return remaining

    def guarded(argv):
        try:
            if tensorflow:
                import_tensorflow()
            return main(argv)
        except (UsageError, app.UsageError) as e:
            fail(str(e), 2)
        except ConfigError as e:  # settings are flags of the same name
            fail(e.render("--"), 2)
        except Interrupted as e:
            print(str(e), file=sys.stderr, flush=True)
            sys.exit(128 + e.signum)
        except KeyboardInterrupt:
            fail("interrupted (no checkpoint written since the last one).", 128 + signal.SIGINT)
        except (ValueError, OSError, FloatingPointError) as e:
            if verbose():
                raise  # the traceback, for a bug report
            fail(str(e), 1)

    app.run(guarded, flags_parser=parse)
