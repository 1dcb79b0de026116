"""Quiet command lines: `python -m keras_hybrid.demo` and
`python -m keras_hybrid.experiments` print their output without
TensorFlow's C++ log lines (oneDNN, CUDA, XLA) in front of it.

`python -m keras_hybrid.demo` imports the package, and so TensorFlow,
before `demo.py` runs, so the quieting starts from `keras_hybrid/__init__.py`
but only when one of these commands is the process's `-m` module: a
program that imports `keras_hybrid` keeps its environment and its stderr.

`TF_CPP_MIN_LOG_LEVEL` alone is not enough: TensorFlow 2.19-2.21 print
some lines before their logging reads it (measured with 2.21: the oneDNN
and "Could not find cuda drivers" lines appear with the level at 3). So the
commands also drop lines in TensorFlow's C++ log format from stderr; all
other stderr output (Python warnings, tracebacks) passes through. Setting
`TF_CPP_MIN_LOG_LEVEL` yourself turns both off.
"""

import atexit
import os
import re
import sys
import threading

COMMANDS = ("keras_hybrid.demo", "keras_hybrid.experiments")

# `I0000 00:00:1796.5  5280 port.cc:153] ...` (absl), `2025-09-17 14:44:05.1: I
# external/...cc:32] ...` (TSL), and two fixed start-up lines.
TF_LOG_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w./-]+:\d+\] "
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:[\d.]+: [IWEF] [\w./-]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* rebuild TensorFlow)"
)


def command_being_run():
    """The module given to `python -m`, while its package is imported
    (Python sets `sys.argv[0]` to `"-m"` until the module starts); else
    `None`."""
    if sys.argv[:1] != ["-m"]:
        return None
    argv = list(getattr(sys, "orig_argv", []))
    for i, arg in enumerate(argv):
        if arg == "-m":
            return argv[i + 1] if i + 1 < len(argv) else None
        if arg.startswith("-m"):
            return arg[2:]
    return None


def _filter_stderr():
    """Routes file descriptor 2 through a thread that drops TensorFlow's
    C++ log lines (they are written by C++, below `sys.stderr`)."""
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump():
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not TF_LOG_LINE.match(line):
                    os.write(original, line)

    thread = threading.Thread(target=pump, name="keras_hybrid-stderr", daemon=True)
    thread.start()

    def restore():
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's write end: the pump drains and stops
        thread.join(timeout=5)

    atexit.register(restore)


def quiet_command_line():
    """Quiets TensorFlow's C++ logging if this process is one of `COMMANDS`
    and the user has not set `TF_CPP_MIN_LOG_LEVEL`; otherwise does nothing."""
    if command_being_run() not in COMMANDS or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    _filter_stderr()
