"""Export of hybrid models as TensorFlow SavedModels for serving.

The SavedModel holds traced graphs only: it is served by TensorFlow
Serving, `saved_model_cli` or `tf.saved_model.load`, without Keras or
`keras_hybrid` installed. It has three signatures:

```
serve           inputs (as the model's)  -> {"output_0": predictions}
constants       ()                       -> {name: float32 scalar}
constant_units  ()                       -> {name: string scalar}
```

(`serving_default` is an alias of `serve`.) `constants` reads the exported
variables, so it agrees with the served predictions, except for a constant
supplied per sample (`layer(x, constants={...})`, e.g. from an encoder):
its variable holds the placeholder value it was built with, which the
predictions do not use (the JSON file marks it not trainable). A JSON file
`assets.extra/keras_hybrid.json` repeats the constants with their units,
constraints and descriptions, plus the signature names, for tools that do
not run TensorFlow.
"""

import ctypes
import errno
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_hybrid.layers import _keyed_constant_variables

METADATA_FILE = os.path.join("assets.extra", "keras_hybrid.json")


def _signature_key(name, taken):
    """A signature output key for a constant name (`"layer/w0"` -> `"layer_w0"`)."""
    key = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not key or not (key[0].isalpha() or key[0] == "_"):
        key = "c_" + key
    base, i = key, 1
    while key in taken:
        i += 1
        key = f"{base}_{i}"
    taken.add(key)
    return key


def _functional_core(model):
    """The model whose `inputs` define the signature: `model` itself, or the
    functional model a `SAMModel` wraps."""
    inner = model
    while not getattr(inner, "inputs", None) and isinstance(getattr(inner, "model", None), keras.Model):
        inner = inner.model
    return inner


def _input_structure(model):
    """The functional model's input structure (a dict or nested list of
    its `Input`s), or `None` (a single input, a flat list, or no
    functional model to read it from)."""
    try:
        structure = _functional_core(model).input
    except (AttributeError, ValueError):
        return None
    return structure if _is_nested(structure) else None


def _is_nested(structure):
    """A dict, or a list holding a dict or list (not a flat list of specs)."""
    return isinstance(structure, dict) or (
        isinstance(structure, (list, tuple)) and any(isinstance(s, (list, tuple, dict)) for s in structure))


def _input_signature(model, input_signature):
    if input_signature is not None:
        specs = tf.nest.flatten(input_signature)
        if not specs or not all(isinstance(s, tf.TensorSpec) for s in specs):
            raise TypeError(
                "`input_signature` must be a `tf.TensorSpec` or a list of them. "
                f"Received: input_signature={input_signature!r}"
            )
        return specs
    own = getattr(model, "serving_input_signature", None)
    if callable(own):
        if own() is None:
            raise ValueError(
                f"The input shape of model {model.name!r} is not known yet, so neither is "
                "its serving signature: call the model once on a batch of inputs (or give "
                "its size, e.g. `state_size=`), or pass `input_signature=`."
            )
        return tf.nest.flatten(own())
    inputs = getattr(_functional_core(model), "inputs", None)
    if not inputs:
        raise ValueError(
            "Cannot infer the input signature of this model (it has no `inputs`: "
            "a subclassed model, or a wrapper around one). Pass `input_signature=`, "
            "e.g. `[tf.TensorSpec((None, 2), tf.float32, name='y0')]`. "
            f"Received: model={model.name!r}"
        )
    specs, names = [], set()
    for i, tensor in enumerate(inputs):
        name = getattr(tensor, "name", None) or f"input_{i}"
        name = _signature_key(name.split(":")[0], names)
        specs.append(tf.TensorSpec(tuple(tensor.shape), tf.as_dtype(tensor.dtype), name=name))
    return specs


def _traced_without_inputs(fn):
    # An input-free endpoint as a traced tf.function: Keras 3.4 rejects
    # `input_signature=[]` (an empty list reads as "no signature").
    fn = tf.function(fn, input_signature=[], autograph=False)
    fn.get_concrete_function()
    return fn


def _constant_records(model):
    records, taken = [], set()
    for key, variable, spec in _keyed_constant_variables(model):
        records.append(
            {
                "name": key,
                "signature_key": _signature_key(key, taken),
                "variable": variable,
                "spec": spec,
            }
        )
    return records


