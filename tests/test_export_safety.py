"""`export_saved_model(overwrite=True)`: `path` holds the complete old or
the complete new export at every instant, and a failed step keeps the old.

Every file-system step of the replacement goes through
`export._rename`, `export._exchange` or `export._remove_tree`; the tests
wrap them to snapshot the directory between steps (what a kill at that
instant leaves) or to fail one of them.
"""

import errno
import json
import os
import shutil
import tempfile

import keras
import pytest

import keras_hybrid as kh
from keras_hybrid import export as export_module

STEPS = ("_rename", "_exchange", "_remove_tree")


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def scaled(x, constants):
    return constants["A"] * x


def _model(a):
    inputs = keras.Input((1,), name="x")
    outputs = kh.ScientificLayer(scaled, [kh.PhysicalConstant("A", a)], name="scaled")(inputs)
    return kh.HybridModel(inputs, outputs)


OLD, NEW = 2.0, 4.0


@pytest.fixture(scope="module")
def models():
    return _model(OLD), _model(NEW)


@pytest.fixture(scope="module")
def old_export(models, tmp_path_factory):
    return kh.export_saved_model(models[0], tmp_path_factory.mktemp("old") / "served")


def _exchange_supported():
    with tempfile.TemporaryDirectory() as d:
        a, b = os.path.join(d, "a"), os.path.join(d, "b")
        os.mkdir(a)
        os.mkdir(b)
        return export_module._exchange(a, b)


SCHEMES = [
    pytest.param(
        "exchange",
        marks=pytest.mark.skipif(
            not _exchange_supported(), reason="no renameat2(RENAME_EXCHANGE) here"
        ),
    ),
    "fallback",
]


def _use_scheme(scheme, monkeypatch):
    if scheme == "fallback":
        monkeypatch.setattr(export_module, "_exchange", lambda a, b: False)


def _contents(directory):
    """'old', 'new' or 'incomplete' for an export directory."""
    metadata = os.path.join(directory, export_module.METADATA_FILE)
    complete = all(
        os.path.isfile(os.path.join(directory, f))
        for f in ("saved_model.pb", os.path.join("variables", "variables.index"), metadata)
    )
    if not complete:
        return "incomplete"
    with open(metadata) as f:
        value = json.load(f)["constants"][0]["value"]
    return {OLD: "old", NEW: "new"}[value]


def _setup(old_export, tmp_path):
    parent = tmp_path / "work"
    parent.mkdir()
    shutil.copytree(old_export, parent / "served")
    return str(parent / "served")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_kill_between_any_two_steps_keeps_a_complete_export(
    scheme, models, old_export, tmp_path, monkeypatch
):
    path = _setup(old_export, tmp_path)
    snapshots = []

    def snapshot():
        target = tmp_path / f"kill_{len(snapshots)}"
        shutil.copytree(os.path.dirname(path), target)
        snapshots.append(str(target / "served"))

    def snapshotting(original):
        def step(*args):
            snapshot()
            result = original(*args)
            snapshot()
            return result

        return step

    for name in STEPS:
        monkeypatch.setattr(export_module, name, snapshotting(getattr(export_module, name)))
    _use_scheme(scheme, monkeypatch)
    kh.export_saved_model(models[1], path, overwrite=True)
    monkeypatch.undo()
    _use_scheme(scheme, monkeypatch)

    assert _contents(path) == "new"
    assert os.listdir(os.path.dirname(path)) == ["served"]
    assert len(snapshots) >= 4
    seen = []
    for killed in snapshots:
        if os.path.isdir(killed):
            seen.append(_contents(killed))
        else:
            # Only the fallback's two renames have this instant; the next
            # call on `path` puts the old export back.
            assert scheme == "fallback"
            assert _contents(export_module._backup_path(killed)) == "old"
            assert kh.load_metadata(killed)["constants"][0]["value"] == OLD
            seen.append("restored old")
    assert "incomplete" not in seen
    assert seen[0] == "old" and seen[-1] == "new"
    assert ("restored old" in seen) == (scheme == "fallback")


# The file-system calls of a successful replacement, in order.
CALLS = {
    "exchange": ["_exchange", "_remove_tree"],
    "fallback": ["_rename", "_rename", "_remove_tree", "_remove_tree"],
}


@pytest.mark.parametrize(
    "scheme, failing",
    [(s, i) for s in ("exchange", "fallback") for i in range(len(CALLS[s]))],
)
def test_a_failing_step_keeps_the_old_export(
    scheme, failing, models, old_export, tmp_path, monkeypatch
):
    if scheme == "exchange" and not _exchange_supported():
        pytest.skip("no renameat2(RENAME_EXCHANGE) here")
    path = _setup(old_export, tmp_path)
    calls = []

    def counting(name, original):
        def step(*args):
            calls.append(name)
            if len(calls) - 1 == failing:
                raise OSError(errno.EIO, f"simulated I/O error in {name}")
            return original(*args)

        return step

    for name in STEPS:
        monkeypatch.setattr(export_module, name, counting(name, getattr(export_module, name)))
    _use_scheme(scheme, monkeypatch)
    in_place = CALLS[scheme].index("_remove_tree")  # the new export is at `path` from here
    if failing < in_place:
        with pytest.raises(OSError, match="simulated I/O error"):
            kh.export_saved_model(models[1], path, overwrite=True)
        assert _contents(path) == "old"
        assert os.listdir(os.path.dirname(path)) == ["served"]
    else:
        with pytest.warns(UserWarning, match="Could not delete the temporary directory"):
            kh.export_saved_model(models[1], path, overwrite=True)
        assert _contents(path) == "new"
        leftovers = [n for n in os.listdir(os.path.dirname(path)) if n != "served"]
        assert len(leftovers) == 1 and leftovers[0].startswith(".served.")
    expected = CALLS[scheme][: failing + 1]
    if scheme == "fallback" and failing == 1:
        expected.append("_rename")  # the old export renamed back
    assert calls[: len(expected)] == expected


def test_a_failed_restore_is_repaired_by_the_next_call(models, old_export, tmp_path, monkeypatch):
    path = _setup(old_export, tmp_path)
    _use_scheme("fallback", monkeypatch)
    original = export_module._rename
    calls = []

    def rename(source, target):
        calls.append((source, target))
        if len(calls) >= 2:  # the new export's rename, and renaming the old one back
            raise OSError(errno.EIO, "simulated I/O error")
        original(source, target)

    monkeypatch.setattr(export_module, "_rename", rename)
    with pytest.raises(OSError):
        kh.export_saved_model(models[1], path, overwrite=True)
    monkeypatch.setattr(export_module, "_rename", original)
    assert not os.path.exists(path)
    assert _contents(export_module._backup_path(path)) == "old"
    with pytest.raises(FileExistsError, match="already exists"):
        kh.export_saved_model(models[1], path)  # puts the old export back first
    assert _contents(path) == "old"
    assert os.listdir(os.path.dirname(path)) == ["served"]


def test_a_stale_backup_next_to_a_newer_export_is_deleted(models, old_export, tmp_path):
    path = _setup(old_export, tmp_path)
    shutil.copytree(path, export_module._backup_path(path))  # killed before deleting it
    kh.export_saved_model(models[1], path, overwrite=True)
    assert _contents(path) == "new"
    assert os.listdir(os.path.dirname(path)) == ["served"]
