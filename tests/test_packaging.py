"""Declared dependencies: one TensorFlow distribution, and floors that CI
installs (`.ci/lowest-constraints.txt`, run by `.ci/run`)."""

import configparser
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _requirements():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].strip().splitlines()
    return [line.strip() for line in lines if line.strip()]


def _name(requirement):
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")


def _floors():
    floors = {}
    for requirement in _requirements():
        match = re.search(r">=\s*([\d.]+)", requirement)
        if match:
            floors[_name(requirement)] = match.group(1)
    return floors


def _pins():
    pins = {}
    for line in (ROOT / ".ci" / "lowest-constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_one_tensorflow_distribution_is_declared():
    # tensorflow-probability[tf] pulls tf-keras, which requires `tensorflow`:
    # declaring tensorflow-cpu (or -intel, -macos...) too installs two
    # copies of the same files.
    names = [_name(r) for r in _requirements()]
    tensorflows = [n for n in names if n.startswith("tensorflow") and n != "tensorflow-probability"]
    assert tensorflows == ["tensorflow"]
    assert any(r.replace(" ", "").startswith("tensorflow-probability[tf]") for r in _requirements())


def test_every_floor_is_the_version_ci_pins():
    floors, pins = _floors(), _pins()
    assert set(floors) == {"tensorflow", "keras", "tensorflow-probability"}
    for name, floor in floors.items():
        pinned = tuple(int(p) for p in pins[name].split("."))
        declared = tuple(int(p) for p in floor.split("."))
        # The pin is the floor, or one of its patch releases.
        assert pinned[: len(declared)] == declared, (name, floor, pins[name])


def test_ci_runs_the_lowest_versions():
    script = (ROOT / ".ci" / "run").read_text()
    assert 'new_venv "$root/lowest" -c .ci/lowest-constraints.txt' in script
    assert 'new_venv "$root/current"' in script
    assert '"$1/bin/python" -m pip check' in script  # in new_venv: both venvs


def test_lowest_tensorflow_family_shares_one_minor_version():
    pins = _pins()
    assert pins["tf-keras"].split(".")[:2] == pins["tensorflow"].split(".")[:2]