def _write_archive(archive, directory):
    if "verbose" in inspect.signature(archive.write_out).parameters:
        archive.write_out(directory, verbose=False)
    else:  # Keras 3.4 has no `verbose`
        archive.write_out(directory)


# -- Moving an export into place -------------------------------------------
#
# Every file-system step goes through `_rename`, `_exchange` or
# `_remove_tree`, so that tests can fail or snapshot each one.

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(a, b):
    """Swaps directories `a` and `b` in one atomic step (Linux
    `renameat2(RENAME_EXCHANGE)`). Returns `False` where the system or the
    file system cannot, raises `OSError` on any other failure."""
    function = _renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), b)


def _rename(source, target):
    os.rename(source, target)


def _remove_tree(directory):
    shutil.rmtree(directory)


def _backup_path(path):
    """Where the fallback scheme keeps the old export while it swaps."""
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.replaced")


def _recover(path):
    """Finishes a replacement that a killed process left half done.

    Only the fallback scheme (no atomic exchange) has such a state: the old
    export moved to `_backup_path(path)` and `path` missing. The old export
    is put back. A backup next to an existing `path` is an old export
    already replaced, and is deleted.
    """
    backup = _backup_path(path)
    if not os.path.lexists(backup):
        return
    if os.path.lexists(path):
        _remove_tree(backup)
    else:
        _rename(backup, path)


def _move_into_place(new, path):
    """Moves the complete export `new` to `path`, replacing what is there.

    Returns the directory now holding the old export (to delete), or
    `None`. On failure `path` holds the old export and the error is raised.
    """
    if not os.path.lexists(path):
        _rename(new, path)
        return None
    if _exchange(new, path):  # `new` now holds the old export
        return new
    # Fallback: two renames. A kill between them leaves `path` missing and
    # the old export at the backup, which `_recover` puts back.
    backup = _backup_path(path)
    _rename(path, backup)
    try:
        _rename(new, path)
    except BaseException:
        _rename(backup, path)
        raise
    return backup


def _is_export(directory):
    return os.path.isfile(os.path.join(directory, "saved_model.pb"))


def _check_target(path, overwrite):
    """`path` may be written: absent, or (with `overwrite`) a SavedModel
    directory or an empty one. Anything else is never deleted."""
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        raise FileExistsError(
            f"The export path exists and is not a directory: {path!r}. "
            "Remove it first, or choose another path."
        )
    if not overwrite:
        raise FileExistsError(
            f"The export path already exists: {path!r}. Pass `overwrite=True` to replace it."
        )
    here = os.path.abspath(os.getcwd())
    if here == path or here.startswith(path.rstrip(os.sep) + os.sep):
        raise ValueError(
            f"`path` is the working directory or one of its parents, which "
            f"`overwrite=True` would delete. Received: path={path!r}"
        )
    entries = sorted(os.listdir(path))
    if entries and not _is_export(path):
        raise FileExistsError(
            f"The export path {path!r} is a directory that holds no SavedModel "
            f"({len(entries)} entries: {', '.join(entries[:5])}"
            f"{', ...' if len(entries) > 5 else ''}); `overwrite=True` replaces only a "
            "SavedModel (or an empty directory), so nothing else is deleted. Choose a new "
            "path, e.g. a subdirectory."
        )


