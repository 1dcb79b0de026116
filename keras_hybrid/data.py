"""Feeding small data sets to `fit` without a new data iterator per epoch.

Keras 3 turns NumPy arrays passed to `fit` into a `tf.data` pipeline and
builds a new iterator over it at every epoch. On the small data sets of
mechanistic models, where an epoch is one or a few short steps, building
that iterator is most of the epoch's time (`benchmarks/epoch_overhead.py`).
A dataset that repeats, passed with `steps_per_epoch`, keeps one iterator
for the whole `fit`. (The hybrid models' `fit` does this for arrays by
itself, keeping Keras's batches: `keras_hybrid/_array_input.py`.)
"""

import math
import numbers
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_hybrid.non_finite import non_finite_report


def _as_array(name, value):
    array = np.asarray(value)
    if array.ndim == 0:
        raise ValueError(
            f"`{name}` must have a first (sample) dimension. Received: {name} with shape ()."
        )
    if np.issubdtype(array.dtype, np.floating):
        # What Keras's own array input does: floats in the default float type.
        array = array.astype(keras.config.floatx())
    return array


def _as_arrays(name, value):
    """Arrays in place of the leaves; lists of arrays become tuples, since
    `tf.data` would stack a list into one tensor. A list of plain numbers
    is one array (one value per sample)."""
    if isinstance(value, dict):
        return {key: _as_arrays(name, v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, numbers.Number) for v in value):
            return _as_array(name, value)
        return tuple(_as_arrays(name, v) for v in value)
    return _as_array(name, value)


def _check_seed(seed):
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not -2**63 <= seed < 2**63:
        raise ValueError(f"`seed` must be None or a 64-bit integer. Received: seed={seed!r}")


def repeated_dataset(x, y=None, *, batch_size=32, shuffle=True, sample_weight=None, seed=None):
    """A dataset that repeats over epochs, and the steps that make one epoch.

    Pass both to `fit` in place of the arrays:
    `model.fit(dataset, steps_per_epoch=steps, epochs=...)`. Every epoch
    visits each sample once, in batches of `batch_size` (the last one
    smaller when `batch_size` does not divide the number of samples), as
    `fit(x, y, batch_size=...)` does; with `shuffle=True` the order is
    drawn anew each epoch, also under a global seed, where Keras's own
    array input repeats the first epoch's order at every epoch (the
    mini-batches then never change). The dataset is iterated by one
    iterator for the whole `fit`, which on small data sets saves most of
    each epoch's time; the hybrid models' `fit` does that for arrays by
    itself, so this is for a new order every epoch, and for other Keras
    models.

    Args:
        x: the inputs: an array, or a list, tuple or dict of arrays, with
            the samples along the first axis.
        y: the targets, same structure rules as `x`. Defaults to `None`.
        batch_size: samples per step, a positive integer. Defaults to `32`.
        shuffle: reshuffle the samples every epoch. Defaults to `True`.
        sample_weight: per-sample weights, an array (or list) of one
            weight per sample. Defaults to `None`.
        seed: seed of the shuffling, an integer (`None`: TensorFlow's
            global seed, as set by `keras.utils.set_random_seed`).
            Defaults to `None`.

    Returns:
        `(dataset, steps_per_epoch)`.

    Warns, naming the argument and the first bad entry, when the arrays
    hold NaN or Inf, as the hybrid models' `fit` does for arrays.

    Example:

    ```python
    dataset, steps = kh.repeated_dataset(t, y, batch_size=12)
    model.fit(dataset, steps_per_epoch=steps, epochs=2000, shuffle=False, verbose=0)
    ```

    (`shuffle=False` in `fit` only silences Keras's warning that `fit`
    does not shuffle a dataset; this one shuffles itself.)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    if not isinstance(shuffle, bool):
        raise ValueError(f"`shuffle` must be True or False. Received: shuffle={shuffle!r}")
    if x is None:
        raise ValueError("`x` must be given: the inputs, with the samples along the first axis. Received: x=None.")
    _check_seed(seed)
    if sample_weight is not None and y is None:
        raise ValueError("`sample_weight` needs targets `y`. Received: y=None.")
    parts = {"x": x}
    if y is not None:
        parts["y"] = y
    if sample_weight is not None:
        parts["sample_weight"] = sample_weight
    arrays = {name: _as_arrays(name, value) for name, value in parts.items()}
    lengths = {name: {int(a.shape[0]) for a in tf.nest.flatten(value)} for name, value in arrays.items()}
    samples = set().union(*lengths.values())
    if len(samples) != 1:
        received = ", ".join(f"{name}: {sorted(n)}" for name, n in lengths.items())
        raise ValueError(
            "`x`, `y` and `sample_weight` must have the same number of samples (first "
            f"dimension). Received: {received}."
        )
    (n,) = samples
    if n == 0:
        raise ValueError("`x` must hold at least one sample. Received: 0 samples.")
    for name, value in arrays.items():
        # What the hybrid models' `fit` does for arrays, which it cannot do
        # for a dataset.
        report = non_finite_report(name, value)
        if report is not None:
            warnings.warn(
                f"{report} `kh.HybridModel` and `kh.SAMModel` skip the steps on batches with "
                "these samples; another Keras model takes them, and its weights turn NaN.",
                stacklevel=2,
            )
    # Always a tuple, `(x,)`, `(x, y)` or `(x, y, sample_weight)`, which
    # `fit` unpacks as such whatever the structure of `x`.
    elements = tuple(arrays[name] for name in ("x", "y", "sample_weight") if name in arrays)
    dataset = tf.data.Dataset.from_tensor_slices(elements)
    if shuffle:
        dataset = dataset.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).repeat().prefetch(tf.data.AUTOTUNE)
    return dataset, math.ceil(n / batch_size)
