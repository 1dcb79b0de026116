"""Arrays given to `fit`, fed through one data iterator for the whole `fit`.

For NumPy arrays (and tensors), Keras 3 builds a `tf.data` pipeline once per
`fit` but starts a new iterator over it at every epoch; on the small data
sets of mechanistic models that iterator is most of an epoch's time
(`benchmarks/epoch_overhead.py`). The hybrid models' `fit` passes the very
same pipeline, repeated, with `steps_per_epoch` = its batches per epoch,
so that Keras keeps one iterator.

The batches are those Keras would have made, epoch after epoch:
- With a global TensorFlow seed set (`keras.utils.set_random_seed`,
  `tf.random.set_seed`), Keras's pipeline draws the *same* permutation at
  every new iterator: every epoch visits the samples in the order of the
  first. The repeated pipeline is cached after its first epoch, so it
  replays that order, and a seeded `fit` gives the same weights as
  `keras.Model.fit` would, to the bit (`tests/test_array_input.py`).
- Without a global seed, each epoch draws a new permutation in both.

Everything else (generators, datasets, `class_weight`, `steps_per_epoch`,
one epoch, arrays over `MAX_CACHED_BYTES`) goes to `keras.Model.fit` as it
is. The pipeline comes from Keras's own array adapter (a private module):
if that is not importable in some Keras version, the arrays go to
`keras.Model.fit` as they are.
"""

import keras
import numpy as np
import tensorflow as tf

try:
    from keras.src.trainers.data_adapters import array_data_adapter, array_slicing
except ImportError:  # pragma: no cover - a Keras without these modules
    array_data_adapter = array_slicing = None


# The cache holds one epoch of batches next to the arrays. Beyond this size
# an epoch takes far longer than starting its iterator, so the arrays go to
# Keras as they are.
MAX_CACHED_BYTES = 256 * 2**20


def _nbytes(arrays):
    total = 0
    for array in tf.nest.flatten(arrays):
        if array is None:
            continue
        shape, dtype = getattr(array, "shape", None), getattr(array, "dtype", None)
        if shape is None or dtype is None:
            array = np.asarray(array)
            shape, dtype = array.shape, array.dtype
        dtype = getattr(dtype, "as_numpy_dtype", dtype)  # TensorFlow dtypes
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return total


def _global_seed_is_set():
    """Whether TensorFlow's global seed is set, or `None` if unknown."""
    try:
        from tensorflow.python.eager import context
    except ImportError:  # pragma: no cover
        return None
    getter = getattr(context, "global_seed", None)
    return None if getter is None else getter() is not None


def one_iterator_fit_arguments(given, steps_per_execution=1):
    """The arguments of `fit` with arrays replaced by a repeated pipeline.

    Args:
        given: all of `keras.Model.fit`'s arguments by name, defaults
            included (a bound signature with `apply_defaults()`).
        steps_per_execution: the model's compiled `steps_per_execution`.
            On a repeated pipeline Keras runs whole executions, so an epoch
            whose batches it does not divide would take extra steps (from
            the next epoch's batches); such a `fit` gets the arrays.

    Returns:
        A new dict of keyword arguments for `fit`, or `None` where `fit`
        should get `given` as it is.
    """
    if array_data_adapter is None or given["x"] is None:
        return None
    seeded = _global_seed_is_set()
    if (
        given["steps_per_epoch"] is not None
        or given["class_weight"] is not None
        or not isinstance(given["shuffle"], bool)
        or seeded is None
        or _debug_step_cap()
        or not _several_epochs(given)
    ):
        return None
    x, y, sample_weight = given["x"], given["y"], given["sample_weight"]
    validation_data = given["validation_data"]
    if not array_data_adapter.can_convert_arrays((x, y, sample_weight)):
        return None
    if _nbytes((x, y, sample_weight)) > MAX_CACHED_BYTES:
        return None
    if given["validation_split"] and validation_data is None:
        # Keras's own split: the last fraction of the samples, unshuffled.
        (x, y, sample_weight), validation_data = array_slicing.train_validation_split(
            (x, y, sample_weight), validation_split=given["validation_split"]
        )
    adapter = array_data_adapter.ArrayDataAdapter(
        x, y, sample_weight=sample_weight, shuffle=given["shuffle"], batch_size=given["batch_size"]
    )
    # (A variable in Keras 3.4, an int later.)
    executions = 1 if steps_per_execution is None else max(int(np.asarray(steps_per_execution)), 1)
    if adapter.num_batches % executions:
        return None
    dataset = adapter.get_tf_dataset()
    if seeded or not given["shuffle"]:
        # Every epoch is the first one again (see the module docstring).
        dataset = dataset.cache()
    return dict(
        given,
        # Keras's pipeline prefetches, but the cache replays from behind it.
        x=dataset.repeat().prefetch(tf.data.AUTOTUNE),
        y=None,
        sample_weight=None,
        batch_size=None,
        shuffle=False,
        validation_split=0.0,
        validation_data=validation_data,
        # What Keras would have used for arrays: the training batch size.
        validation_batch_size=given["validation_batch_size"] or given["batch_size"],
        steps_per_epoch=adapter.num_batches,
    )


def _debug_step_cap():
    # `keras.config.set_max_steps_per_epoch` (Keras 3.6 and later) caps
    # epochs for debugging; Keras's own path applies it.
    return getattr(keras.config, "max_steps_per_epoch", lambda: None)()


def _several_epochs(given):
    try:
        return int(given["epochs"]) - int(given["initial_epoch"] or 0) > 1
    except (TypeError, ValueError):
        return False  # let `fit` raise its own error


def array_ranks(arguments, names=("x", "y", "sample_weight")):
    """The rank of every array among `fit`'s arguments `names` (`None` for
    what is not an array), or `None` if none is an array.

    `keras.Model.fit` retraces its step for arrays of another rank with the
    shapes relaxed to an unknown rank, on which Keras's own loss fails
    ("Cannot take the length of shape with unknown rank"). The hybrid
    models compare these ranks with the previous `fit`'s and build a new
    step when they differ.
    """
    def rank(value):
        if isinstance(value, (np.ndarray, tf.Tensor)) or type(value).__module__.startswith("pandas"):
            return np.ndim(value)
        return None

    ranks = tuple(rank(leaf) for name in names for leaf in tf.nest.flatten(arguments.get(name)))
    return ranks if any(r is not None for r in ranks) else None
