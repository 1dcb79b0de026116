"""Runs every tutorial end to end in fast mode (`KERAS_HYBRID_FAST=1`).

Each tutorial must exit with status 0, write its PNG plots, and print its
recovered constants as `name = value` with finite values.
"""

import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

TUTORIALS = pathlib.Path(__file__).resolve().parent.parent / "tutorials"

# script -> (expected PNG files, {constant name: minimum number of printed values})
EXPECTED = {
    "01_quickstart.py": (["01_quickstart.png"], {"R": 1}),
    "02_why_sam.py": (["02_why_sam.png"], {"w0": 2}),
    "03_pde_hybrid.py": (["03_pde_hybrid.png"], {"a": 2, "b": 2}),
    "04_real_data_theophylline.py": (
        ["04_theophylline_fits.png", "04_theophylline_physics.png"],
        {"ka": 4, "ke": 4, "Cl": 3, "V": 1},
    ),
    "05_serving.py": (["05_serving.png"], {"w0": 3}),
    "06_per_episode_constants.py": (["06_per_episode_constants.png"], {"w0": 3}),
    "07_trust_in_constants.py": (["07_trust_in_constants.png"], {"w0": 2, "k": 1}),
    "08_long_trajectories.py": (["08_long_trajectories.png"], {"w0": 4}),
}

_NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"


def printed_constants(text, name):
    """All values printed as `name = value` in `text`, as floats."""
    return [float(v) for v in re.findall(rf"(?<![\w/]){re.escape(name)} = ({_NUMBER})", text)]


def test_printed_constants_parser():
    text = "  ERM: w0 = 0.5304 rad/s, SAM: w0 = 1.0115 rad/s\n  ka = nan 1/h\n  max_w0 = 3"
    assert printed_constants(text, "w0") == [0.5304, 1.0115]
    assert math.isnan(printed_constants(text, "ka")[0])
    assert printed_constants(text, "Cl") == []


def test_every_tutorial_is_tested():
    scripts = sorted(p.name for p in TUTORIALS.glob("[0-9][0-9]_*.py"))
    assert scripts == sorted(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_tutorial_runs_in_fast_mode(script, tmp_path):
    pngs, constants = EXPECTED[script]
    env = dict(
        os.environ,
        KERAS_HYBRID_FAST="1",
        KERAS_HYBRID_OUTPUT_DIR=str(tmp_path),
        TF_CPP_MIN_LOG_LEVEL="2",
        MPLBACKEND="Agg",
    )
    result = subprocess.run(
        [sys.executable, str(TUTORIALS / script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"{script} exited with {result.returncode}:\n{output}"
    for png in pngs:
        path = tmp_path / png
        assert path.is_file(), f"{script} did not write {png}"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name, count in constants.items():
        values = printed_constants(result.stdout, name)
        assert len(values) >= count, f"{script} printed {values} for {name!r}:\n{result.stdout}"
        assert all(math.isfinite(v) for v in values), f"{script}: {name} = {values}"
