"""The data of the diagnostics as arrays with a first axis of samples.

`constant_uncertainty`, `profile_likelihood` and `radius_path` work on the
whole data set at once (a Jacobian over every residual, refits of the same
samples, a split by sample), so a finite `tf.data.Dataset` is read once,
batch after batch, into arrays: what `fit` received is what they take.
"""

import numpy as np
import tensorflow as tf


def as_sample_arrays(data, arg):
    """`data` (an array or a structure of them) as NumPy arrays; raises,
    naming `arg`, where one has no first axis of samples (a scalar, a
    generator)."""
    arrays = tf.nest.map_structure(np.asarray, data)
    for leaf in tf.nest.flatten(arrays):
        if leaf.ndim == 0:
            raise ValueError(
                f"`{arg}` must be arrays with a first axis of samples (or a finite "
                f"`tf.data.Dataset`). Received: {arg} of type {type(data).__name__}"
            )
    return arrays


def check_same_samples(data):
    """Raises, naming the arguments, unless every array in `data` (a dict
    `name -> array or structure of arrays`, `None` skipped) has as many
    samples as the others."""
    counts = {}
    for name, value in data.items():
        if value is None:
            continue
        for leaf in tf.nest.flatten(as_sample_arrays(value, name)):
            counts.setdefault(name, set()).add(len(leaf))
    sizes = set().union(*counts.values()) if counts else set()
    if len(sizes) > 1:
        found = ", ".join(
            f"{name}: {sorted(n)[0] if len(n) == 1 else sorted(n)}" for name, n in counts.items()
        )
        raise ValueError(
            f"{' and '.join(f'`{name}`' for name in counts)} must have the same number of "
            f"samples (first axis). Received: {found}"
        )


def _concatenate(batches, arg):
    leaves = [tf.nest.flatten(b) for b in batches]
    try:
        joined = [np.concatenate([np.asarray(parts[i]) for parts in leaves], 0)
                  for i in range(len(leaves[0]))]
    except ValueError as error:  # 0-d elements: an unbatched dataset of scalars
        raise ValueError(
            f"`{arg}` must yield batches (arrays with a first axis of samples), as `fit` "
            f"takes them: call `.batch(n)` on the dataset. ({error})"
        ) from None
    return tf.nest.pack_sequence_as(batches[0], joined)


def arrays_from_dataset(x, y, sample_weight, arg="x"):
    """`(x, y, sample_weight)`, read into arrays if `x` is a `tf.data.Dataset`.

    A dataset yields `(x, y)` or `(x, y, sample_weight)` batches, as for
    `fit`; it must be finite, and `y` and `sample_weight` must then be
    `None`. Anything else is returned as it is.

    Args:
        x: inputs, or a dataset.
        y: targets (`None` with a dataset).
        sample_weight: weights (`None` with a dataset).
        arg: the argument's name in error messages.

    Returns:
        `(x, y, sample_weight)` (the weights `None` if the dataset has none).
    """
    if not isinstance(x, tf.data.Dataset):
        if y is None:
            raise ValueError(
                f"`y` must be given: the targets, unless `{arg}` is a dataset of `(x, y)` "
                f"batches. Received: y=None with {arg} of type {type(x).__name__}"
            )
        return x, y, sample_weight
    for name, value in (("y", y), ("sample_weight", sample_weight)):
        if value is not None:
            raise ValueError(
                f"`{name}` must be None when `{arg}` is a dataset (the dataset yields "
                f"`(x, y)` or `(x, y, sample_weight)`). Received: {name} of type "
                f"{type(value).__name__}"
            )
    if int(x.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise ValueError(
            f"`{arg}` must be a finite dataset: it repeats forever (`.repeat()`), and these "
            "diagnostics read all of it. Pass it without `.repeat()`, or `.take(n)` of it. "
            f"Received: {arg} with infinite cardinality"
        )
    elements = list(x.as_numpy_iterator())
    if not elements:
        raise ValueError(f"`{arg}` must yield at least one batch. Received: an empty dataset")
    first = elements[0]
    if not isinstance(first, tuple) or len(first) not in (2, 3):
        raise ValueError(
            f"`{arg}` must yield `(x, y)` or `(x, y, sample_weight)` tuples, as for `fit`. "
            f"Received: elements of type {type(first).__name__}"
            + (f" with {len(first)} parts" if isinstance(first, tuple) else "")
        )
    parts = [_concatenate([e[i] for e in elements], arg) for i in range(len(first))]
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None
