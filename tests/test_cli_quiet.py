"""The command lines print no TensorFlow C++ log lines; the library leaves
`TF_CPP_MIN_LOG_LEVEL` and stderr alone."""

import os
import subprocess
import sys

import pytest

from keras_hybrid import _cli

SAMPLE_TF_LINES = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796003595.023386    5280 port.cc:153] oneDNN custom operations are on.\n",
    b"I0000 00:00:1796003595.024351    5280 cudart_stub.cc:31] Could not find cuda drivers\n",
    b"E0000 00:00:1796003597.427729    5280 cuda_platform.cc:52] failed call to cuInit\n",
    b"2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could\n",
    b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    b"with the appropriate compiler flags.\n",
]
OTHER_LINES = [
    b"  warnings.warn(message, stacklevel=2)\n",
    b"UserWarning: `y` contains 1 non-finite value(s)\n",
    b"Traceback (most recent call last):\n",
    b"ValueError: Output 0 of model 'm' has shape (None, 2)\n",
]


def _run(args):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, timeout=300, check=False
    )


def _tf_lines(stderr):
    return [line for line in stderr.splitlines(keepends=True) if _cli.TF_LOG_LINE.match(line)]


def test_the_log_line_pattern():
    assert all(_cli.TF_LOG_LINE.match(line) for line in SAMPLE_TF_LINES)
    assert not any(_cli.TF_LOG_LINE.match(line) for line in OTHER_LINES)


@pytest.mark.parametrize(
    "argv, orig_argv, expected",
    [
        (["-m"], ["python", "-m", "keras_hybrid.demo", "--epochs", "1"], "keras_hybrid.demo"),
        (["-m"], ["python", "-u", "-mkeras_hybrid.experiments"], "keras_hybrid.experiments"),
        (["-c"], ["python", "-c", "import keras_hybrid"], None),
        (["script.py"], ["python", "script.py", "-m", "keras_hybrid.demo"], None),
    ],
)
def test_command_being_run(argv, orig_argv, expected, monkeypatch):
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "orig_argv", orig_argv)
    assert _cli.command_being_run() == expected


def test_a_level_set_by_the_user_is_kept(monkeypatch):
    calls = []
    monkeypatch.setattr(_cli, "_filter_stderr", lambda: calls.append("filter"))
    monkeypatch.setattr(sys, "argv", ["-m"])
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "keras_hybrid.demo"])
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    _cli.quiet_command_line()
    assert calls == [] and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    _cli.quiet_command_line()
    assert calls == ["filter"] and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"


def test_importing_the_library_changes_neither_environment_nor_stderr():
    result = _run(["-c", "import os, keras_hybrid; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == b"None"


def test_commands_print_no_tensorflow_log_lines():
    # Both commands go through the same start-up path; one subprocess (a
    # TensorFlow import) checks it.
    assert set(_cli.COMMANDS) == {"keras_hybrid.demo", "keras_hybrid.experiments"}
    result = _run(["-m", "keras_hybrid.demo", "--help"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(b"usage:")
    assert _tf_lines(result.stderr) == []
    assert b"oneDNN" not in result.stderr and b"cuda" not in result.stderr.lower()