def _check_path(path, arg="path"):
    """`path` as an absolute path; refuses other types and the empty path
    (which would be the working directory)."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise TypeError(f"`{arg}` must be a string or path. Received: {arg}={path!r}")
    if not os.fspath(path):
        raise ValueError(
            f"`{arg}` must not be empty (it would be the working directory). "
            f"Received: {arg}={path!r}"
        )
    return os.path.abspath(os.fspath(path))


def _make_parents(parent, path):
    """Creates `parent` and returns the directories created (outermost
    first), to remove if the export fails."""
    missing = []
    ancestor = parent
    while not os.path.lexists(ancestor):
        missing.append(ancestor)
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise NotADirectoryError(
            f"Cannot create the export directory {path!r}: {ancestor!r} exists and is "
            f"not a directory. Received: path={path!r}"
        )
    os.makedirs(parent, exist_ok=True)
    return missing[::-1]


def _remove_created(created):
    """Removes the directories `_make_parents` created, innermost first,
    where still empty."""
    for directory in reversed(created):
        try:
            os.rmdir(directory)
        except OSError:
            return


_PATTERN_CHARACTERS = "*?["


def _check_no_bdf(model):
    """Raises for `ODELayer`s with `method="bdf"`: TFP's BDF solver cannot
    be traced for a batch of unknown size, which a SavedModel's
    signatures need."""
    from keras_hybrid.layers import ODELayer

    stiff = [layer.name for layer in model._flatten_layers(include_self=False)
             if isinstance(layer, ODELayer) and layer.method == "bdf"]
    if stiff:
        raise ValueError(
            f"`model` has ODE layers solved with method='bdf' ({stiff}), which cannot be "
            "exported: TFP's BDF solver cannot be traced for a batch of unknown size. Export "
            "a copy solved with another method, e.g. `kh.with_times(model, layer.times, "
            "method='dopri5')` (checking that its trajectories match)."
        )


def export_saved_model(model, path, overwrite=False, *, input_signature=None):
    """Writes `model` as a TensorFlow SavedModel for serving.

    The directory holds a `serve` signature (predictions, with
    `training=False`), a `constants` signature returning the physical
    constants by name (physical values, float32 scalars), a
    `constant_units` signature returning their units (string scalars),
    and `assets.extra/keras_hybrid.json` with names, values, units,
    constraints and descriptions. It loads with `tf.saved_model.load` in a
    process where neither Keras nor `keras_hybrid` is importable.

    The model is written to a temporary directory next to `path` and moved
    into place only once complete, so `path` never holds a half-written
    export, and a failed export leaves nothing behind (not even the
    parent directories it created). An existing `path` is replaced only
    with `overwrite=True`, and only if it holds a SavedModel or is empty
    (a directory of other files is refused, never deleted):

    - On Linux (`renameat2(RENAME_EXCHANGE)`, glibc >= 2.28, on ext4, xfs,
      btrfs, tmpfs, ...) the old and the new directory are swapped in one
      atomic step: at every instant, even if the process is killed, `path`
      holds the complete old or the complete new export. A kill may leave
      a hidden `.NAME.partial-*` directory next to `path` (safe to delete).
    - Elsewhere, the old export is renamed to `.NAME.replaced`, the new one
      renamed to `path`, then the old one deleted. If the second rename
      fails, the old export is renamed back and the error raised. A kill
      between the two renames leaves `path` missing and the old export at
      `.NAME.replaced`; the next `export_saved_model` or `load_metadata`
      on `path` puts it back first.

    In both cases a failed step leaves the old export at `path`. One
    process at a time should export to a given `path`.

    Args:
        model: a built Keras model (e.g. `HybridModel`, or `SAMModel`
            around a functional model).
        path: target directory.
        overwrite: bool, replace an existing SavedModel (or empty
            directory) at `path`. Defaults to `False`.
        input_signature: `tf.TensorSpec`s for the `serve` signature: a
            list of them (the model's inputs), or a dict or nested
            structure of them for a model called on one (e.g. a
            `MultipleShooting` with per-call constants), as a dict or as
            Keras's `[dict]`. Needed only when the model has no `inputs`
            (a subclassed model) or for a fixed batch size. Defaults to
            `None` (the model's inputs).

    Returns:
        The absolute path of the SavedModel directory.

    Example:

    ```python
    path = export_saved_model(model, "served/pendulum")
    # elsewhere, without keras_hybrid:
    served = tf.saved_model.load("served/pendulum")
    served.signatures["serve"](y0=tf.constant([[0.5, 0.0]]))["output_0"]
    served.signatures["constants"]()       # {"w0": <tf.Tensor 0.998>}
    served.signatures["constant_units"]()  # {"w0": <tf.Tensor b"rad/s">}
    ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a Keras model. Received: model={model!r}")
    path = _check_path(path)
    if any(c in path for c in _PATTERN_CHARACTERS):
        # TensorFlow finds the variables of a SavedModel by file pattern.
        raise ValueError(
            "`path` must not contain the characters '*', '?' or '[': TensorFlow reads a "
            "SavedModel's variables by file pattern, so it could not load this export back. "
            f"Received: path={path!r}"
        )
    if not isinstance(overwrite, (bool, np.bool_)):
        raise TypeError(f"`overwrite` must be a bool. Received: overwrite={overwrite!r}")
    if not model.built:
        raise ValueError(
            f"`model` must be built before export (call it on data, or `model.build`). "
            f"Received: model={model.name!r}, which is not built"
        )
    _check_no_bdf(model)
    _recover(path)
    _check_target(path, overwrite)
    specs = _input_signature(model, input_signature)
    records = _constant_records(model)

    archive = keras.export.ExportArchive()
    archive.track(model)

    # The signature's inputs are the model's flat `inputs`, in Keras's
    # flattening order; a model built on a dict (or nested) structure of
    # inputs is called with that structure again, and so is one given a
    # nested `input_signature` (a dict, or Keras's list of the call's one
    # argument, `[{...}]`).
    if input_signature is None:
        structure = _input_structure(model)
    else:
        structure = input_signature if _is_nested(input_signature) else None

    def serve(*inputs):
        if structure is not None:
            packed = tf.nest.pack_sequence_as(structure, list(inputs))
            if isinstance(packed, (list, tuple)) and len(packed) == 1:
                packed = packed[0]
            return model(packed, training=False)
        return model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)

    def constants():
        return {
            r["signature_key"]: tf.cast(r["spec"].to_physical(r["variable"].value), tf.float32)
            for r in records
        }

    def units():
        return {r["signature_key"]: tf.constant(r["spec"].unit, tf.string) for r in records}

    archive.add_endpoint("serve", serve, input_signature=specs)
    archive.add_endpoint("constants", _traced_without_inputs(constants))
    archive.add_endpoint("constant_units", _traced_without_inputs(units))

    metadata = {
        "format": "keras_hybrid SavedModel",
        "model": model.name,
        "signatures": {
            "serve": [s.name for s in specs],
            "constants": "physical values, float32 scalars, by signature_key",
            "constant_units": "unit strings, by signature_key",
        },
        "constants": [
            {
                "name": r["name"],
                "signature_key": r["signature_key"],
                "value": float(np.asarray(r["spec"].to_physical(r["variable"].value))),
                "unit": r["spec"].unit,
                "constraint": r["spec"].get_config()["constraint"],
                "trainable": r["spec"].trainable,
                "description": r["spec"].description,
            }
            for r in records
        ],
    }

    parent = os.path.dirname(path)
    created = _make_parents(parent, path)
    try:
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.partial-", dir=parent)
    except BaseException:
        _remove_created(created)
        raise
    replaced = None
    target = os.path.join(staging, "saved_model")
    try:
        _write_archive(archive, target)
        os.makedirs(os.path.join(target, "assets.extra"), exist_ok=True)
        with open(os.path.join(target, METADATA_FILE), "w") as f:
            json.dump(metadata, f, indent=2)
        _recover(path)
        _check_target(path, overwrite)  # the target may have appeared meanwhile
        replaced = _move_into_place(target, path)
    finally:
        # The new export is in place (or the old one kept): what is left is
        # garbage, and failing to delete it must not fail the export.
        for leftover in (staging,) if replaced in (None, target) else (replaced, staging):
            if os.path.lexists(leftover):
                try:
                    _remove_tree(leftover)
                except OSError as error:
                    warnings.warn(
                        f"Could not delete the temporary directory {leftover!r} "
                        f"after exporting to {path!r}: {error}. Delete it by hand.",
                        stacklevel=2,
                    )
        if replaced is None and not os.path.lexists(path):
            _remove_created(created)  # the export failed: no new empty directories either
    return path


def load_metadata(path):
    """Reads the constants metadata (`assets.extra/keras_hybrid.json`) of
    a SavedModel written by `export_saved_model`.

    Args:
        path: the SavedModel directory.

    If an `export_saved_model(overwrite=True)` was killed half-way and left
    the old export aside (see there), it is put back at `path` first.

    Returns:
        The metadata dict (keys `"constants"`, `"signatures"`, ...).
    """
    _recover(_check_path(path))
    file = os.path.join(os.fspath(path), METADATA_FILE)
    if not os.path.exists(file):
        raise FileNotFoundError(
            f"No keras_hybrid metadata in {os.fspath(path)!r}: expected {METADATA_FILE!r}. "
            "Was it written by `export_saved_model`?"
        )
    with open(file) as f:
        return json.load(f)


__all__ = ["export_saved_model", "load_metadata"]
